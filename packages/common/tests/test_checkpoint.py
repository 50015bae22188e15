"""save_checkpoint / load_checkpoint: exact round trips, npz compatibility, refusal of damaged files, crash safety."""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.checkpoint import META_MEMBER, CheckpointManager, load_checkpoint, save_checkpoint
from common.errors import CheckpointError, TrainyardError


def assert_same_tree(a, b, where="<root>"):
    """Exact structural equality: same container types, key types, scalar types, array dtypes and bits."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), where
        for (ka, va), kb in zip(a.items(), b.keys(), strict=True):
            assert type(ka) is type(kb), f"{where}: key {ka!r}"
            assert_same_tree(va, b[kb], f"{where}.{ka}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}.{i}")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def complex_state():
    rng = np.random.default_rng(7)
    np.random.seed(11)
    return {
        "model": {
            "encoder.weight": rng.standard_normal((4, 3)).astype(np.float32),
            "bias": np.arange(3, dtype=np.int64),
            "empty": np.zeros((0, 5), np.float16),
        },
        # torch optimizer state: int keys; param_groups list of dicts holding tuples (betas).
        "optimizer": {
            "state": {0: {"step": np.array(3.0), "exp_avg": np.ones((2, 2))}, 1: {}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1]}],
        },
        "rng": {
            "numpy_generator": rng.bit_generator.state,  # 128-bit python ints
            "numpy_legacy": np.random.get_state(),  # tuple with a uint32 array and numpy scalars
            "python": random.Random(5).getstate(),
        },  # tuple of 625 ints, nested tuple
        "floats": [float("nan"), float("inf"), -float("inf"), -0.0, 1e-310, 0.1],
        "scalars": {
            "f32": np.float32(1.5),
            "i8": np.int8(-3),
            "flag": np.bool_(True),
            "c": np.complex64(1 + 2j),
        },
        "misc": {"none": None, "yes": True, "text": "unicode ✓", "big": -(2**200), "__dunder": 1},
        "mixed_keys": {1: "one", "1": "string one"},
        "nested": ((1, [2, (3,)]), []),
        "bf16_note": {"dtype": "bfloat16", "value": np.ones(2, np.float32)},
        "strided": np.arange(12.0).reshape(3, 4)[:, ::2],  # non-contiguous view
        "fortran": np.asfortranarray(np.arange(6).reshape(2, 3)),
    }


def test_round_trip_of_a_complex_tree_is_exact(tmp_path):
    state = complex_state()
    path = save_checkpoint(tmp_path / "run" / "state.pth", state)  # parent folder is created
    assert path == tmp_path / "run" / "state.pth"
    loaded = load_checkpoint(path)
    assert_same_tree(state, loaded)
    # The restored RNG states really drive the generators to the same numbers.
    g, g_ref = np.random.default_rng(), np.random.default_rng(7)
    g_ref.standard_normal((4, 3))  # complex_state() drew this much before capturing the state
    g.bit_generator.state = loaded["rng"]["numpy_generator"]
    assert g.random() == g_ref.random()
    legacy = np.random.RandomState()
    legacy.set_state(loaded["rng"]["numpy_legacy"])
    assert legacy.random_sample() == np.random.RandomState(11).random_sample()
    r = random.Random()
    r.setstate(loaded["rng"]["python"])
    assert r.random() == random.Random(5).random()


def test_restored_numpy_generator_continues_the_same_stream(tmp_path):
    g = np.random.default_rng(123)
    g.random(10)
    save_checkpoint(tmp_path / "g.npz", {"state": g.bit_generator.state})
    expected = g.random(5)
    restored = np.random.default_rng()
    restored.bit_generator.state = load_checkpoint(tmp_path / "g.npz")["state"]
    np.testing.assert_array_equal(restored.random(5), expected)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_torch_named_files_open_with_torch_load_weights_only(tmp_path, suffix):
    torch = pytest.importorskip("torch")
    state = {
        "model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "epoch": 3,
        "names": np.array(["a"]),
    }
    path = save_checkpoint(tmp_path / f"a{suffix}", state)
    payload = torch.load(path, weights_only=True)
    assert torch.equal(payload["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert payload["epoch"] == 3 and json.loads(payload["__trainyard__"])["flavour"] == "torch"
    assert_same_tree(load_checkpoint(path), state)  # strings (no torch dtype) come back exactly too


class _Trap:
    """A pickled object that would run code when unpickled."""

    def __reduce__(self):
        return (os.system, ("touch trap-ran",))


def test_a_torch_file_naming_code_is_refused_without_running_it(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from common.checkpoint import format as checkpoint_format

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with path.open("w+b") as fh:  # a correct trailer, so only the weights-only unpickler stands in the way
        torch.save({"__trainyard__": "{}", "model": _Trap()}, fh)
        fh.seek(-2, os.SEEK_END)
        fh.write(len(checkpoint_format._PLACEHOLDER).to_bytes(2, "little") + checkpoint_format._PLACEHOLDER)
        checkpoint_format._seal(fh)
    with pytest.raises(CheckpointError, match="weights-only loader refused it"):
        load_checkpoint(path)
    assert not (tmp_path / "trap-ran").exists()


def test_file_is_a_plain_npz_for_users(tmp_path):
    path = save_checkpoint(tmp_path / "a.npz", {"model": {"w": np.eye(2)}, "epoch": 3})
    with np.load(path, allow_pickle=False) as z:
        assert "model.w" in z.files and "__trainyard__" in z.files
        np.testing.assert_array_equal(z["model.w"], np.eye(2))
        assert z["__trainyard__"].dtype == np.uint8
    with zipfile.ZipFile(path) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        meta_npy = archive.read(META_MEMBER)
    meta = json.loads(np.load(io.BytesIO(meta_npy), allow_pickle=False).tobytes())
    assert meta["format"] == 1 and len(meta["sha256"]) == 64 and meta["skeleton"]["epoch"] == 3
    # Same permissions a plain open() would give (mkstemp alone would leave it owner-only).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"x": object()}, "object is not one of"),
        ({"x": np.array([None, 1], dtype=object)}, "Python objects"),
        ({(1, 2): 3}, "only str and int keys"),
        ({"x": {1.5: 2}}, "only str and int keys"),
    ],
)
def test_unsupported_values_are_refused_before_writing(tmp_path, bad, message):
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path / "bad.ckpt", bad)
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def _flip(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    return bytes(data)


def test_a_byte_flipped_anywhere_is_refused(tmp_path):
    original = save_checkpoint(tmp_path / "good.ckpt", {"w": np.arange(40, dtype=np.float32), "step": 5})
    data = original.read_bytes()
    victim = tmp_path / "victim.ckpt"
    # Every offset: headers, array bytes, the JSON meta, the central directory and the trailer itself.
    for offset in range(len(data)):
        victim.write_bytes(_flip(original, offset))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(victim)
        assert str(victim) in str(info.value), offset
    assert load_checkpoint(original)["step"] == 5


def test_truncated_files_are_refused(tmp_path):
    original = save_checkpoint(tmp_path / "good.ckpt", {"w": np.ones((64, 64))})
    data = original.read_bytes()
    victim = tmp_path / "cut.ckpt"
    for length in sorted({0, 1, 4, 30, 100, len(data) // 2, len(data) - 70, len(data) - 1}):
        victim.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="cut.ckpt"):
            load_checkpoint(victim)


def test_foreign_and_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a zip"):
        load_checkpoint(tmp_path / "text.ckpt")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(CheckpointError, match="not\\s+written by common.checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)
    assert issubclass(CheckpointError, TrainyardError)


def test_a_corrupted_last_points_at_the_other_checkpoints(tmp_path):
    save_checkpoint(tmp_path / "best.ckpt", {"epoch": 2})
    last = save_checkpoint(tmp_path / "last.ckpt", {"epoch": 3})
    last.write_bytes(_flip(last, 10))
    with pytest.raises(CheckpointError, match=r"last.ckpt is corrupted.*best.ckpt"):
        load_checkpoint(last)


# A child process that rewrites one checkpoint in a loop; each version's arrays are filled with its number so
# a torn mix of two versions would be detected by the content check as well as by the hash.
_WRITER = """
import sys, numpy as np
from common.checkpoint import save_checkpoint
path, version = sys.argv[1], int(sys.argv[2])
while True:
    version += 1
    save_checkpoint(path, {"version": version,
                           "a": np.full(1_500_000, version, np.float32), "b": np.full((300, 300), -version)})
    print(version, flush=True)
"""


def test_sigkill_at_random_moments_never_breaks_the_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    path = folder / "last.ckpt"
    manager = CheckpointManager(folder, last="last.ckpt", step_file="step-{step}.ckpt")
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    version = 0
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(version)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            # Wait until at least one new version exists, then kill at a random instant of the write loop
            # (one save takes tens of ms, so most kills land inside a write, leaving its temp file behind).
            assert child.stdout.readline(), child.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.3))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        state = load_checkpoint(path)
        assert state["version"] > version  # the previous or a newer complete version, never a torn one
        version = state["version"]
        assert np.all(state["a"] == version) and np.all(state["b"] == -version)
        # Leftover temp files (".last.ckpt.trainyard-*.tmp") are never taken for checkpoints.
        assert manager.latest() == path
    # A new run in the folder removes the leftovers of killed writers.
    CheckpointManager(folder, last="last.ckpt")
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]


def test_numpy_integer_and_bool_keys_load_as_python_ints(tmp_path):
    save_checkpoint(tmp_path / "k.ckpt", {"state": {np.int64(3): "a", True: "b"}})
    loaded = load_checkpoint(tmp_path / "k.ckpt")["state"]
    assert loaded == {3: "a", 1: "b"} and all(type(k) is int for k in loaded)
