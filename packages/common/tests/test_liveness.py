"""Liveness beacons: a live process's beacon answers, a closed port (a process gone) is named as lost."""

from __future__ import annotations

import socket

from common.liveness import start_beacon, unreachable


def test_a_live_beacon_answers_and_a_gone_process_is_named():
    host, port = start_beacon(rank=0)
    assert start_beacon(rank=0)[1] == port  # one beacon per process
    with socket.socket() as s:  # a port that was free a moment ago: no process listens there now
        s.bind(("127.0.0.1", 0))
        gone = s.getsockname()[1]
    addresses = [(host, port), ("127.0.0.1", gone), ("127.0.0.1", port)]
    assert unreachable(addresses, me=2, timeout=2.0) == [1]
    assert unreachable(addresses[:1], me=0) == []  # itself is never asked
