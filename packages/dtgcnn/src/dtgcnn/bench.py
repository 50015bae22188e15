"""`python -m dtgcnn.bench`: training throughput of DT-GCNN against the machine's measured matmul peak.

Prints, in one run: the float32 matmul peak measured by NumPy, MLX's 1000x1000 matmul time (which BLAS it
runs on), the median train step (forward + backward + AdamW) -> samples/s, forward ms per batch, peak
memory, FLOPs per sample as run, achieved GFLOP/s and its share of the NumPy peak. With --peer (default) the
peer DGCNN (`dtgcnn.peers.dgcnn_torch`, torch, in its own process) trains at the same sizes, its steps
interleaved with dtgcnn's, for samples/s of both and their ratio. With --compare-reference (default) the same
step is timed again in a subprocess on MLX's bundled reference BLAS (DTGCNN_FAST_BLAS=0) for the speed-up.
Timing helpers (medians after warm-up, the NumPy peak) are `common.benchmarking`'s.

Yardstick sizes: k=20, 1024 points, fusion width 1024 (DGCNN's emb_dims), batch 16.

--nproc N measures scale-out instead: the same train step once in one process and once as N processes under
`mlx.launch -n N` (mx.distributed, the gradients averaged in the trainer's one all-reduce per step), both with
cores // N BLAS and kernel threads per process and the same batch per process; it reports global
samples/s for both and the scaling efficiency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

import dtgcnn  # noqa: F401  (fast BLAS before mlx)
from common.benchmarking import measure_scaling, median_seconds, numpy_matmul_peak_gflops, thread_env
from common.cli import console_script, run_cli


def mlx_matmul_seconds(n: int = 1000, repeats: int = 5) -> float:
    """Median seconds of one n x n float32 MLX matmul (which BLAS MLX's CPU backend runs on)."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    return median_seconds(lambda: mx.eval(a @ a), warmup=1, repeats=repeats)


def build_train_step(batch_size: int, num_points: int, k: int, jit: bool):
    """(step, model, spec, x): `step()` takes one optimizer step of one micro-batch, as training runs it."""
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    from dtgcnn.config import TrainConfig
    from dtgcnn.engine import Stepper
    from dtgcnn.model import DTGCNN, ModelSpec

    mx.set_default_device(mx.cpu)
    cfg = TrainConfig(k=k, fusion_dim=1024, jit_compile=jit, batch_size=batch_size)
    spec = ModelSpec.from_config(cfg, in_channels=6, num_classes=max(2, batch_size // 4))
    mx.random.seed(0)
    model = DTGCNN(spec)
    opt = optim.AdamW(learning_rate=1e-3, weight_decay=cfg.weight_decay)
    stepper = Stepper(model, opt, cfg, debug_dir=None)
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((batch_size, num_points, 3)).astype(np.float32)
    pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
    x = np.concatenate([pts, pts], axis=-1)  # points on a sphere, normals = positions
    y = np.repeat(np.arange(batch_size // 4), 4).astype(np.int32)[:batch_size]

    def step() -> None:
        stepper.micro_step(x, y)
        stepper.optimizer_step()

    return step, model, spec, x


def time_train_step(
    batch_size: int, num_points: int, k: int, steps: int, warmup: int, jit: bool, built=None
) -> dict:
    """Median seconds of a full training step and of a training-mode forward, plus peak MLX memory.

    `built` is `build_train_step`'s result when the caller keeps the step for more timing (the peer's)."""
    import mlx.core as mx

    from dtgcnn.model import flops_per_sample

    step, model, spec, x = built or build_train_step(batch_size, num_points, k, jit)
    compile_s = median_seconds(step, warmup=0, repeats=1)
    step_s = median_seconds(step, warmup=max(0, warmup - 1), repeats=steps)
    xa = mx.array(x)
    forward_s = median_seconds(lambda: mx.eval(model(xa)["embedding"]), warmup=1, repeats=max(1, steps // 2))
    flops = flops_per_sample(spec, num_points)
    from mlx.utils import tree_flatten

    return {
        "first_step_s": compile_s,
        "step_s": step_s,
        "forward_ms": 1e3 * forward_s,
        "peak_memory_mb": mx.get_peak_memory() / 2**20,
        "train_gflop_per_sample": flops["train"] / 1e9,
        "parameters": sum(v.size for _, v in tree_flatten(model.trainable_parameters())),
    }


def measure(batch_size, num_points, k, steps, warmup, jit, built=None, peak_n: int = 2048) -> dict:
    from dtgcnn import cpu_kernels

    out = {
        "blas": dtgcnn.BLAS.describe(),
        "cpu": f"{dtgcnn.MALLOC}; {cpu_kernels.describe()}",
        "numpy_peak_gflops": numpy_matmul_peak_gflops(n=peak_n),
        "mlx_matmul_1000_s": mlx_matmul_seconds(),
    }
    out |= time_train_step(batch_size, num_points, k, steps, warmup, jit, built)
    out["samples_per_s"] = batch_size / out["step_s"]
    out["achieved_gflops"] = out["samples_per_s"] * out["train_gflop_per_sample"]
    out["share_of_peak"] = out["achieved_gflops"] / out["numpy_peak_gflops"]
    return out


def jit_label(jit: bool) -> str:
    """What --jit did: the step with the CPU kernels runs uncompiled whatever was asked."""
    from dtgcnn import cpu_kernels

    if not jit:
        return "off"
    return "off (asked, but the CPU kernels run uncompiled)" if cpu_kernels.enabled() else "on"


def scaling_env(threads: int) -> dict[str, str]:
    """A process's share of the cores: its BLAS threads and the threads of EdgeConv's CPU kernels."""
    return {**thread_env(threads), "NUMBA_NUM_THREADS": str(threads)}


def measure_this_process(batch_size, num_points, k, steps, warmup, jit, json_output) -> None:
    """The train step as one process of an mlx.launch run (or alone); rank 0 writes the figures.

    Under mlx.launch the trainer's Stepper averages each step's gradients over the processes (one all_sum),
    so a step trains `batch_size` samples per process."""
    from common import mlx_support
    from common.distributed import get_world_size, is_main_process

    mlx_support.init_distributed()
    world = get_world_size()
    out = time_train_step(batch_size, num_points, k, steps, warmup, jit)
    out |= {"world_size": world, "batch_per_process": batch_size, "timed_steps": steps}
    out["samples_per_s"] = batch_size * world / out["step_s"]  # the processes step together
    if is_main_process() and json_output:
        with open(json_output, "w") as fh:
            json.dump(out, fh, indent=2)


def bench_scaling(nproc: int, measurement_args: list[str]) -> dict:
    """The train step alone and as `nproc` mlx.launch processes; global samples/s and scaling efficiency."""
    run = measure_scaling(
        "dtgcnn.bench",
        ["--launched-part", *measurement_args],
        nproc,
        launcher="mlx.launch",
        json_flag="--json-output",
        threads_flag=None,
        env_for_threads=scaling_env,
    )
    one, many = run.one, run.many
    row = run.compare(
        f"batch {one['batch_per_process']} per process", one["samples_per_s"], many["samples_per_s"]
    )
    row |= {"batch_per_process": one["batch_per_process"], "timed_steps": one["timed_steps"]}
    row[f"samples_per_step_{nproc}"] = many["batch_per_process"] * many["world_size"]
    click.echo(run.table([row], unit="samples/s"))
    return run.as_json([row])


@click.command(help=__doc__)
@click.option("--mode", type=click.Choice(["meshes", "triplets"]), default="meshes", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--num-points", default=1024, show_default=True)
@click.option("--k", default=20, show_default=True)
@click.option("--steps", default=5, show_default=True, help="Timed steps (median).")
@click.option("--warmup", default=2, show_default=True, help="Untimed steps first (compilation, allocator).")
@click.option(
    "--jit/--no-jit",
    default=True,
    show_default=True,
    help="mx.compile the step (where it can: not with the CPU kernels, see dtgcnn.cpu_kernels).",
)
@click.option(
    "--compare-reference/--no-compare-reference",
    default=True,
    show_default=True,
    help="Also time the step on MLX's reference BLAS in a subprocess.",
)
@click.option("--reference-steps", default=2, show_default=True)
@click.option(
    "--peer/--no-peer",
    default=True,
    show_default=True,
    help="Also train the peer DGCNN (torch, its own process) at the same sizes, steps interleaved.",
)
@click.option("--peer-steps", default=6, show_default=True, help="At least this many interleaved step pairs.")
@click.option("--peer-seconds", default=60.0, show_default=True, help="... and this many seconds of steps.")
@click.option(
    "--quick",
    is_flag=True,
    help="Check the machinery, not the speed: 1 warm-up and 2 timed steps, 2 peer step pairs, a 512x512 "
    "NumPy peak, no reference run.",
)
@click.option("--json-output", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
@click.option("--child", is_flag=True, hidden=True, help="Print one JSON line (used for the reference run).")
@click.option(
    "--nproc",
    default=0,
    show_default=True,
    help="Measure scale-out instead: the train step in 1 process and in N processes under mlx.launch "
    "(cores // N threads each), with the scaling efficiency. 0 = the single-process benchmark.",
)
@click.option("--launched-part", is_flag=True, hidden=True, help="One process of the --nproc measurement.")
@click.option(
    "--scaling",
    is_flag=True,
    help="Measure the scaling table instead: time per epoch and peak memory as the meshes per epoch, the "
    "batch and the model width double (3 points each, 2 with --quick), from a small base (batch 8, 256 "
    "points; --batch-size, --num-points and --k change it).",
)
def main(
    mode,
    batch_size,
    num_points,
    k,
    steps,
    warmup,
    jit,
    compare_reference,
    reference_steps,
    peer,
    peer_steps,
    peer_seconds,
    quick,
    json_output,
    child,
    nproc,
    launched_part,
    scaling,
):
    if scaling:
        _scaling_table(mode, quick, jit, json_output)
        return
    if quick:
        steps, warmup, peer_steps, peer_seconds, compare_reference = 2, 1, 2, 0.0, False
    step_args = [f"--batch-size={batch_size}", f"--num-points={num_points}", f"--k={k}"]
    step_args += [f"--steps={steps}", f"--warmup={warmup}", "--jit" if jit else "--no-jit"]
    if (nproc > 0 or launched_part) and mode != "meshes":
        raise click.UsageError("--nproc measures the mesh training step; leave out --mode triplets")
    if launched_part:
        measure_this_process(batch_size, num_points, k, steps, warmup, jit, json_output)
        return
    if nproc > 0:
        figures = bench_scaling(nproc, step_args)
        if json_output:
            with open(json_output, "w") as fh:
                json.dump({"scaling": figures}, fh, indent=2)
        return
    if mode == "triplets":
        from dtgcnn import text_bench

        peak, rows = text_bench.run(steps=steps, warmup=warmup)
        click.echo(text_bench.report(peak, rows))
        if json_output:
            with open(json_output, "w") as fh:
                json.dump({"numpy_peak_gflops": peak, "rows": rows}, fh, indent=2)
        return
    built = build_train_step(batch_size, num_points, k, jit) if peer and not child else None
    fast = measure(batch_size, num_points, k, steps, warmup, jit, built, peak_n=512 if quick else 2048)
    if child:
        click.echo(json.dumps(fast))
        return
    ref = None
    if compare_reference and dtgcnn.BLAS.fast:
        env = {**os.environ, "DTGCNN_FAST_BLAS": "0"}
        cmd = [
            sys.executable,
            "-m",
            "dtgcnn.bench",
            "--child",
            "--no-compare-reference",
            f"--batch-size={batch_size}",
            f"--num-points={num_points}",
            f"--k={k}",
            f"--steps={reference_steps}",
            "--warmup=1",
            "--jit" if jit else "--no-jit",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            ref = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            click.echo(f"reference-BLAS run failed:\n{proc.stderr[-2000:]}", err=True)
    f = fast
    lines = [
        f"dtgcnn bench: batch {batch_size}, {num_points} points, k={k}, widths 64-64-128-256, fusion 1024, "
        f"jit={jit_label(jit)}",
        f"  {f['blas']}",
        f"  {f['cpu']}",
        f"  NumPy float32 matmul peak        {f['numpy_peak_gflops']:8.1f} GFLOP/s (measured now)",
        f"  MLX 1000x1000 matmul             {f['mlx_matmul_1000_s'] * 1e3:8.1f} ms",
        f"  parameters                       {f['parameters']:8d}",
        f"  FLOPs/sample fwd+bwd (as run)    {f['train_gflop_per_sample']:8.2f} GFLOP",
        f"  first step (compile/load + run)  {f['first_step_s']:8.2f} s",
        f"  train step (median)              {f['step_s']:8.3f} s -> {f['samples_per_s']:.2f} samples/s",
        f"  forward (train mode, median)     {f['forward_ms']:8.1f} ms per batch",
        f"  achieved                         {f['achieved_gflops']:8.1f} GFLOP/s = "
        f"{100 * f['share_of_peak']:.1f}% of the NumPy peak",
        f"  peak MLX memory                  {f['peak_memory_mb']:8.0f} MiB",
    ]
    if ref is not None:
        f["reference"] = ref
        f["speedup_vs_reference_blas"] = f["samples_per_s"] / ref["samples_per_s"]
        lines += [
            f"  reference BLAS: 1000x1000 matmul {ref['mlx_matmul_1000_s'] * 1e3:.0f} ms, train step "
            f"{ref['step_s']:.2f} s -> {ref['samples_per_s']:.3f} samples/s",
            f"  speed-up over the reference BLAS {f['speedup_vs_reference_blas']:8.1f}x",
        ]
    if peer:
        from dtgcnn.peers import side_by_side

        f["peer"] = side_by_side.compare_with_peer(
            built[0],
            f["train_gflop_per_sample"] * 1e9,
            batch_size=batch_size,
            num_points=num_points,
            k=k,
            classes=max(2, batch_size // 4),
            peak_gflops=f["numpy_peak_gflops"],
            min_steps=peer_steps,
            min_seconds=peer_seconds,
        )
        lines += side_by_side.report(f["peer"])
    click.echo("\n".join(lines))
    if json_output:
        with open(json_output, "w") as fh:
            json.dump(f, fh, indent=2)


def _scaling_table(mode: str, quick: bool, jit: bool, json_output: str | None) -> None:
    """`--scaling`: the base is the table's own small one, with the step sizes the user typed."""
    from common.cli import typed_options
    from dtgcnn import bench_growth

    if mode != "meshes":
        raise click.UsageError("--scaling measures the mesh training step; leave out --mode triplets")
    typed = typed_options(click.get_current_context(), {k: k for k in ("batch_size", "num_points", "k")})
    base = {**bench_growth.BASE, **typed, "epochs": 1 if quick else bench_growth.BASE["epochs"], "jit": jit}
    if "batch_size" in typed:  # the same batches per epoch as the default base
        base["meshes"] = bench_growth.BASE["meshes"] // bench_growth.BASE["batch_size"] * typed["batch_size"]
    tables = bench_growth.growth(base, points=2 if quick else 3)
    click.echo(bench_growth.report(tables, base))
    if json_output:
        with open(json_output, "w") as fh:
            json.dump({"scaling_table": tables, "base": base}, fh, indent=2)


cli = console_script(main)  # the installed command

if __name__ == "__main__":
    run_cli(main)
