"""The cross-process benchmark behind ``pyipc bench``.

A *transport* moves messages one way between two processes.  For each
transport and message size, a consumer and a producer run in two forked
processes pinned to two different CPUs; the producer sends for a fixed time,
then an empty message (a tuple for object transports) that tells the consumer
to stop.  The consumer counts what it received and checks every message's
size; throughput is messages over the time between the first message and the
stop message, at the consumer, so process start-up and attach costs are left
out.  Each cell is run a few times and the median is reported, because the
machines this runs on are shared and noisy.

The same transports serve the round-trip mode (``--latency``): two links,
one each way, a client that sends and waits for the echo, a server that
echoes.

Every segment, queue, socket and temporary directory a run makes is removed
by the parent process in a ``finally`` block, even when a child fails or the
user presses Ctrl-C.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, TextIO, Tuple, cast

from .errors import MessageTooLarge

__all__ = [
    "DEFAULT_SIZES",
    "Transport",
    "TRANSPORTS",
    "parse_sizes",
    "format_size",
    "pick_cpus",
    "run_throughput",
    "run_latency",
    "run_bench",
    "format_table",
    "write_plot",
]

DEFAULT_SIZES = (64, 4096, 65536, 1 << 20)
DEFAULT_REPEAT = 3
# The whole default table (about 65 cells) should take under two minutes on
# two CPUs: 1 s of producing per cell, split over the repetitions.
DEFAULT_DURATION = 1.0
LATENCY_SIZE = 64
BATCH = 64
OBJ = (1, 2, 3, 4, 5)
# Sizes from which the `ring` row receives with get_into and a reused buffer:
# below it, allocating the result is cheap next to the call itself.
INTO_FROM = 65536
# POSIX message queues are capped here (and by default on Linux) at messages
# of 8 KiB: mqueue and posix-ipc cannot carry more.
MQ_MAX_MESSAGE = 8192
MQ_MAX_MESSAGES = 10
# How long the parent waits for a run beyond its duration before it decides
# that a child is stuck and kills it.
GRACE = 30.0

Send = Callable[[Any], Any]
Recv = Callable[[], Any]


# --------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------


def _budget(size: int) -> int:
    """Bytes of buffering every bounded transport gets for messages of ``size``.

    The same budget for all, so that none wins by queueing more: 1 MiB, or
    four messages when they are larger than a quarter of that.
    """
    return max(1 << 20, 4 * (size + 64))


@dataclass
class Transport:
    """One way of moving messages from a producer process to a consumer.

    ``kind`` says how the loops call it: ``bytes`` (recv returns a bytes-like
    object), ``into`` (recv returns a length, the data went into a reused
    buffer), ``batch`` (send takes a list, recv returns a list) or ``obj``
    (Python objects: a tuple of five ints).  ``create`` runs in the parent and
    returns a state the forked children inherit; ``sender`` and ``receiver``
    run in the children and return the call and a close function; ``destroy``
    runs in the parent and removes everything ``create`` made.
    """

    name: str
    kind: str
    note: str
    requires: Tuple[str, ...]
    create: Callable[[int], Any]
    sender: Callable[[Any, int], Tuple[Send, Callable[[], None]]]
    receiver: Callable[[Any, int], Tuple[Recv, Callable[[], None]]]
    destroy: Callable[[Any], None]
    max_size: Optional[int] = None
    requires_attr: Optional[str] = None
    into_from: Optional[int] = None

    def unavailable(self) -> Optional[str]:
        """Return why this transport cannot run here, or None if it can."""
        for module in self.requires:
            try:
                __import__(module)
            except ImportError as exc:
                return f"{module} is not installed ({exc})"
        if self.requires_attr is not None:
            import pyipc

            if not hasattr(pyipc, self.requires_attr):
                return f"pyipc.{self.requires_attr} is not available in this build"
        return None

    def kind_for(self, size: int) -> str:
        """The loop kind for messages of ``size`` bytes."""
        if self.into_from is not None and size >= self.into_from:
            return "into"
        return self.kind


def _noop() -> None:
    pass


def _unique(prefix: str) -> str:
    return f"pyipc-bench-{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- pyipc.RingBuffer -------------------------------------------------------


def _ring_create(size: int) -> str:
    import pyipc

    ring = pyipc.RingBuffer(_unique("ring"), create=True, capacity=_budget(size))
    try:
        if ring.max_message_size < size:
            raise pyipc.MessageTooLarge(
                f"a {size} B message does not fit a ring of {ring.capacity} B"
            )
        return str(ring.name)
    except BaseException:
        ring.unlink()
        raise
    finally:
        ring.close()


def _ring_destroy(name: str) -> None:
    try:
        os.unlink("/dev/shm/" + name.lstrip("/"))
    except FileNotFoundError:
        pass


def _ring_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    import pyipc

    ring = pyipc.RingBuffer(name)
    return ring.put, ring.close


def _ring_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    import pyipc

    ring = pyipc.RingBuffer(name)
    if size >= INTO_FROM:
        return functools.partial(ring.get_into, bytearray(size)), ring.close
    return ring.get, ring.close


def _ring_batch_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    import pyipc

    ring = pyipc.RingBuffer(name)
    return ring.put_many, ring.close


def _ring_batch_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    import pyipc

    ring = pyipc.RingBuffer(name)
    return functools.partial(ring.get_many, BATCH), ring.close


# -- pyipc.Queue ------------------------------------------------------------


def _queue_create(size: int) -> Any:
    import pyipc

    # The parent owns the queue: its close() removes the name.
    return pyipc.Queue(capacity=_budget(size))  # type: ignore[attr-defined]


def _queue_attach(q: Any) -> Any:
    import pyipc

    return pyipc.Queue(name=q.name, create=False)  # type: ignore[attr-defined]


def _queue_sender(q: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    h = _queue_attach(q)
    return h.put, h.close


def _queue_receiver(q: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    h = _queue_attach(q)
    return h.get, h.close


def _close(obj: Any) -> None:
    obj.close()


# -- pyipc channels ---------------------------------------------------------


def _pair_destroy(pair: Any) -> None:
    for end in pair:
        end.close()


def _pair_sender(pair: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return pair[1].send, _noop


def _pair_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    return pair[0].recv, _noop


def _pipe_create(size: int) -> Any:
    import pyipc

    return pyipc.pipe()  # type: ignore[attr-defined]


def _socket_create(kind: str) -> Callable[[int], Any]:
    def create(size: int) -> Any:
        import pyipc

        return pyipc.socketpair(kind)  # type: ignore[attr-defined]

    return create


def _mqueue_create(size: int) -> str:
    import pyipc

    name = _unique("mq")
    pyipc.MessageQueue(  # type: ignore[attr-defined]
        name, create=True, max_messages=MQ_MAX_MESSAGES, max_message_size=MQ_MAX_MESSAGE
    ).close()
    return name


def _mqueue_destroy(name: str) -> None:
    import pyipc

    try:
        pyipc.MessageQueue(name).unlink()  # type: ignore[attr-defined]
    except FileNotFoundError:
        pass


def _mqueue_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    import pyipc

    q = pyipc.MessageQueue(name)  # type: ignore[attr-defined]
    return q.send, q.close


def _mqueue_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    import pyipc

    q = pyipc.MessageQueue(name)  # type: ignore[attr-defined]
    return q.recv, q.close


# -- raw Python framing over os.pipe and a socketpair -----------------------

_LEN = struct.Struct("<I")


def _raw_pipe_create(size: int) -> Tuple[int, int]:
    return os.pipe()


def _raw_pipe_destroy(fds: Tuple[int, int]) -> None:
    for fd in fds:
        os.close(fd)


def _write_all(fd: int, parts: List[Any]) -> None:
    # A blocking pipe write of any size completes unless a signal cuts it
    # short; loop on the remainder for that case.
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:
        rest = memoryview(b"".join(bytes(p) for p in parts))[done:]
        while rest:
            rest = rest[os.write(fd, rest):]


def _raw_pipe_sender(fds: Tuple[int, int], size: int) -> Tuple[Send, Callable[[], None]]:
    w = fds[1]
    pack = _LEN.pack

    def send(msg: bytes) -> None:
        _write_all(w, [pack(len(msg)), msg])

    return send, _noop


def _framed_reader(f: Any) -> Recv:
    read = f.read
    unpack = _LEN.unpack

    def recv() -> bytes:
        (n,) = unpack(read(4))
        data: bytes = read(n)
        return data

    return recv


def _raw_pipe_receiver(fds: Tuple[int, int], size: int) -> Tuple[Recv, Callable[[], None]]:
    # A buffered reader: read(n) loops until it has n bytes.
    f = os.fdopen(fds[0], "rb", buffering=1 << 16, closefd=False)
    return _framed_reader(f), f.close


def _raw_socket_create(size: int) -> Any:
    import socket

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _raw_socket_sender(pair: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    sendall = pair[1].sendall
    pack = _LEN.pack

    def send(msg: bytes) -> None:
        # Two calls rather than one concatenation: no copy of large messages.
        sendall(pack(len(msg)))
        sendall(msg)

    return send, _noop


def _raw_socket_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    f = pair[0].makefile("rb", buffering=1 << 16)
    return _framed_reader(f), f.close


# -- multiprocessing --------------------------------------------------------


def _mp_queue_create(size: int) -> Any:
    # Bounded like the others; an unbounded Queue would let the producer
    # run far ahead and the run last until the consumer drained it.
    return multiprocessing.get_context("fork").Queue(max(2, _budget(size) // max(size, 1)))


def _mp_queue_destroy(q: Any) -> None:
    q.close()
    q.join_thread()


def _mp_queue_sender(q: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return q.put, _noop


def _mp_queue_receiver(q: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    return q.get, _noop


def _mp_pipe_create(size: int) -> Any:
    return multiprocessing.get_context("fork").Pipe(duplex=False)


def _mp_pipe_sender(pair: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return pair[1].send_bytes, _noop


def _mp_pipe_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    return pair[0].recv_bytes, _noop


# -- faster_fifo ------------------------------------------------------------


def _identity(data: Any) -> Any:
    return data


def _faster_fifo_create(raw: bool) -> Callable[[int], Any]:
    def create(size: int) -> Any:
        faster_fifo = importlib.import_module("faster_fifo")

        # Its buffer must hold one whole message plus framing: the budget.
        if raw:
            return faster_fifo.Queue(_budget(size), dumps=_identity, loads=bytes)
        return faster_fifo.Queue(_budget(size))

    return create


def _faster_fifo_destroy(q: Any) -> None:
    q.close()


def _faster_fifo_sender(q: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return q.put, _noop


def _faster_fifo_receiver(q: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    return q.get, _noop


# -- pyzmq PUSH/PULL over ipc:// --------------------------------------------


def _zmq_create(size: int) -> str:
    return tempfile.mkdtemp(prefix="pyipc-bench-zmq-")


def _zmq_destroy(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _zmq_socket(path: str, pull: bool) -> Tuple[Any, Callable[[], None]]:
    import zmq

    # Contexts do not survive fork: each child makes its own.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL if pull else zmq.PUSH)
    url = "ipc://" + os.path.join(path, "s")
    if pull:
        sock.bind(url)
    else:
        sock.connect(url)

    def close() -> None:
        # The default linger: a producer's last messages (the stop message)
        # are still queued when it closes, and must not be dropped.
        sock.close()
        ctx.term()

    return sock, close


def _zmq_sender(path: str, size: int) -> Tuple[Send, Callable[[], None]]:
    sock, close = _zmq_socket(path, pull=False)
    return sock.send, close


def _zmq_receiver(path: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    sock, close = _zmq_socket(path, pull=True)
    return sock.recv, close


# -- posix_ipc --------------------------------------------------------------


def _posix_ipc_create(size: int) -> str:
    posix_ipc = importlib.import_module("posix_ipc")

    name = "/" + _unique("pmq")
    posix_ipc.MessageQueue(
        name,
        posix_ipc.O_CREX,
        max_messages=MQ_MAX_MESSAGES,
        max_message_size=MQ_MAX_MESSAGE,
    ).close()
    return name


def _posix_ipc_destroy(name: str) -> None:
    posix_ipc = importlib.import_module("posix_ipc")

    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.ExistentialError:
        pass


def _posix_ipc_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    posix_ipc = importlib.import_module("posix_ipc")

    q = posix_ipc.MessageQueue(name)
    return q.send, q.close


def _posix_ipc_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    posix_ipc = importlib.import_module("posix_ipc")

    q = posix_ipc.MessageQueue(name)
    receive = q.receive

    def recv() -> bytes:
        data: bytes = receive()[0]
        return data

    return recv, q.close


# -- iceoryx2 publish/subscribe ---------------------------------------------


def _iox2_create(size: int) -> str:
    return _unique("iox2")


def _iox2_service(name: str) -> Tuple[Any, Any]:
    iox2 = importlib.import_module("iceoryx2")

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    # No safe overflow: a publisher must wait for room rather than overwrite
    # samples the subscriber has not read, or messages would be lost.
    service = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(BATCH)
        .open_or_create()
    )
    return node, service


def _iox2_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    iox2 = importlib.import_module("iceoryx2")

    node, service = _iox2_service(name)
    pub = (
        service.publisher_builder()
        .initial_max_slice_len(max(size, 1))
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    # Connect to the subscriber now, not lazily during the first sends,
    # which would otherwise go to no one.
    pub.update_connections()
    loan = pub.loan_slice_uninit
    memmove = ctypes.memmove

    def send(msg: bytes) -> None:
        n = len(msg)
        sample = loan(n)
        if n:
            memmove(sample.payload_ptr, msg, n)
        sample.assume_init().send()

    def close() -> None:
        # The node (kept alive by this closure) removes its files when freed.
        pub.delete()

    return send, close


def _iox2_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    node, service = _iox2_service(name)
    sub = service.subscriber_builder().buffer_size(BATCH).create()
    receive = sub.receive

    def recv() -> bytes:
        # iceoryx2 is designed to be polled: spin until a sample is there.
        while True:
            sample = receive()
            if sample is not None:
                break
        n = sample.header.number_of_elements
        data = ctypes.string_at(sample.payload_ptr, n)
        sample.delete()
        return data

    def close() -> None:
        sub.delete()

    return recv, close


def _make_transports() -> Dict[str, Transport]:
    t = [
        Transport(
            "ring", "bytes",
            f"pyipc.RingBuffer put/get; get_into with a reused buffer from {INTO_FROM // 1024} KiB",
            (), _ring_create, _ring_sender, _ring_receiver, _ring_destroy,
            into_from=INTO_FROM,
        ),
        Transport(
            "ring-batch", "batch", f"pyipc.RingBuffer put_many/get_many, batches of {BATCH}",
            (), _ring_create, _ring_batch_sender, _ring_batch_receiver, _ring_destroy,
        ),
        Transport(
            "queue", "bytes", "pyipc.Queue carrying the bytes object",
            (), _queue_create, _queue_sender, _queue_receiver, _close, requires_attr="Queue",
        ),
        Transport(
            "queue-obj", "obj", "pyipc.Queue carrying a tuple of five ints",
            (), _queue_create, _queue_sender, _queue_receiver, _close, requires_attr="Queue",
        ),
        Transport(
            "pipe", "bytes", "pyipc.pipe()",
            (), _pipe_create, _pair_sender, _pair_receiver, _pair_destroy, requires_attr="pipe",
        ),
    ]
    for kind in ("stream", "seqpacket", "dgram"):
        t.append(Transport(
            f"socket-{kind}", "bytes", f"pyipc.socketpair({kind!r})",
            (), _socket_create(kind), _pair_sender, _pair_receiver, _pair_destroy,
            requires_attr="socketpair",
        ))
    t += [
        Transport(
            "mqueue", "bytes",
            f"pyipc.MessageQueue ({MQ_MAX_MESSAGES} messages of at most {MQ_MAX_MESSAGE} B)",
            (), _mqueue_create, _mqueue_sender, _mqueue_receiver, _mqueue_destroy,
            max_size=MQ_MAX_MESSAGE, requires_attr="MessageQueue",
        ),
        Transport(
            "raw-pipe", "bytes", "os.pipe with struct length prefixes (pure Python)",
            (), _raw_pipe_create, _raw_pipe_sender, _raw_pipe_receiver, _raw_pipe_destroy,
        ),
        Transport(
            "raw-socket", "bytes",
            "socket.socketpair stream with struct length prefixes (pure Python)",
            (), _raw_socket_create, _raw_socket_sender, _raw_socket_receiver, _pair_destroy,
        ),
        Transport(
            "mp-queue", "bytes", "multiprocessing.Queue",
            (), _mp_queue_create, _mp_queue_sender, _mp_queue_receiver, _mp_queue_destroy,
        ),
        Transport(
            "mp-queue-obj", "obj", "multiprocessing.Queue carrying a tuple of five ints",
            (), _mp_queue_create, _mp_queue_sender, _mp_queue_receiver, _mp_queue_destroy,
        ),
        Transport(
            "mp-pipe", "bytes", "multiprocessing.Pipe send_bytes/recv_bytes",
            (), _mp_pipe_create, _mp_pipe_sender, _mp_pipe_receiver, _pair_destroy,
        ),
        Transport(
            "faster-fifo", "bytes", "faster_fifo.Queue, bytes in and out (no pickling)",
            ("faster_fifo",), _faster_fifo_create(True), _faster_fifo_sender,
            _faster_fifo_receiver, _faster_fifo_destroy,
        ),
        Transport(
            "faster-fifo-obj", "obj", "faster_fifo.Queue carrying a tuple of five ints",
            ("faster_fifo",), _faster_fifo_create(False), _faster_fifo_sender,
            _faster_fifo_receiver, _faster_fifo_destroy,
        ),
        Transport(
            "zmq", "bytes", "pyzmq PUSH/PULL over ipc://",
            ("zmq",), _zmq_create, _zmq_sender, _zmq_receiver, _zmq_destroy,
        ),
        Transport(
            "posix-ipc", "bytes",
            f"posix_ipc.MessageQueue ({MQ_MAX_MESSAGES} messages of at most {MQ_MAX_MESSAGE} B)",
            ("posix_ipc",), _posix_ipc_create, _posix_ipc_sender, _posix_ipc_receiver,
            _posix_ipc_destroy, max_size=MQ_MAX_MESSAGE,
        ),
        Transport(
            "iceoryx2", "bytes", "iceoryx2 publish/subscribe, busy-polling subscriber",
            ("iceoryx2",), _iox2_create, _iox2_sender, _iox2_receiver, lambda name: None,
        ),
    ]
    return {x.name: x for x in t}


TRANSPORTS: Dict[str, Transport] = _make_transports()
# The baseline each row is compared with, at the same size.
BASELINE = "mp-queue"
BASELINE_OBJ = "mp-queue-obj"


# --------------------------------------------------------------------------
# Sizes and CPUs
# --------------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20}


def parse_sizes(text: str) -> List[int]:
    """Parse ``"64,4K,1M"`` into byte counts (K and M are binary: KiB, MiB).

    Raises ValueError on anything else, or on a size below 1 byte.
    """
    sizes = []
    for item in text.split(","):
        item = item.strip().upper()
        digits = item.rstrip("KMIB")
        unit = item[len(digits):]
        if not digits.isdigit() or unit not in _UNITS:
            raise ValueError(f"not a size: {item!r} (examples: 64, 4K, 1M)")
        size = int(digits) * _UNITS[unit]
        if size < 1:
            raise ValueError("sizes must be at least 1 byte")
        sizes.append(size)
    return sizes


def format_size(size: int) -> str:
    """``65536`` -> ``"64 KiB"``; sizes that are not whole KiB stay in bytes."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size >> 10} KiB"
    return f"{size} B"


