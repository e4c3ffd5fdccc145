"""Server-side functions for the RPC tests, importable by spawned children."""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pyipc.rpc as rpc


class Unpicklable(Exception):
    """An exception carrying a lock: it cannot be pickled."""

    def __init__(self) -> None:
        super().__init__("has a lock")
        self.lock = threading.Lock()


class NeedsTwo(Exception):
    """An exception whose __init__ cannot be called again with its args."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


class Service:
    """State kept by the test server, readable through calls."""

    def __init__(self) -> None:
        self.log: List[Any] = []
        self.events: Dict[str, Any] = {}
        self.produced = 0

    # -- plain ---------------------------------------------------------------
    def echo(self, x: Any) -> Any:
        return x

    def add(self, a: int, b: int = 0, *, c: int = 0) -> int:
        return a + b + c

    def kwargs(self, **kw: Any) -> Dict[str, Any]:
        return kw

    def pid(self) -> int:
        return os.getpid()

    def boom(self, kind: str) -> None:
        if kind == "key":
            raise KeyError("missing")
        if kind == "unpicklable":
            raise Unpicklable()
        if kind == "needs-two":
            raise NeedsTwo(1, 2)
        raise ValueError(kind)

    def lock(self) -> threading.Lock:
        return threading.Lock()  # a result that does not pickle

    def record(self, x: Any) -> None:
        self.log.append(x)

    def get_log(self) -> List[Any]:
        return self.log

    def event(self, key: str) -> Any:
        return self.events.get(key)

    def slow(self, seconds: float, tag: Optional[str] = None) -> str:
        time.sleep(seconds)
        if tag is not None:
            self.log.append(tag)
        return "slow done"

    def thread_id(self, x: Any) -> Any:
        return (x, threading.get_ident())

    def array(self, n: int) -> Any:
        import numpy

        return numpy.arange(n, dtype=numpy.uint8)

    def array_info(self, a: Any) -> Any:
        return (int(a.sum()), bool(a.flags.writeable), a.shape)

    def sha256(self, data: Any) -> str:
        return hashlib.sha256(memoryview(data).cast("B")).hexdigest()

    def blobs(self, n: int, size: int) -> Iterator[bytes]:
        """n items of size bytes, item i made of the 8-byte number i."""
        for i in range(n):
            yield i.to_bytes(8, "little") * (size // 8)

    # -- coroutines ----------------------------------------------------------
    async def asleep(self, seconds: float, key: str) -> str:
        self.events[key] = "started"
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.events[key] = "cancelled"
            raise
        self.events[key] = "finished"
        return "woke"

    async def aecho(self, x: Any) -> Any:
        await asyncio.sleep(0)
        return x

    # -- generators ----------------------------------------------------------
    def count(self, n: int, key: str = "count") -> Iterator[int]:
        self.events[key] = "running"
        try:
            for i in range(n):
                self.produced = i + 1
                yield i
            self.events[key] = "exhausted"
        finally:
            if self.events[key] != "exhausted":
                self.events[key] = "closed"

    def get_produced(self) -> int:
        return self.produced

    def fails_midway(self) -> Iterator[int]:
        yield 1
        raise ValueError("midway")

    async def acount(self, n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def serve(address: str, workers: int = 4, window: int = 4,
          allow_uids: Optional[List[int]] = None, mode: int = 0o600) -> None:
    """Run a test server until a client calls ``shutdown``."""
    server = rpc.Server(address, workers=workers, stream_window=window,
                        allow_uids=allow_uids, mode=mode)
    server.register_instance(Service())
    server.register(server.close, "shutdown")
    # Requests begun in fragments and not yet whole, on every connection.
    server.register(lambda: sum(len(getattr(lane.conn, "incoming", ())) for lane in list(server._lanes.values())),
                    "partial_requests")
    server.serve_forever()
