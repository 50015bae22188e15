"""dtgcnn's train step and the peer DGCNN's, timed alternately: the peer in its own torch process, one step
per request, so dtgcnn's process never imports torch and both steps still run under the same load."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from common.benchmarking import Comparison, time_interleaved

PEER = "WangYueFt/dgcnn pytorch/model.py DGCNN"


class PeerProcess:
    """`python -m dtgcnn.peers.dgcnn_torch` as a child that runs one training step per `step()` call."""

    def __init__(self, *, batch_size: int, num_points: int, k: int, classes: int, threads: int = 0):
        args = [
            f"--batch-size={batch_size}",
            f"--num-points={num_points}",
            f"--k={k}",
            f"--classes={classes}",
        ]
        # a passive OpenMP wait: torch's idle threads must not spin on the cores while dtgcnn's step runs
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dtgcnn.peers.dgcnn_torch", *args, f"--threads={threads}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._expect("ready")

    def _ask(self, command: str) -> float:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return float(self._expect(None))

    def _expect(self, word: str | None) -> str:
        line = self.proc.stdout.readline().strip()
        if not line or (word is not None and line != word):
            self.close()
            raise RuntimeError(f"the peer process failed ({line!r}):\n{self.proc.stderr.read()[-3000:]}")
        return line

    def step(self) -> None:
        self._ask("step")

    def flops_per_sample(self) -> float:
        return self._ask("flops")

    def memory_mb(self) -> float:
        return self._ask("memory")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compare_with_peer(
    our_step: Callable[[], None],
    our_flops_per_sample: float,
    *,
    batch_size: int,
    num_points: int,
    k: int,
    classes: int,
    peak_gflops: float,
    min_steps: int,
    min_seconds: float,
) -> dict:
    """Both train steps interleaved at the same sizes; samples/s, ratio, FLOPs and share of peak of each."""
    with PeerProcess(batch_size=batch_size, num_points=num_points, k=k, classes=classes) as peer:
        comparison: Comparison = time_interleaved(
            our_step, peer.step, warmup=1, min_steps=min_steps, min_seconds=min_seconds
        )
        peer_flops, peer_memory = peer.flops_per_sample(), peer.memory_mb()
    out = {"speedup": comparison.speedup, "pair_ratio_spread": comparison.pair_ratios.spread}
    for name, timing, flops in (
        ("dtgcnn", comparison.a, our_flops_per_sample),
        ("peer", comparison.b, peer_flops),
    ):
        samples_per_s = timing.per_s(batch_size)
        out[name] = {
            "samples_per_s": samples_per_s,
            "step_s_min": timing.min,
            "step_s_median": timing.median,
            "step_s_max": timing.max,
            "spread": timing.spread,
            "steps": len(timing.times),
            "gflop_per_sample": flops / 1e9,
            "share_of_peak": samples_per_s * flops / 1e9 / peak_gflops,
            "timing": timing.summary("s", 1.0),
        }
    out["peer"]["peak_rss_mb"] = peer_memory
    return out


def report(r: dict) -> list[str]:
    ours, peer = r["dtgcnn"], r["peer"]
    return [
        f"  side by side with the peer ({PEER}, torch, same sizes, steps interleaved):",
        f"    dtgcnn {ours['samples_per_s']:8.2f} samples/s, {ours['gflop_per_sample']:.2f} GFLOP/sample, "
        f"{100 * ours['share_of_peak']:.1f}% of the peak; {ours['timing']}",
        f"    peer   {peer['samples_per_s']:8.2f} samples/s, {peer['gflop_per_sample']:.2f} GFLOP/sample, "
        f"{100 * peer['share_of_peak']:.1f}% of the peak; {peer['timing']}",
        f"    ratio  {r['speedup']:8.2f}x (median over step pairs)",
    ]
