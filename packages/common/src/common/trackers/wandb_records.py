"""Reading a W&B offline run's `.wandb` log, to know when it is complete.

`run.finish()` returns once W&B's service process has the run's data; the service writes the file a moment
later. A run folder that `wandb sync` is pointed at before the exit record is written uploads as a crashed
run, so `WandbTracker.close` waits for that record. wandb ships no Python reader of its own log format any
more (its service is written in Go), so this decodes the framing here and the records with wandb's own
protobuf schema: a 7-byte ":W&B" header, then 32 KiB blocks of CRC-framed chunks (the LevelDB log format).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

_HEADER = 7
_BLOCK = 32768
_CHUNK_HEADER = 7  # crc32 (4 bytes), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """The records of a `.wandb` file (`wandb_internal_pb2.Record`), as far as it is written."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        return []
    raw, pending, pos = [], b"", _HEADER
    while pos + _CHUNK_HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER:  # a block tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        end = pos + _CHUNK_HEADER + length
        if end > len(data):
            break  # a chunk still being written
        chunk, pos = data[pos + _CHUNK_HEADER : end], end
        if kind == _FULL:
            raw.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            raw.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(r) for r in raw]


def is_complete(run_dir: str | Path) -> bool:
    """True when the run folder's `.wandb` log ends the run (holds its exit record)."""
    logs = list(Path(run_dir).glob("*.wandb"))
    return bool(logs) and any(r.WhichOneof("record_type") == "exit" for r in read_records(logs[0]))


def wait_until_complete(run_dir: str | Path, timeout_s: float = 30.0) -> bool:
    """Wait (polling) until `is_complete(run_dir)`; False when `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while not is_complete(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
