"""Worker processes for the crash-safety tests: ``python ring_worker.py ROLE JSON``.

Each role attaches to a ring by name and reports through the files named in
its arguments (see crash_helpers.py).  SIGUSR1 (or SIGTERM) asks a worker to
finish what it is doing and report its totals; SIGKILL is what the tests are
about.  ``zygote`` forks the other roles on request.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List

from crash_helpers import HDR, HDR_CRC, HEAD, LOCKS, REPORT, TORN, Segment, message, verify
from pyipc import CorruptedError, Empty, Full, MessageTooLarge, RingBuffer, ShutDown
from pyipc._core import lib


class Ctx:
    """A worker's arguments, its report files and its stop flag."""

    def __init__(self, args: Dict[str, Any]) -> None:
        self.args = args
        out = args["out"]
        self.fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.sfd = os.open(out + ".status", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.stop = False
        self.rng = random.Random(args.get("seed", 0))
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._stop)

    def _stop(self, *_: Any) -> None:
        self.stop = True

    def status(self, **kw: Any) -> None:
        # One write per line: a reader never sees half a line but the last.
        os.write(self.sfd, (json.dumps(kw) + "\n").encode())

    def report(self, msgs: List[Any]) -> None:
        """Record (producer, sequence) of each message, or TORN; one write per batch."""
        recs = []
        for m in msgs:
            got = verify(m)
            recs.append(REPORT.pack(*got) if got else REPORT.pack(TORN, len(m)))
        os.write(self.fd, b"".join(recs))

    def wait_go(self) -> None:
        """Wait for the file ``go`` to exist, if one was named."""
        go = self.args.get("go")
        while go and not os.path.exists(go) and not self.stop:
            time.sleep(0.001)


def timeout_of(spec: Any, rng: random.Random) -> Any:
    """A call's (block, timeout) from a spec: None, a number, "nowait",
    "short" (2 ms or non-blocking, alternately), or "mix"."""
    if spec == "mix":
        spec = rng.choice((None, None, 0.002, 0.05, "nowait"))
    elif spec == "short":
        spec = rng.choice((0.002, "nowait"))
    if spec == "nowait":
        return False, None
    return True, spec


class BigMessages:
    """Large self-checking messages without building each from scratch: one
    buffer, refilled from a random pool at a random offset (so two messages
    of one length still differ), CRC computed per message."""

    def __init__(self, rng: random.Random, biggest: int) -> None:
        self.rng = rng
        self.pool = os.urandom(biggest + (1 << 20))
        self.buf = bytearray(HEAD + biggest)

    def make(self, ident: int, seq: int, n: int) -> memoryview:
        mv = memoryview(self.buf)
        off = self.rng.randrange(0, 1 << 20)
        mv[HEAD : HEAD + n] = memoryview(self.pool)[off : off + n]
        hdr = HDR.pack(ident, seq, n, zlib.crc32(mv[HEAD : HEAD + n]))
        mv[: HDR.size] = hdr
        mv[HDR.size : HEAD] = HDR_CRC.pack(zlib.crc32(hdr))
        return mv[: HEAD + n]


