"""The transports of ``pyipc bench``: one way of moving messages each.

A ``Transport`` is a handful of plain functions, so that the benchmark loops
(``runner``) and the pytest-benchmark benches (``benches/``) drive every
transport the same way.  ``TRANSPORTS`` maps the names that
``pyipc bench --transports`` accepts to them, in the table's order.

Third-party modules are imported with ``importlib.import_module`` when a
transport is used: they are optional (the ``bench`` extra), and the package
must type-check under ``mypy --strict`` without them.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import multiprocessing
import os
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "Transport",
    "TRANSPORTS",
    "BASELINE",
    "BASELINE_OBJ",
    "BATCH",
    "OBJ",
    "INTO_FROM",
    "Send",
    "Recv",
]

BATCH = 64
OBJ = (1, 2, 3, 4, 5)
# Sizes from which the `ring` row receives with get_into and a reused buffer:
# below it, allocating the result is cheap next to the call itself.
INTO_FROM = 65536
# POSIX message queues are capped here (and by default on Linux) at messages
# of 8 KiB: mqueue and posix-ipc cannot carry more.
MQ_MAX_MESSAGE = 8192
MQ_MAX_MESSAGES = 10

Send = Callable[[Any], Any]
Recv = Callable[[], Any]


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

    To add one: write those four functions and append a ``Transport`` to
    ``_make_transports`` below; ``pyipc bench``, its tests (every transport
    must deliver every message) and the benches in ``benches/`` pick it up.
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
    # The transport this one is compared with in the table's last section:
    # the same kernel primitive driven from plain Python.
    baseline: Optional[str] = None

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


def _api(name: str) -> Any:
    """``pyipc.<name>``, looked up when used: the queue and the channels may
    be missing from a build (see ``Transport.requires_attr``)."""
    import pyipc

    return getattr(pyipc, name)


def _queue_create(size: int) -> Any:
    # The parent owns the queue: its close() removes the name.
    return _api("Queue")(capacity=_budget(size))


def _queue_attach(q: Any) -> Any:
    return _api("Queue")(name=q.name, create=False)


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


def _pair_batch_sender(pair: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return pair[1].send_many, _noop


def _pair_batch_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    return functools.partial(pair[0].recv_many, BATCH), _noop


def _pipe_create(size: int) -> Any:
    return _api("pipe")()


def _socket_create(kind: str) -> Callable[[int], Any]:
    def create(size: int) -> Any:
        return _api("socketpair")(kind)

    return create


def _mqueue_create(size: int) -> str:
    name = _unique("mq")
    _api("MessageQueue")(
        name, create=True, max_messages=MQ_MAX_MESSAGES, max_message_size=MQ_MAX_MESSAGE
    ).close()
    return name


def _mqueue_destroy(name: str) -> None:
    try:
        _api("MessageQueue")(name).unlink()
    except FileNotFoundError:
        pass


def _mqueue_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    q = _api("MessageQueue")(name)
    return q.send, q.close


def _mqueue_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    q = _api("MessageQueue")(name)
    return q.recv, q.close


def _mqueue_batch_sender(name: str, size: int) -> Tuple[Send, Callable[[], None]]:
    q = _api("MessageQueue")(name)
    return q.send_many, q.close


def _mqueue_batch_receiver(name: str, size: int) -> Tuple[Recv, Callable[[], None]]:
    q = _api("MessageQueue")(name)
    return functools.partial(q.recv_many, BATCH), q.close


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
    sock = pair[1]
    sendmsg = sock.sendmsg
    sendall = sock.sendall
    pack = _LEN.pack

    def send(msg: bytes) -> None:
        # One sendmsg of prefix and payload, no copy to join them; what a
        # full socket buffer leaves unsent goes with sendall.
        head = pack(len(msg))
        done = sendmsg([head, msg])
        if done < len(head) + len(msg):
            sendall((head + msg)[done:])

    return send, _noop


def _raw_socket_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    f = pair[0].makefile("rb", buffering=1 << 16)
    return _framed_reader(f), f.close


def _raw_packet_create(kind: str) -> Callable[[int], Any]:
    def create(size: int) -> Any:
        import socket

        t = socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_DGRAM
        return socket.socketpair(socket.AF_UNIX, t)

    return create


def _raw_packet_sender(pair: Any, size: int) -> Tuple[Send, Callable[[], None]]:
    return pair[1].send, _noop


def _raw_packet_receiver(pair: Any, size: int) -> Tuple[Recv, Callable[[], None]]:
    # Python that knows the message size asks for no more.
    return functools.partial(pair[0].recv, max(size, 1)), _noop


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
    zmq = importlib.import_module("zmq")

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

    update = pub.update_connections

    def send(msg: bytes) -> None:
        n = len(msg)
        while True:
            sample = loan(n)
            if n:
                memmove(sample.payload_ptr, msg, n)
            if sample.assume_init().send():
                return
            # Delivered to no one: under load the subscriber's side of the
            # connection can lag behind for thousands of sends, which would
            # silently drop them.  Send again until it is delivered.
            update()

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
            baseline="raw-pipe",
        ),
        Transport(
            "pipe-batch", "batch", f"pyipc.pipe() send_many/recv_many, batches of {BATCH}",
            (), _pipe_create, _pair_batch_sender, _pair_batch_receiver, _pair_destroy,
            requires_attr="pipe", baseline="raw-pipe",
        ),
    ]
    for kind in ("stream", "seqpacket", "dgram"):
        base = "raw-socket" if kind == "stream" else f"raw-{kind}"
        cap = None if kind == "stream" else 65536
        t.append(Transport(
            f"socket-{kind}", "bytes", f"pyipc.socketpair({kind!r})",
            (), _socket_create(kind), _pair_sender, _pair_receiver, _pair_destroy,
            requires_attr="socketpair", baseline=base, max_size=cap,
        ))
        t.append(Transport(
            f"socket-{kind}-batch", "batch",
            f"pyipc.socketpair({kind!r}) send_many/recv_many, batches of {BATCH}",
            (), _socket_create(kind), _pair_batch_sender, _pair_batch_receiver, _pair_destroy,
            requires_attr="socketpair", baseline=base, max_size=cap,
        ))
    t += [
        Transport(
            "mqueue", "bytes",
            f"pyipc.MessageQueue ({MQ_MAX_MESSAGES} messages of at most {MQ_MAX_MESSAGE} B)",
            (), _mqueue_create, _mqueue_sender, _mqueue_receiver, _mqueue_destroy,
            max_size=MQ_MAX_MESSAGE, requires_attr="MessageQueue", baseline="posix-ipc",
        ),
        Transport(
            "mqueue-batch", "batch",
            f"pyipc.MessageQueue send_many/recv_many, batches of {BATCH}",
            (), _mqueue_create, _mqueue_batch_sender, _mqueue_batch_receiver, _mqueue_destroy,
            max_size=MQ_MAX_MESSAGE, requires_attr="MessageQueue", baseline="posix-ipc",
        ),
        Transport(
            "raw-pipe", "bytes",
            "os.pipe, os.writev with a struct length prefix, buffered reader (pure Python)",
            (), _raw_pipe_create, _raw_pipe_sender, _raw_pipe_receiver, _raw_pipe_destroy,
        ),
        Transport(
            "raw-socket", "bytes",
            "socket.socketpair stream, sendmsg with a struct length prefix, makefile reader"
            " (pure Python)",
            (), _raw_socket_create, _raw_socket_sender, _raw_socket_receiver, _pair_destroy,
        ),
        Transport(
            "raw-seqpacket", "bytes", "socket.socketpair SOCK_SEQPACKET, send/recv (pure Python)",
            (), _raw_packet_create("seqpacket"), _raw_packet_sender, _raw_packet_receiver,
            _pair_destroy, max_size=65536,
        ),
        Transport(
            "raw-dgram", "bytes", "socket.socketpair SOCK_DGRAM, send/recv (pure Python)",
            (), _raw_packet_create("dgram"), _raw_packet_sender, _raw_packet_receiver,
            _pair_destroy, max_size=65536,
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
