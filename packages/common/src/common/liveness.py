"""Which processes of a multi-process run are still alive, asked over TCP after a collective has failed.

A collective whose peer died fails on the survivors (mlx's ring: "connection to a peer was lost") without
saying which process died, and the broken group can no longer be asked. So each process keeps a beacon: a
listening socket that accepts and closes connections from a daemon thread, for as long as the process lives.
The addresses are exchanged once, when the group forms. After a failure, a refused or unanswered connection
names a lost process: refused at once when the process died (its machine's kernel answers), after
`timeout` when the whole machine is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading

__all__ = ["start_beacon", "unreachable"]

_BEACON: socket.socket | None = None  # kept open for the life of the process


def start_beacon(rank: int) -> tuple[str, int]:
    """Open this process's beacon (once) and return the (host, port) the other processes reach it at."""
    global _BEACON
    if _BEACON is None:
        _BEACON = socket.create_server(("", 0), backlog=64)
        threading.Thread(target=_answer, args=(_BEACON,), name="trainyard-beacon", daemon=True).start()
    return _own_host(rank), _BEACON.getsockname()[1]


def unreachable(addresses: list[tuple[str, int]], me: int, timeout: float = 3.0) -> list[int]:
    """The ranks (other than `me`) whose beacon does not accept a connection within `timeout` seconds."""
    lost = []
    for rank, (host, port) in enumerate(addresses):
        if rank == me:
            continue
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError:
            lost.append(rank)
    return lost


def _answer(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.close()


def _own_host(rank: int) -> str:
    """The address the launcher gave this rank (mlx.launch's ring hostfile lists one "host:port" per rank);
    otherwise this machine's name."""
    hostfile = os.environ.get("MLX_HOSTFILE")
    if hostfile:
        try:
            with open(hostfile, encoding="utf-8") as f:
                entry = json.load(f)[rank]
            return (entry[0] if isinstance(entry, list) else entry).rsplit(":", 1)[0]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            pass
    return socket.gethostname()
