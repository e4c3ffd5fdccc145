"""Shared fixtures for the channel tests: every transport as a
(sender, receiver) pair, with the queues and socket files they make removed
even when a test fails."""
from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import pyipc
from pyipc._core import lib

# Transports whose pair is (sender, receiver) of one message channel.
STREAMS = ["pipe", "duplex", "stream"]
PACKETS = ["seqpacket", "dgram"]
ALL = STREAMS + PACKETS + ["mq", "listener"]


def mq_name() -> str:
    return f"pyipc-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def sock_path() -> str:
    # Short paths: sun_path holds 107 bytes, and pytest's tmp_path can be
    # longer than that.
    return os.path.join(tempfile.gettempdir(), f"pyipc-t-{uuid.uuid4().hex[:10]}.sock")


class Made:
    """Everything a test made, closed and removed at teardown."""

    def __init__(self) -> None:
        self.channels: List[Any] = []
        self.queues: List[str] = []
        self.paths: List[str] = []

    def cleanup(self) -> None:
        for ch in self.channels:
            ch.close()
        for q in self.queues:
            # /dev/mqueue may not be mounted: go through mq_unlink.
            lib.pyipc_mq_unlink(("/" + q).encode())
        for p in self.paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def make_pair(kind: str, made: Made, **mq_kw: Any) -> Tuple[Any, Any]:
    """Return (sender, receiver) for one transport."""
    if kind == "pipe":
        r, w = pyipc.pipe()
        pair = (w, r)
    elif kind == "duplex":
        a, b = pyipc.pipe(duplex=True)
        pair = (a, b)
    elif kind in ("stream", "seqpacket", "dgram"):
        a, b = pyipc.socketpair(kind)
        pair = (a, b)
    elif kind == "listener":
        path = sock_path()
        made.paths.append(path)
        with pyipc.UnixListener(path) as lst:
            c = pyipc.unix_connect(path, timeout=5)
            s = lst.accept(timeout=5)
        pair = (c, s)
    elif kind == "mq":
        name = mq_name()
        made.queues.append(name)
        q1 = pyipc.MessageQueue(name, create=True, **mq_kw)
        q2 = pyipc.MessageQueue(name)
        pair = (q1, q2)
    else:
        raise AssertionError(kind)
    made.channels.extend(pair)
    return pair


@pytest.fixture
def made() -> Iterator[Made]:
    m = Made()
    yield m
    m.cleanup()


def max_size(kind: str) -> int:
    """Largest message a transport takes in the tests."""
    if kind == "mq":
        return 8192
    if kind in PACKETS:
        return 100_000
    return 16 << 20


PairFactory = Callable[[str], Tuple[Any, Any]]