def payload_size(sizes: Any, rng: random.Random, cap: int) -> int:
    if isinstance(sizes, list):
        return int(rng.randrange(sizes[0], sizes[1] + 1))
    if sizes == "small":
        return rng.randrange(50, 150)
    # "chaos": mostly small, some large enough to wrap a small ring often.
    x = rng.random()
    if x < 0.7:
        return rng.randrange(0, 200)
    if x < 0.95:
        return rng.randrange(200, max(201, cap // 8))
    return rng.randrange(cap // 4, cap // 2)


# ---- producers and consumers -----------------------------------------------


def produce(ctx: Ctx) -> None:
    """Put self-checking messages until stopped; report totals."""
    a, rng = ctx.args, ctx.rng
    ring = RingBuffer(a["name"])
    ident, sizes, ops, spec = a["ident"], a.get("sizes", "small"), a.get("ops", "put"), a.get("timeout")
    ctx.status(owner=ring.info()["owner"], pid=os.getpid())
    big = BigMessages(rng, sizes[1]) if isinstance(sizes, list) else None
    pool = b"" if big else os.urandom(ring.capacity)
    ctx.wait_go()
    seq = tries = 0
    last = start = time.monotonic()
    rate = a.get("rate")  # messages per second at most, if given

    def one(s: int) -> Any:
        n = min(payload_size(sizes, rng, ring.capacity), ring.max_message_size - HEAD)
        if big is not None:
            return big.make(ident, s, n)
        off = rng.randrange(0, len(pool) - n + 1)
        return message(ident, s, pool[off : off + n])

    while not ctx.stop:
        if rate and seq > (time.monotonic() - start) * rate:
            time.sleep(0.001)
            continue
        op = "put" if ops == "put" else rng.choice(("put", "put", "put_many", "reserve", "wait_consumed"))
        k = rng.randrange(2, 5) if op == "put_many" else 1
        batch = [one(seq + i) for i in range(k)]
        done = 0
        while done < k:
            block, timeout = timeout_of(spec, rng)
            tries += 1
            try:
                if op == "put_many":
                    done += ring.put_many(batch[done:], block, timeout)
                    continue
                if op == "reserve":
                    with ring.reserve(len(batch[0]), block, timeout) as buf:
                        buf[:] = batch[0]
                elif op == "wait_consumed":
                    try:
                        ring.put(batch[0], True, 0.05, wait_consumed=True)
                    except TimeoutError:
                        pass  # queued, not yet taken: it stays queued
                else:
                    ring.put(batch[0], block, timeout)
                done = 1
            except Full:
                pass
            now = time.monotonic()
            if now - last > 0.02:
                last = now
                ctx.status(sent=seq + done, tries=tries)
            if ctx.stop and done < k and spec is not None:
                break  # a producer with timeouts gives up the rest when told to stop
        seq += done
    ctx.status(done=seq, tries=tries, sent=seq)


def consume(ctx: Ctx) -> None:
    """Take messages and report each one until shut down (or stopped)."""
    a, rng = ctx.args, ctx.rng
    ring = RingBuffer(a["name"])
    ops, spec = a.get("ops", "get"), a.get("timeout", 0.5)
    ctx.status(owner=ring.info()["owner"], pid=os.getpid())
    buf = bytearray(ring.max_message_size) if ops == "mix" else None
    ctx.wait_go()
    got = tries = 0
    last = time.monotonic()
    while True:
        block, timeout = timeout_of(spec, rng)
        op = "get" if ops == "get" else rng.choice(("get", "get_many", "view", "get_into"))
        tries += 1
        try:
            if op == "get":
                msgs = [ring.get(block, timeout)]
            elif op == "get_many":
                msgs = ring.get_many(rng.randrange(1, 5), block, timeout)
            elif op == "view":
                with ring.view(block, timeout) as v:
                    msgs = [bytes(v)]
            else:
                assert buf is not None
                n = ring.get_into(buf, block, timeout)
                msgs = [bytes(buf[:n])]
        except Empty:
            if ctx.stop:
                break
            msgs = []
        except ShutDown:
            break
        if msgs:
            ctx.report(msgs)
            got += len(msgs)
        now = time.monotonic()
        if now - last > 0.02:
            last = now
            ctx.status(got=got, tries=tries)
    ctx.status(done=got, got=got, tries=tries)


# ---- lock holders and waiters -----------------------------------------------


def hold(ctx: Ctx) -> None:
    """Take a side's lock by writing our owner id into its word, then wait to be killed."""
    ring = RingBuffer(ctx.args["name"])
    owner = ring.info()["owner"]
    if ctx.args["side"] == "reserve":  # a lease instead of a lock
        with ring.reserve(8):
            ctx.status(owner=owner, pid=os.getpid(), held=1)
            while True:
                signal.pause()
    seg = Segment(ctx.args["name"])
    off = LOCKS[ctx.args["side"]]
    assert seg.u32(off) == 0, f"the lock was not free: {seg.u32(off):#x}"
    seg.set_u32(off, owner)
    ctx.status(owner=owner, pid=os.getpid(), held=1)
    while True:
        signal.pause()


def wait_lock(ctx: Ctx) -> None:
    """Call put or get with short timeouts until one succeeds; report when."""
    a, rng = ctx.args, ctx.rng
    ring = RingBuffer(a["name"])
    ctx.status(owner=ring.info()["owner"], pid=os.getpid())
    side, spec = a["side"], a.get("timeout", "short")
    fails = 0
    last = time.monotonic()
    while True:
        block, timeout = timeout_of(spec, rng)
        try:
            if side == "prod":
                ring.put(b"w" * 16, block, timeout)
            else:
                ring.get(block, timeout)
        except (Full, Empty):
            fails += 1
            now = time.monotonic()
            if fails == a.get("min_fails", 3):
                ctx.status(blocked=fails)
            if now - last > 0.05:
                last = now
                ctx.status(fails=fails)
            if ctx.stop:
                return
            continue
        ctx.status(ok=time.monotonic(), fails=fails)
        return


# ---- a PID namespace where the next pid can be chosen -------------------------


def pid_reuse(ctx: Ctx) -> None:
    """As init of a new PID namespace: a child takes the lock and is killed,
    then a new process is made to get the dead holder's pid and attach."""
    a = ctx.args
    name, side, how = a["name"], a["side"], a["how"]
    assert os.getpid() == 1, "pid_reuse runs as init of a new PID namespace"
    seg = Segment(name)
    off = LOCKS[side]

    holder = os.fork()
    if holder == 0:
        def child() -> None:
            ring = RingBuffer(name)
            owner = ring.info()["owner"]
            ctx.status(a_pid=os.getpid(), a_owner=owner)
            if how == "poke":
                seg.set_u32(off, owner)
                while True:
                    signal.pause()
            big = BigMessages(random.Random(1), 16 << 20)
            for seq in range(1 << 40):
                ring.put(big.make(7, seq, 16 << 20))
                ring.get()
        run_child(child)

    def a_owner() -> int:
        return int(read_own_status(a["out"]).get("a_owner", 0))

    end = time.monotonic() + 30
    while not a_owner():
        assert time.monotonic() < end, "the holder never attached"
        time.sleep(0.001)
    owner = a_owner()
    # "put": catch it inside a copy; stopped first, so that the kill
    # lands while it still holds the lock.
    while True:
        assert time.monotonic() < end, "the holder was never seen holding the lock"
        if seg.u32(off) & ~lib.PYIPC_LOCK_WAITERS != owner:
            continue
        os.kill(holder, signal.SIGSTOP)
        while proc_state(holder) != "T":
            time.sleep(0.0005)
        if seg.u32(off) & ~lib.PYIPC_LOCK_WAITERS == owner:
            break
        os.kill(holder, signal.SIGCONT)
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    word = seg.u32(off)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(holder - 1))
    reuser = os.fork()
    if reuser == 0:
        def child2() -> None:
            ring = RingBuffer(name)
            ctx.status(b_pid=os.getpid(), b_owner=ring.info()["owner"])
            go = a["out"] + ".go"
            while not os.path.exists(go):
                time.sleep(0.001)
            # The process that now has the dead holder's pid uses the ring too.
            ring.put(b"from the reuser", timeout=5)
            ctx.status(b_put=1)
            while True:
                signal.pause()
        run_child(child2)
    ctx.status(dead_word=word, killed_pid=holder, reuser_pid=reuser)
    while True:
        signal.pause()


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def read_own_status(out: str) -> Dict[str, Any]:
    merged: Dict[str, Any] = {}
    with open(out + ".status") as f:
        for line in f.read().splitlines():
            if line.endswith("}"):
                merged.update(json.loads(line))
    return merged


def run_child(body: Callable[[], None]) -> None:
    """Run a forked child's body and leave with os._exit, whatever happens."""
    code = 0
    try:
        body()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


# ---- fork while another thread is inside a call ----------------------------


def fork_case(ctx: Ctx) -> None:
    """Fork while a thread is blocked in (or inside) a ring call; the child
    uses and closes the inherited handle.  Reports what each side saw."""
    a = ctx.args
    case = a["case"]
    ring = RingBuffer(a["name"])
    done = threading.Event()
    release = threading.Event()
    seen: Dict[str, Any] = {}
    go = a["out"] + ".commit"

    def wait_counter(key: str, before: int) -> None:
        end = time.monotonic() + 20
        while ring.info()[key] <= before:
            assert time.monotonic() < end, f"{key} never moved"
            time.sleep(0.001)
        time.sleep(0.02)  # from counting the wait to sleeping in it

    if case == "get":
        before = ring.info()["get_waits"]
        t = threading.Thread(target=lambda: seen.setdefault("thread", ring.get(timeout=30)))
        t.start()
        wait_counter("get_waits", before)
    elif case == "put":
        filler = 0
        while True:
            try:
                ring.put_nowait(b"F%05d" % filler + b"f" * 994)
            except Full:
                break
            filler += 1
        seen["filler"] = filler
        before = ring.info()["put_waits"]
        t = threading.Thread(target=lambda: seen.setdefault("thread", ring.put(b"T" * 1000, timeout=30)))
        t.start()
        wait_counter("put_waits", before)
    elif case == "wait_consumed":
        before = ring.info()["put_waits"]
        t = threading.Thread(
            target=lambda: seen.setdefault("thread", ring.put(b"W", timeout=30, wait_consumed=True)))
        t.start()
        wait_counter("put_waits", before)
    elif case in ("view", "reserve"):
        ring.put(b"P")
        if case == "view":
            ring.put(b"X")

        def lease() -> None:
            if case == "view":
                with ring.view(timeout=30) as v:
                    seen["thread"] = bytes(v)
                    done.set()
                    release.wait(30)
            else:
                with ring.reserve(5, timeout=30) as b:
                    b[:] = b"RRRRR"
                    done.set()
                    release.wait(30)

        t = threading.Thread(target=lease)
        t.start()
        assert done.wait(30)
    else:
        raise ValueError(case)

    owner = ring.info()["owner"]
    pid = os.fork()
    if pid == 0:
        def child() -> None:
            got: List[bytes] = []
            assert ring.info()["owner"] != owner, "the child vouches with the parent's owner id"
            if case == "get":
                ring.put(b"c1", timeout=10)
                ring.put(b"c2", timeout=10)
                got.append(ring.get(timeout=10))
            elif case == "put":
                got.append(ring.get(timeout=10))
                got.append(ring.get(timeout=10))
                ring.put(b"C" * 1000, timeout=10)
            elif case == "wait_consumed":
                got.append(ring.get(timeout=10))
                ring.put(b"C", timeout=10)
            elif case == "view":
                got.append(ring.get(timeout=10))
                ring.put(b"C", timeout=10)
                with ring.view(timeout=10) as v:
                    got.append(bytes(v))
                with ring.reserve(2, timeout=10) as b:
                    b[:] = b"C2"
                got.append(ring.get(timeout=10))
            else:  # reserve: the parent's open reservation holds back what follows it
                got.append(ring.get(timeout=10))
                ring.put(b"C", timeout=10)
                try:
                    ring.get(timeout=0.2)
                    raise AssertionError("a message behind an open reservation was delivered")
                except Empty:
                    pass
                with open(go, "w"):
                    pass
                got.append(ring.get(timeout=10))
                got.append(ring.get(timeout=10))
            t0 = time.monotonic()
            ring.close()
            ctx.status(child=[m[:6].decode() for m in got], close_s=time.monotonic() - t0)
        run_child(child)

    # Parent: wait for the child (bounded), then let the thread finish.
    if case == "reserve":
        # The child says when it has seen its message held back; a child
        # that died first is seen by child_exit below.
        end = time.monotonic() + 30
        while not os.path.exists(go) and time.monotonic() < end:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.001)
        release.set()
    status = child_exit(pid, 30)
    release.set()
    t.join(30)
    assert not t.is_alive(), "the parent's thread never finished"
    rest = []
    while True:
        try:
            rest.append(ring.get_nowait())
        except Empty:
            break
    ring.check()
    thread = seen.get("thread")
    ctx.status(child_status=status, thread=thread.decode() if isinstance(thread, bytes) else thread,
               rest=[m[:6].decode() for m in rest], filler=seen.get("filler"), views=ring.info()["views"],
               reserves=ring.info()["reserves"])


def child_exit(pid: int, limit: float) -> Any:
    """A child's exit status; a child still running after ``limit`` s is killed: 'hung'."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def fork_storm(ctx: Ctx) -> None:
    """Fork repeatedly while a thread keeps putting and getting large
    messages (so forks land inside calls, holding locks); each child uses
    and closes the inherited handle."""
    a = ctx.args
    ring = RingBuffer(a["name"])
    stop = threading.Event()
    big = message(1, 0, os.urandom(ring.max_message_size // 3))
    errors: List[str] = []

    def busy() -> None:
        try:
            while not stop.is_set():
                ring.put(big, timeout=10)
                parse_ok(ring.get(timeout=10))
        except BaseException as e:  # reported, not lost in a thread
            errors.append(repr(e))

    def parse_ok(m: bytes) -> None:
        assert verify(m) is not None, "a torn message"

    t = threading.Thread(target=busy)
    t.start()
    results = []
    for i in range(a["forks"]):
        time.sleep(random.uniform(0, 0.01))
        pid = os.fork()
        if pid == 0:
            def child() -> None:
                ring.put(message(2, i, b"c" * 100), timeout=10)
                parse_ok(ring.get(timeout=10))
                ring.close()
            run_child(child)
        results.append(child_exit(pid, 30))
    stop.set()
    t.join(30)
    while True:
        try:
            parse_ok(ring.get_nowait())
        except Empty:
            break
    ctx.status(children=results, errors=errors, thread_alive=t.is_alive(), check=ring.check())


def fork_on_go(ctx: Ctx) -> None:
    """Attach, wait for the file ``go``, then fork: the child reports the
    owner id its inherited handle got and calls on one side."""
    a = ctx.args
    ring = RingBuffer(a["name"])
    ctx.status(owner=ring.info()["owner"])
    ctx.wait_go()
    pid = os.fork()
    if pid == 0:
        def child() -> None:
            ctx.status(child_owner=ring.info()["owner"])
            if a["side"] == "prod":
                ring.put(b"m", timeout=2)
            else:
                ring.get(timeout=2)
            ctx.status(child_ok=1)
        run_child(child)
    ctx.status(child_status=child_exit(pid, 30))


# ---- a live victim for scribblers -------------------------------------------


def victim(ctx: Ctx) -> None:
    """Keep calling everything with short timeouts for a while; only pyipc's
    exceptions or well-formed results are allowed."""
    a, rng = ctx.args, ctx.rng
    ring = RingBuffer(a["name"])
    cap, maxmsg = ring.capacity, ring.max_message_size
    ctx.status(attached=1, owner=ring.info()["owner"])
    expected = (CorruptedError, Empty, Full, ShutDown, TimeoutError)
    counts: Dict[str, int] = {}
    buf = bytearray(maxmsg)
    end = time.monotonic() + a["duration"]
    while time.monotonic() < end:
        op = rng.randrange(11)
        try:
            if op == 0:
                ring.put(bytes(rng.randrange(0, 300)), timeout=0.005)
            elif op == 1:
                ring.put_nowait(bytes(rng.randrange(0, maxmsg // 4)))
            elif op == 2:
                m = ring.get(timeout=0.005)
                assert isinstance(m, bytes) and len(m) <= maxmsg, len(m)
            elif op == 3:
                ms = ring.get_many(rng.randrange(1, 6), timeout=0.005)
                assert 1 <= len(ms) <= 5 and all(len(m) <= maxmsg for m in ms)
            elif op == 4:
                n = ring.get_into(buf, timeout=0.005)
                assert 0 <= n <= maxmsg
            elif op == 5:
                assert 0 <= ring.qsize() <= cap // 8
            elif op == 6:
                s = ring.stats()
                assert all(isinstance(v, int) and v >= 0 for v in s.values()), s
            elif op == 7:
                k = ring.put_many([bytes(rng.randrange(0, 100)) for _ in range(3)], timeout=0.005)
                assert 0 <= k <= 3
            elif op == 8:
                with ring.view(timeout=0.005) as v:
                    assert len(v) <= maxmsg
            elif op == 9:
                with ring.reserve(rng.randrange(0, 200), timeout=0.005) as w:
                    w[:1] = b"r"[: len(w)]
            else:
                ring.get_nowait()
            counts["ok"] = counts.get("ok", 0) + 1
        except expected as e:
            counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
        except MessageTooLarge:
            counts["MessageTooLarge"] = counts.get("MessageTooLarge", 0) + 1
    ctx.status(done=1, counts=counts)


# ---- the zygote ----------------------------------------------------------------


ROLES: Dict[str, Callable[[Ctx], None]] = {
    "produce": produce,
    "consume": consume,
    "hold": hold,
    "wait_lock": wait_lock,
    "pid_reuse": pid_reuse,
    "fork_case": fork_case,
    "fork_storm": fork_storm,
    "fork_on_go": fork_on_go,
    "victim": victim,
}


def zygote() -> None:
    """Fork workers on request (JSON lines on stdin, replies on stdout); reap
    them as they die (a pidfd per child) and say so."""
    fds: Dict[int, int] = {}  # pidfd -> pid
    pidfd: Dict[int, int] = {}  # pid -> pidfd
    buf = b""

    def send(msg: Dict[str, Any]) -> None:
        os.write(1, (json.dumps(msg) + "\n").encode())

    def reap(pid: int) -> int:
        fd = pidfd.pop(pid, None)
        if fd is not None:
            del fds[fd]
            os.close(fd)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    while True:
        ready, _, _ = select.select([0, *fds], [], [])
        for fd in ready:
            if fd in fds:
                pid = fds[fd]
                code = reap(pid)
                send({"exited": pid, "code": code, "t": time.monotonic()})
                continue
            if fd != 0:
                continue
            data = os.read(0, 65536)
            if not data:
                for pid in list(pidfd):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    reap(pid)
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if "spawn" in cmd:
                    pid = os.fork()
                    if pid == 0:
                        start_child(cmd["spawn"], cmd["args"], list(fds))
                    fd2 = os.pidfd_open(pid)
                    fds[fd2] = pid
                    pidfd[pid] = fd2
                    send({"spawned": pid})
                elif "kill" in cmd:
                    pid, sig = cmd["kill"], cmd["sig"]
                    if pid not in pidfd:
                        send({"killed": pid, "gone": True})
                        continue
                    t_kill = time.monotonic()
                    os.kill(pid, sig)
                    if sig != signal.SIGKILL:
                        send({"killed": pid})
                        continue
                    code = reap(pid)
                    send({"killed": pid, "t_kill": t_kill, "t_reaped": time.monotonic(), "code": code})
                elif "poll" in cmd:
                    send({"polled": 1})


def start_child(role: str, args: Dict[str, Any], inherited: List[int]) -> None:
    """In a child of the zygote: own stdio, then run the role and exit."""
    for fd in inherited:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(args["out"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    run_child(lambda: ROLES[role](Ctx(args)))


def main() -> None:
    role, args = sys.argv[1], json.loads(sys.argv[2])
    if role == "zygote":
        zygote()
        return
    ROLES[role](Ctx(args))


if __name__ == "__main__":
    main()