def pick_cpus() -> Tuple[Optional[int], Optional[int]]:
    """Return (consumer CPU, producer CPU), or (None, None) with only one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------
# The child processes
# --------------------------------------------------------------------------


def _sentinel(kind: str) -> Any:
    if kind == "obj":
        return ()
    if kind == "batch":
        return [b""]
    return b""


def _consume(recv: Recv, kind: str, size: int) -> Dict[str, Any]:
    """Receive until the stop message; count, check sizes, time first to last."""
    if kind == "obj":
        size = len(OBJ)
    perf = time.perf_counter
    count = 0
    bad = 0
    fill = b"\x5a" * size
    if kind == "batch":
        first = recv()
        t0 = perf()
        # Sizes are checked on every message, contents on the first only:
        # comparing every byte would cost more than moving them.
        if first[0] and first[0] != fill:
            bad += 1
        batch = first
        while True:
            stop = False
            for m in batch:
                n = len(m)
                if n == 0:
                    stop = True
                    break
                if n != size:
                    bad += 1
                count += 1
            if stop:
                break
            batch = recv()
    else:
        into = kind == "into"
        first = recv()
        t0 = perf()
        n = first if into else len(first)
        if not into and n and first != (OBJ if kind == "obj" else fill):
            bad += 1
        while n:
            if n != size:
                bad += 1
            count += 1
            m = recv()
            n = m if into else len(m)
    t1 = perf()
    return {"received": count, "bad_sizes": bad, "elapsed": t1 - t0}


def _produce(send: Send, kind: str, size: int, duration: float,
             count: Optional[int] = None) -> int:
    """Send for ``duration`` seconds (or ``count`` messages, rounded up to
    whole batches), then the stop message; return how many were sent."""
    if kind == "obj":
        msg: Any = OBJ
    else:
        msg = b"\x5a" * size
    if kind == "batch":
        msg = [msg] * BATCH
        per_call = BATCH
    else:
        per_call = 1
    if count is not None:
        calls = -(-count // per_call)
        for _ in range(calls):
            send(msg)
        send(_sentinel(kind))
        return calls * per_call
    # Look at the clock every few calls only, more often for big messages.
    chunk = max(1, min(16, (1 << 20) // max(size, 1) // 4))
    loop = range(chunk)
    perf = time.perf_counter
    end = perf() + duration
    calls = 0
    while True:
        for _ in loop:
            send(msg)
        calls += chunk
        if perf() >= end:
            break
    send(_sentinel(kind))
    return calls * per_call


def _child(role: str, transport: Transport, state: Any, size: int, duration: float,
           cpu: Optional[int], ready: Any, done: Any, out: Any,
           count: Optional[int] = None) -> None:
    """Entry point of both children of a throughput run (see ``_produce``
    for ``count``; the benches use it)."""
    # Ctrl-C reaches the whole process group; only the parent handles it
    # (and terminates the children), so that cleanup happens in one place.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result: Dict[str, Any]
    try:
        _pin(cpu)
        kind = transport.kind_for(size)
        if role == "consumer":
            recv, close = transport.receiver(state, size)
            ready.set()
            try:
                result = _consume(recv, kind, size)
            finally:
                done.set()
                close()
        else:
            # Connect only once the consumer is there: a publish/subscribe
            # transport (iceoryx2) delivers only to subscribers it saw at
            # connection time.
            if not ready.wait(GRACE):
                raise TimeoutError("the consumer never became ready")
            send, close = transport.sender(state, size)
            try:
                result = {"sent": _produce(send, kind, size, duration, count)}
                # Some transports (iceoryx2) drop what a closed publisher
                # left in flight: close only once everything has arrived.
                done.wait(GRACE)
            finally:
                close()
    except BaseException as exc:  # reported to the parent, never lost
        result = {"error": f"{role}: {type(exc).__name__}: {exc}",
                  "too_large": isinstance(exc, MessageTooLarge)}
    out.send(result)
    out.close()


def _pingpong_child(role: str, transport: Transport, there: Any, back: Any,
                    duration: float, cpu: Optional[int], ready: Any, ready_back: Any,
                    done: Any, out: Any) -> None:
    """Entry point of both children of a latency run (client or echo server)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result: Dict[str, Any]
    size = LATENCY_SIZE
    kind = transport.kind_for(size)
    closers: List[Callable[[], None]] = []
    try:
        _pin(cpu)
        # Each link's receiver exists before its sender connects (see
        # _child): the server listens, then the client listens and connects,
        # then the server connects its reply link.
        if role == "server":
            recv, c1 = transport.receiver(there, size)
            closers.append(c1)
            ready.set()
            if not ready_back.wait(GRACE):
                raise TimeoutError("the client never became ready")
            send, c2 = transport.sender(back, size)
            closers.append(c2)
            rounds = 0
            while True:
                m = recv()
                if len(m) == 0:
                    break
                send(m)
                rounds += 1
            done.set()
            result = {"echoed": rounds}
        else:
            recv, c1 = transport.receiver(back, size)
            closers.append(c1)
            ready_back.set()
            if not ready.wait(GRACE):
                raise TimeoutError("the echo server never became ready")
            send, c2 = transport.sender(there, size)
            closers.append(c2)
            result = _ping(send, recv, kind, duration)
            send(_sentinel(kind))
            # Close only once the server has the stop message (see _child).
            done.wait(GRACE)
    except BaseException as exc:
        result = {"error": f"{role}: {type(exc).__name__}: {exc}",
                  "too_large": isinstance(exc, MessageTooLarge)}
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception:
                pass
    out.send(result)
    out.close()


