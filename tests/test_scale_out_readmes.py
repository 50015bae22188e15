"""Each package README's scale-out section: its one-machine multi-process command runs as written.

The command is read from the README's "Scale out" section (the first launcher line of a fenced bash block
for one machine: no --nnodes/--rdzv-endpoint/--hosts/--hostfile, no --resume), and only what a test must
change is changed: 2 processes on the 2-core test machine, a tiny synthetic data folder made by the package's
own generator, a temporary output folder, the CPU, a tiny model and one short epoch through the overrides the
package accepts. It runs under the real launcher (torchrun, mlx.launch); rank 0 alone must have written the
run folder: one folder, with a checkpoint, a metrics history and one log file.

`uv run` in front of a command is dropped: the test already runs inside the workspace's environment.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the launchers installed beside this interpreter
LAUNCHERS = ("torchrun", "mlx.launch")
MULTI_MACHINE = ("--nnodes", "--rdzv-endpoint", "--rdzv_endpoint", "--hosts", "--hostfile")
PROCESSES = 2

# per package: how its options name the data and output folders, and the tiny settings (its own overrides)
DTGCNN_TINY = [
    "num_vertices=48",
    "k=4",
    "edge_conv_dims=[8,8,16]",
    "fusion_dim=32",
    "hidden_dim=16",
    "embedding_dim=8",
    "batch_size=4",  # one P x K = 2 x 2 group per process: 24 train meshes make 3 global batches
    "samples_per_label=2",
    "num_epochs=1",
    "warmup_epochs=0",
    "plot_every=0",
    "checkpoint_every=1",
    "jit_compile=false",
]
EGNN_TINY = [
    "data.num_workers=0",
    "data.batch_size=2",
    "model.hidden_dim=16",
    "model.num_layers=2",
    "logging.tensorboard=false",
    "train.max_epochs=1",
    "train.num_threads=1",
]
SPECTRAL_TINY = [
    "model.name=test_tiny",
    "model.img_size=20",
    "model.patch_size=[5,5]",
    "model.in_chans=10",
    "model.embed_dim=32",
    "model.encoder_depth=2",
    "model.encoder_num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "general.num_workers=0",
    "hparams.epochs=1",
    "hparams.batch_size=1",
    "show_prediction.nb_to_plot=2",
    "show_prediction.dpi=40",
    "mlflow.enabled=false",
]


def scale_out_commands(readme: Path) -> list[list[str]]:
    """The launcher commands of the README's scale-out section's bash blocks, continuation lines joined."""
    text = readme.read_text(encoding="utf-8")
    heading = re.search(r"^## .*scale[- ]out.*$", text, flags=re.IGNORECASE | re.MULTILINE)
    assert heading, f"{readme} has no '## ... Scale out' section"
    section = re.split(r"^## ", text[heading.end() :], flags=re.MULTILINE)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["uv", "run"]:
                words = words[2:]
            if words and words[0] in LAUNCHERS:
                commands.append(words)
    return commands


def one_machine_command(package: str) -> list[str]:
    commands = scale_out_commands(ROOT / "packages" / package / "README.md")
    for words in commands:
        options = {w.split("=", 1)[0] for w in words}
        if not options & {*MULTI_MACHINE, "--resume"}:
            return words
    raise AssertionError(f"{package}'s README shows no one-machine launcher command among {commands}")


def substitute(words: list[str], values: dict[str, str], extra: list[str]) -> list[str]:
    """The command with the launcher from this environment, 2 processes, `values` for the options (and
    key=value overrides) they name, and `extra` appended. Every option in `values` must be in the command,
    or the test would silently run something else than the README shows."""
    out, seen, i = [], set(), 0
    while i < len(words):
        word = words[i]
        name, eq, _ = word.partition("=")
        if i == 0:
            out.append(str(BIN / word))
        elif word == "python":
            out.append(sys.executable)
        elif name in ("--nproc_per_node", "--nproc-per-node", "-n", "--repeat-hosts"):
            out.append(f"{name}={PROCESSES}" if eq else name)
            if not eq:
                out.append(str(PROCESSES))
                i += 1
        elif name in values:
            seen.add(name)
            if eq:
                out.append(f"{name}={values[name]}")
            else:  # `--option value`: the value that follows is replaced too
                out += [name, values[name]]
                i += 1
        else:
            out.append(word)
        i += 1
    missing = set(values) - seen
    assert not missing, f"the README command {shlex.join(words)} has no {sorted(missing)}"
    return out + extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # torchrun without --standalone rendezvous on its default port: PET_MASTER_PORT moves it to a free one,
    # so the test does not collide with another torchrun on the machine (the command line stays as written)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PET_MASTER_PORT": str(free_port())}
    env["MKL_NUM_THREADS"] = env["NUMBA_NUM_THREADS"] = "1"
    if command[0].endswith("mlx.launch"):  # the ring's first port (one per rank), free for this run
        command = [command[0], "--starting-port", str(free_port()), *command[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def assert_rank_zero_wrote_one_run_folder(parent: Path, run_dir: Path, proc: subprocess.CompletedProcess):
    output = f"exit {proc.returncode}\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0, output
    assert "exited with code" not in proc.stderr, output  # mlx.launch exits 0 even when a rank failed
    assert [p.name for p in parent.iterdir()] == [run_dir.name], output  # one run folder, nothing beside it
    files = [p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()]
    assert [f for f in files if f.suffix in (".ckpt", ".npz", ".safetensors") or "checkpoint" in str(f)], (
        files
    )
    histories = [f for f in files if "history" in f.name and f.suffix == ".json"]
    assert len(histories) == 1, files
    logs = [f for f in files if f.parts[0] == "logs" and f.suffix == ".log"]
    assert len(logs) == 1, files  # the other rank logs to its console only


@pytest.mark.slow
def test_dtgcnn_readme_two_process_command_runs(tmp_path):
    import dtgcnn  # noqa: F401  (fast BLAS before mlx)
    from dtgcnn.synthetic import SyntheticSpec, generate

    data = generate(tmp_path / "data", SyntheticSpec(num_subjects=4, per_subject=(6, 2, 2), num_vertices=48))
    run_dir = tmp_path / "runs" / "dp2"
    values = {"--data-dir": str(data), "--output-dir": str(run_dir)}
    command = substitute(one_machine_command("dtgcnn"), values, ["--device", "cpu", *DTGCNN_TINY])
    proc = launch(command, tmp_path)
    assert_rank_zero_wrote_one_run_folder(run_dir.parent, run_dir, proc)


@pytest.mark.slow
def test_egnn_com_readme_two_process_command_runs(tmp_path):
    from egnn_com.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", num_graphs=24, seed=3, min_nodes=6, max_nodes=12)
    run_dir = tmp_path / "runs" / "ddp"
    values = {"--data_dir": str(data), "--output_dir": str(run_dir)}
    command = substitute(one_machine_command("egnn_com"), values, ["--device", "cpu", *EGNN_TINY])
    proc = launch(command, tmp_path)
    assert_rank_zero_wrote_one_run_folder(run_dir.parent, run_dir, proc)


@pytest.mark.slow
def test_spectral_mae_readme_two_process_command_runs(tmp_path):
    from spectral_mae.synthetic import SyntheticSpec, write_dataset

    csv = write_dataset(
        tmp_path / "data", SyntheticSpec(num_images=8, size=20, bands=10, val_fraction=0.25, num_vessels=2)
    )
    run_dir = tmp_path / "runs" / "mae1"
    values = {"general.run_dir": str(run_dir)}
    extra = ["--device", "cpu", f"dataset.csv_file={csv}", *SPECTRAL_TINY]
    command = substitute(one_machine_command("spectral_mae"), values, extra)
    proc = launch(command, tmp_path)
    assert_rank_zero_wrote_one_run_folder(run_dir.parent, run_dir, proc)