def _ping(send: Send, recv: Recv, kind: str, duration: float) -> Dict[str, Any]:
    msg = b"\x5a" * LATENCY_SIZE
    clock = time.perf_counter_ns
    # Warm up caches, branch predictors and lazy set-up before measuring.
    for _ in range(200):
        send(msg)
        recv()
    rtts = []
    end = clock() + int(duration * 1e9)
    bad = 0
    while True:
        t0 = clock()
        send(msg)
        m = recv()
        t1 = clock()
        rtts.append(t1 - t0)
        if len(m) != LATENCY_SIZE:
            bad += 1
        if t1 >= end:
            break
    rtts.sort()
    return {
        "rounds": len(rtts),
        "bad_sizes": bad,
        "p50_us": rtts[len(rtts) // 2] / 1e3,
        "p99_us": rtts[min(len(rtts) - 1, (len(rtts) * 99) // 100)] / 1e3,
    }


# --------------------------------------------------------------------------
# The parent: one run
# --------------------------------------------------------------------------


def _collect(procs: Sequence[Any], conns: Sequence[Any], timeout: float) -> List[Dict[str, Any]]:
    """Wait for one result from each child; kill the rest if one fails or time runs out."""
    results: List[Optional[Dict[str, Any]]] = [None] * len(conns)
    deadline = time.monotonic() + timeout
    pending = {c: i for i, c in enumerate(conns)}
    why = f"no result within {timeout:.0f} s"
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for c in multiprocessing.connection.wait(list(pending), left):
                conn = cast(multiprocessing.connection.Connection, c)
                i = pending.pop(conn)
                try:
                    results[i] = conn.recv()
                except EOFError:
                    results[i] = {"error": "a child died without reporting"}
            if any(r is not None and "error" in r for r in results):
                # The other side would wait for ever for its peer.
                why = "stopped: its peer failed"
                break
    finally:
        for p in procs:
            p.join(1.0 if not pending else 0)
            if p.is_alive():
                p.kill()
                p.join()
    return [r if r is not None else {"error": why} for r in results]


def _first_error(results: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The errors the children reported, their own before those of the parent."""
    errors = [r["error"] for r in results if "error" in r]
    errors.sort(key=lambda e: e.startswith(("no result", "stopped")))
    return "; ".join(errors) if errors else None


def _spawn(target: Callable[..., None], args_list: List[Tuple[Any, ...]],
           timeout: float) -> List[Dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    conns = []
    procs = []
    try:
        for args in args_list:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=target, args=args + (w,), daemon=True)
            p.start()
            w.close()
            conns.append(r)
            procs.append(p)
        return _collect(procs, conns, timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()


def run_throughput(transport: Transport, size: int, duration: float,
                   cpus: Tuple[Optional[int], Optional[int]]) -> Dict[str, Any]:
    """One throughput run of ``transport`` at ``size``: a dict with msg_per_s,
    or error, or skip (the transport cannot carry messages that large)."""
    ctx = multiprocessing.get_context("fork")
    state = transport.create(size)
    try:
        ready = ctx.Event()
        done = ctx.Event()
        consumer, producer = _spawn(_child, [
            ("consumer", transport, state, size, duration, cpus[0], ready, done),
            ("producer", transport, state, size, duration, cpus[1], ready, done),
        ], duration + GRACE)
    finally:
        transport.destroy(state)
    if consumer.get("too_large") or producer.get("too_large"):
        # A packet-based channel's kernel limit, not a failure.
        return {"skip": f"a {format_size(size)} message is too large for it"}
    error = _first_error([consumer, producer])
    if error is not None:
        return {"error": error}
    if consumer["received"] != producer["sent"]:
        return {"error": f"sent {producer['sent']} messages, received {consumer['received']}"}
    if consumer["bad_sizes"]:
        return {"error": f"{consumer['bad_sizes']} messages arrived with the wrong size "
                         "or contents"}
    # The stop message ends the interval, so it counts as the last arrival.
    elapsed = consumer["elapsed"]
    count = consumer["received"]
    rate = count / elapsed if elapsed > 0 else 0.0
    return {"messages": count, "elapsed": elapsed, "msg_per_s": rate}


def run_latency(transport: Transport, duration: float,
                cpus: Tuple[Optional[int], Optional[int]]) -> Dict[str, Any]:
    """One ping-pong run; a dict with p50_us, p99_us and rounds, or error."""
    ctx = multiprocessing.get_context("fork")
    there = transport.create(LATENCY_SIZE)
    try:
        back = transport.create(LATENCY_SIZE)
        try:
            ready = ctx.Event()
            ready_back = ctx.Event()
            done = ctx.Event()
            events = (ready, ready_back, done)
            server, client = _spawn(_pingpong_child, [
                ("server", transport, there, back, duration, cpus[0], *events),
                ("client", transport, there, back, duration, cpus[1], *events),
            ], duration + GRACE)
        finally:
            transport.destroy(back)
    finally:
        transport.destroy(there)
    error = _first_error([server, client])
    if error is not None:
        return {"error": error}
    if client["bad_sizes"]:
        return {"error": f"{client['bad_sizes']} replies arrived with the wrong size"}
    return client


# --------------------------------------------------------------------------
# The whole table
# --------------------------------------------------------------------------


@dataclass
class Report:
    """What ``run_bench`` measured, ready for the table, JSON and the plot."""

    mode: str
    duration: float
    repeat: int
    sizes: List[int]
    cpus: Tuple[Optional[int], Optional[int]]
    results: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: environment, settings, results and skipped cells."""
        import pyipc

        consumer, producer = self.cpus
        return {
            "pyipc_version": pyipc.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mode": self.mode,
            "duration_per_cell": self.duration,
            "repeat": self.repeat,
            "sizes": self.sizes,
            "pinned": consumer is not None,
            "consumer_cpu": consumer,
            "producer_cpu": producer,
            "results": self.results,
            "skipped": self.skipped,
        }


Progress = Callable[[str], None]


def _cells(names: Iterable[str], sizes: Sequence[int], mode: str,
           skipped: List[Dict[str, Any]]) -> List[Tuple[Transport, Optional[int]]]:
    """The (transport, size) pairs to run; the rest go to ``skipped`` with a reason."""
    cells: List[Tuple[Transport, Optional[int]]] = []
    for name in names:
        t = TRANSPORTS[name]
        reason = t.unavailable()
        if reason is not None:
            skipped.append({"transport": name, "size": None, "reason": reason})
            continue
        if mode == "latency":
            if t.kind in ("batch", "obj"):
                skipped.append({"transport": name, "size": None,
                                "reason": "round trips are timed one bytes message per call"})
            else:
                cells.append((t, LATENCY_SIZE))
            continue
        if t.kind == "obj":
            cells.append((t, None))
            continue
        for size in sizes:
            if t.max_size is not None and size > t.max_size:
                skipped.append({"transport": name, "size": size,
                                "reason": f"messages are capped at {format_size(t.max_size)}"})
            else:
                cells.append((t, size))
    return cells


def run_bench(names: Sequence[str], sizes: Sequence[int], duration: float,
              repeat: int = DEFAULT_REPEAT, latency: bool = False,
              progress: Optional[Progress] = None) -> Report:
    """Run every cell ``repeat`` times and keep the medians.

    ``duration`` is the producing time of one cell, split evenly over its
    repetitions.  Raises KeyError for an unknown transport name; failures of
    a transport are reported in its cell, not raised.
    """
    for name in names:
        if name not in TRANSPORTS:
            raise KeyError(name)
    mode = "latency" if latency else "throughput"
    cpus = pick_cpus()
    report = Report(mode, duration, repeat, list(sizes), cpus)
    cells = _cells(names, sizes, mode, report.skipped)
    per_run = duration / repeat
    runs: List[List[Dict[str, Any]]] = [[] for _ in cells]
    # Repetition by repetition over the whole table, not cell by cell: a
    # burst of load from a neighbour then spoils one run of many cells
    # (which the median drops) rather than every run of one cell.
    too_large: Set[int] = set()
    for rep in range(repeat):
        for i, (t, size) in enumerate(cells):
            if i in too_large:
                continue
            if progress is not None:
                label = "objects" if size is None else format_size(size)
                progress(f"run {rep + 1}/{repeat} [{i + 1}/{len(cells)}] {t.name} {label}")
            if latency:
                runs[i].append(run_latency(t, per_run, cpus))
            else:
                run = run_throughput(t, size or 0, per_run, cpus)
                if "skip" in run:
                    too_large.add(i)
                    report.skipped.append({"transport": t.name, "size": size,
                                           "reason": run["skip"]})
                runs[i].append(run)
    for i, ((t, size), cell_runs) in enumerate(zip(cells, runs)):
        if i not in too_large:
            report.results.append(_summarise(t, size, cell_runs, latency))
    if not latency:
        _add_ratios(report.results)
    return report


def _summarise(t: Transport, size: Optional[int], runs: List[Dict[str, Any]],
               latency: bool) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "transport": t.name,
        "size": size,
        "note": t.note,
        "runs": runs,
    }
    if size is not None and t.kind_for(size) == "into":
        row["receive"] = "get_into"
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["error"] = errors[0]
        return row
    if latency:
        row["p50_us"] = statistics.median(r["p50_us"] for r in runs)
        row["p99_us"] = statistics.median(r["p99_us"] for r in runs)
        row["rounds"] = sum(r["rounds"] for r in runs)
    else:
        rate = statistics.median(r["msg_per_s"] for r in runs)
        row["msg_per_s"] = rate
        row["mb_per_s"] = rate * size / 1e6 if size is not None else None
    return row


def _add_ratios(rows: List[Dict[str, Any]]) -> None:
    base: Dict[Optional[int], float] = {}
    for row in rows:
        if row["transport"] in (BASELINE, BASELINE_OBJ) and "msg_per_s" in row:
            base[row["size"]] = row["msg_per_s"]
    for row in rows:
        ref = base.get(row["size"])
        if "msg_per_s" in row and ref:
            row["vs_mp_queue"] = row["msg_per_s"] / ref


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _cpu_line(cpus: Tuple[Optional[int], Optional[int]], mode: str = "throughput") -> str:
    consumer, producer = cpus
    a, b = ("client", "echo server") if mode == "latency" else ("producer", "consumer")
    if consumer is None:
        return f"only one CPU available: {a} and {b} share it (not pinned)"
    return f"{a} pinned to CPU {producer}, {b} to CPU {consumer}"


def format_table(report: Report) -> str:
    """The report as the text table printed at the end of ``pyipc bench``."""
    lines = [
        f"pyipc bench ({report.mode}): {_cpu_line(report.cpus, report.mode)}; "
        f"median of {report.repeat} runs of {report.duration / report.repeat:.2f} s per cell",
    ]
    if report.mode == "latency":
        lines.append("")
        lines.append(f"round trip of {LATENCY_SIZE} B messages (ping-pong)")
        lines.append(f"{'transport':<18}{'p50 us':>10}{'p99 us':>10}{'rounds':>10}")
        for row in report.results:
            if "error" in row:
                lines.append(f"{row['transport']:<18}  failed: {row['error']}")
            else:
                lines.append(f"{row['transport']:<18}{row['p50_us']:>10.1f}"
                             f"{row['p99_us']:>10.1f}{row['rounds']:>10}")
    else:
        groups: Dict[Optional[int], List[Dict[str, Any]]] = {}
        for row in report.results:
            groups.setdefault(row["size"], []).append(row)
        for size, rows in groups.items():
            lines.append("")
            if size is None:
                lines.append(f"Python objects: a tuple of five ints (ratio to {BASELINE_OBJ})")
            else:
                lines.append(f"messages of {format_size(size)} (ratio to {BASELINE})")
            lines.append(f"{'transport':<18}{'msg/s':>14}{'MB/s':>11}{'ratio':>9}")
            for row in rows:
                name = row["transport"] + (" (into)" if row.get("receive") else "")
                if "error" in row:
                    lines.append(f"{name:<18}  failed: {row['error']}")
                    continue
                mb = "" if row["mb_per_s"] is None else f"{row['mb_per_s']:,.1f}"
                ratio = f"{row['vs_mp_queue']:.2f}x" if "vs_mp_queue" in row else "-"
                lines.append(f"{name:<18}{_fmt_rate(row['msg_per_s']):>14}{mb:>11}{ratio:>9}")
    if any(r.get("receive") for r in report.results):
        lines.append("")
        lines.append(f"(into): the ring receives with get_into into a reused buffer "
                     f"from {format_size(INTO_FROM)} on")
    if report.skipped:
        lines.append("")
        lines.append("skipped:")
        for s in report.skipped:
            where = "" if s["size"] is None else f" at {format_size(s['size'])}"
            lines.append(f"  {s['transport']}{where}: {s['reason']}")
    return "\n".join(lines)


def write_json(report: Report, path: str) -> None:
    """Write the report as JSON to ``path``.  Raises OSError."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")


def write_plot(report: Report, path: str) -> None:
    """Bar chart (log scale) of msg/s per transport and size, or of latency.

    Raises ImportError when matplotlib (the ``plot`` extra) is missing, and
    OSError when the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed: we only write a file
    import matplotlib.pyplot as plt

    rows = [r for r in report.results if "error" not in r]
    fig, ax = plt.subplots(figsize=(12, 6))
    if report.mode == "latency":
        names = [r["transport"] for r in rows]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["p50_us"] for r in rows], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_us"] for r in rows], 0.4, label="p99")
        ax.set_ylabel("round trip, microseconds (log scale)")
        ax.set_title(f"pyipc bench: ping-pong of {LATENCY_SIZE} B messages")
    else:
        names = list(dict.fromkeys(r["transport"] for r in rows))
        groups = list(dict.fromkeys(r["size"] for r in rows))
        width = 0.8 / max(1, len(groups))
        xs = range(len(names))
        for g, size in enumerate(groups):
            by_name = {r["transport"]: r["msg_per_s"] for r in rows if r["size"] == size}
            label = "objects" if size is None else format_size(size)
            ax.bar([x + (g - (len(groups) - 1) / 2) * width for x in xs],
                   [by_name.get(n, 0) for n in names], width, label=label)
        ax.set_ylabel("messages per second (log scale)")
        ax.set_title(f"pyipc bench: throughput ({_cpu_line(report.cpus)})")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stderr_progress(stream: TextIO = sys.stderr) -> Progress:
    """A progress callback: one line rewritten in place on a terminal."""
    tty = stream.isatty()

    def show(text: str) -> None:
        if tty:
            stream.write("\r\x1b[K" + text)
        else:
            stream.write(text + "\n")
        stream.flush()

    return show
