"""What the crash-safety tests share: self-checking messages, raw access to a
segment, delivery checks, and worker processes (plain, in another PID
namespace, or forked from a zygote that has pyipc imported already).

The workers themselves are in ``ring_worker.py``; they report through two
files each: ``out`` (one binary record per message a consumer received) and
``out.status`` (JSON lines: owner id, counts, timestamps).  Timestamps are
``time.monotonic()``, which is one clock for every process of the machine
(PID namespaces do not change it).
"""
from __future__ import annotations

import json
import mmap
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from pyipc._core import lib

WORKER = str(Path(__file__).resolve().parent / "ring_worker.py")

# A message: producer id, sequence, payload length, payload CRC, header CRC,
# then the payload.  The two CRCs catch a torn or half-written message.
HDR = struct.Struct("<IQII")
HDR_CRC = struct.Struct("<I")
HEAD = HDR.size + HDR_CRC.size
# What a consumer reports per message: producer id and sequence.
REPORT = struct.Struct("<IQ")
TORN = 0xFFFFFFFF  # a report with this producer id marks a torn message

# Where things are in a segment, as the build says (csrc/layout.h).
PROD_LOCK = lib.PYIPC_OFF_PROD_LOCK
CONS_LOCK = lib.PYIPC_OFF_CONS_LOCK
LOCKS = {"prod": PROD_LOCK, "cons": CONS_LOCK}
ID_MASK = ~lib.PYIPC_LOCK_WAITERS & 0xFFFFFFFF
FIELDS_END = lib.PYIPC_OFF_VIEWS + lib.PYIPC_MAX_LEASES * lib.PYIPC_LEASE_SIZE


def message(ident: int, seq: int, payload: bytes) -> bytes:
    """A self-checking message from producer ``ident``."""
    hdr = HDR.pack(ident, seq, len(payload), zlib.crc32(payload))
    return b"".join((hdr, HDR_CRC.pack(zlib.crc32(hdr)), payload))


def verify(m: Any) -> Optional[Tuple[int, int]]:
    """(producer, sequence) of a whole message, or None if it is torn."""
    if len(m) < HEAD:
        return None
    p, seq, n, crc = HDR.unpack_from(m)
    if HDR_CRC.unpack_from(m, HDR.size)[0] != zlib.crc32(m[: HDR.size]):
        return None
    if len(m) != HEAD + n or zlib.crc32(m[HEAD:]) != crc:
        return None
    return p, seq


def parse(m: Any) -> Tuple[int, int]:
    """(producer, sequence) of a message that must be whole."""
    got = verify(m)
    assert got is not None, f"a torn message of {len(m)} bytes"
    return got


def read_reports(path: Path) -> List[Tuple[int, int]]:
    """The (producer, sequence) records a consumer wrote to ``path``."""
    data = path.read_bytes() if path.exists() else b""
    assert len(data) % REPORT.size == 0, f"{path}: a partial report record"
    return [REPORT.unpack_from(data, k) for k in range(0, len(data), REPORT.size)]


def check_delivery(
    streams: Iterable[Sequence[Tuple[int, int]]],
    may_lose: int = 0,
    complete: Optional[Dict[int, int]] = None,
) -> Dict[int, int]:
    """Check what consumers received; return how many each producer got through.

    Nothing torn; per producer, in order within each consumer's stream and
    never twice; its messages form a prefix 0..n-1 except for at most
    ``may_lose`` gaps in all (messages killed consumers had taken but not
    reported).  ``complete`` maps producers to how many they know they put:
    those must all have arrived.
    """
    seen: Dict[int, set[int]] = {}
    for stream in streams:
        last: Dict[int, int] = {}
        for p, seq in stream:
            assert p != TORN, f"a consumer received a torn message of {seq} bytes"
            assert seq > last.get(p, -1), f"producer {p}: {seq} after {last[p]} in one consumer"
            last[p] = seq
            mine = seen.setdefault(p, set())
            assert seq not in mine, f"producer {p}: message {seq} delivered twice"
            mine.add(seq)
    missing = sum(max(s) + 1 - len(s) for s in seen.values() if s)
    assert missing <= may_lose, f"{missing} messages missing inside producers' streams, at most {may_lose} allowed"
    for p, n in (complete or {}).items():
        got = seen.get(p, set())
        assert len(got) == n and (not got or max(got) == n - 1), (
            f"producer {p} put {n} messages; {len(got)} arrived (highest {max(got, default=-1)})"
        )
    return {p: max(s) + 1 for p, s in seen.items() if s}


class Segment:
    """A raw mapping of a ring's file, for what the tests poke and watch."""

    def __init__(self, name: str) -> None:
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        try:
            self.size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.words = memoryview(self.map).cast("I")

    def u32(self, off: int) -> int:
        return int(self.words[off // 4])

    def set_u32(self, off: int, value: int) -> None:
        self.words[off // 4] = value & 0xFFFFFFFF

    def u64(self, off: int) -> int:
        return int(struct.unpack_from("<Q", self.map, off)[0])

    def set_u64(self, off: int, value: int) -> None:
        struct.pack_into("<Q", self.map, off, value & 0xFFFFFFFFFFFFFFFF)

    def holder(self, side: str) -> int:
        """The owner id in a side's lock word (0: free)."""
        return self.u32(LOCKS[side]) & ID_MASK

    def write(self, off: int, data: bytes) -> None:
        self.map[off : off + len(data)] = data

    def snapshot(self) -> bytes:
        return bytes(self.map)

    def close(self) -> None:
        self.words.release()
        self.map.close()


def status_path(out: Path) -> Path:
    return out.with_name(out.name + ".status")


def read_status(out: Path) -> Dict[str, Any]:
    """The merged JSON lines a worker wrote to its status file."""
    merged: Dict[str, Any] = {}
    try:
        text = status_path(out).read_text()
    except FileNotFoundError:
        return merged
    for line in text.splitlines():
        if line.endswith("}"):  # a line still being written is skipped
            merged.update(json.loads(line))
    return merged


def wait_until(
    pred: Callable[[], Any], what: str, limit: float = 30.0, alive: Callable[[], None] = lambda: None
) -> Any:
    """Poll until pred() is true (returning it); ``alive()`` may raise to stop early."""
    end = time.monotonic() + limit
    while True:
        got = pred()
        if got:
            return got
        alive()
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what} after {limit} s")
        time.sleep(0.002)


# ---- worker processes -------------------------------------------------------


# A new PID namespace whose init dies with unshare (so no namespace outlives
# a test that kills unshare only).
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def unshare_why_not() -> str:
    """'' if ``unshare --pid --fork --mount-proc`` works here, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    try:
        p = subprocess.run([*UNSHARE, "sh", "-c", "echo $$"],
                           capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unshare timed out"
    if p.returncode != 0 or p.stdout.strip() != "1":
        return f"cannot make a PID namespace here (needs root and util-linux >= 2.32): {p.stderr.strip()[:200]}"
    return ""


class Proc:
    """A worker started with Popen, maybe inside a new PID namespace."""

    def __init__(self, role: str, args: Dict[str, Any], out: Path, ns: bool) -> None:
        self.role = role
        self.out = out
        self.ns = ns
        out.write_bytes(b"")
        self.err = open(out.with_name(out.name + ".err"), "wb")
        cmd = [sys.executable, WORKER, role, json.dumps({**args, "out": str(out)})]
        if ns:
            cmd = [*UNSHARE, *cmd]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err)
        self._pid: Optional[int] = None if ns else self.popen.pid

    @property
    def pid(self) -> int:
        """The worker's pid in our namespace (for a namespaced one: unshare's child)."""
        if self._pid is None:
            path = f"/proc/{self.popen.pid}/task/{self.popen.pid}/children"

            def child() -> Optional[int]:
                try:
                    kids = open(path).read().split()
                except FileNotFoundError:
                    return None
                return int(kids[0]) if kids else None

            self._pid = wait_until(child, f"unshare {self.popen.pid} to start its child", 30, self.check_alive)
        assert self._pid is not None
        return self._pid

    def status(self) -> Dict[str, Any]:
        return read_status(self.out)

    def wait_status(self, key: str, limit: float = 30.0) -> Any:
        """Wait until the worker has reported ``key``; return its value."""
        st: Dict[str, Any] = {}

        def has() -> bool:
            st.update(self.status())
            return key in st

        wait_until(has, f"{self.role} to report {key!r}", limit, self.check_alive)
        return st[key]

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.role} exited with {self.popen.returncode}:\n{self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.out.with_name(self.out.name + ".err").read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the worker (the namespace's init: the whole namespace) and reap it."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=30)

    def wait(self, limit: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.role} did not exit within {limit} s:\n{self.stderr()}") from None

    def close(self) -> None:
        """Kill whatever still runs (unshare takes its namespace with it)."""
        if self.popen.poll() is None:
            for pid in (self._pid, self.popen.pid):
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGCONT)  # a stopped one must be able to die
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.popen.wait(timeout=30)
        self.err.close()


class Zygote:
    """A Python process with pyipc imported that forks workers on request.

    Forking it costs a few milliseconds where starting Python costs a
    hundred, which is what lets the chaos tests run hundreds of trials.  It
    reaps its children itself and says when each one died.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.n = 0
        self.err = open(tmp / "zygote.err", "wb")
        self.popen = subprocess.Popen([sys.executable, WORKER, "zygote", "{}"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self.err, bufsize=0)
        self.buf = b""
        self.exits: Dict[int, Dict[str, Any]] = {}
        self.live: Dict[int, Path] = {}
        self.outs: Dict[int, Path] = {}

    def _send(self, msg: Dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(msg) + "\n").encode())

    def _recv(self, limit: float = 30.0) -> Dict[str, Any]:
        assert self.popen.stdout is not None
        end = time.monotonic() + limit
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or self.popen.poll() is not None:
                raise AssertionError(f"the zygote is silent (exit {self.popen.poll()}): "
                                     f"{(self.tmp / 'zygote.err').read_text(errors='replace')[-2000:]}")
            r, _, _ = select.select([self.popen.stdout], [], [], min(left, 0.5))
            if r:
                self.buf += os.read(self.popen.stdout.fileno(), 65536)
        line, self.buf = self.buf.split(b"\n", 1)
        msg: Dict[str, Any] = json.loads(line)
        return msg

    def _reply(self, key: str, limit: float = 30.0) -> Dict[str, Any]:
        """The next reply carrying ``key``; exit notices met on the way are kept."""
        while True:
            msg = self._recv(limit)
            if "exited" in msg:
                self.exits[msg["exited"]] = msg
                self.live.pop(msg["exited"], None)
            if key in msg:
                return msg

    def spawn(self, role: str, **args: Any) -> Tuple[int, Path]:
        """Fork a worker; returns its pid and its ``out`` path."""
        self.n += 1
        out = self.tmp / f"{role}-{self.n}.out"
        out.write_bytes(b"")
        self._send({"spawn": role, "args": {**args, "out": str(out)}})
        pid = int(self._reply("spawned")["spawned"])
        self.live[pid] = self.outs[pid] = out
        return pid, out

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> Dict[str, Any]:
        """Signal a worker; for SIGKILL also reap it: returns the zygote's
        times of the kill ('t_kill') and of waitpid's return ('t_reaped')."""
        self._send({"kill": pid, "sig": int(sig)})
        msg = self._reply("killed")
        if msg.get("gone"):  # it had died by itself: its exit notice came first
            return self.exits[pid]
        if sig == signal.SIGKILL:
            self.live.pop(pid, None)
            self.exits[pid] = msg
        return msg

    def wait_exit(self, pid: int, limit: float = 30.0) -> Dict[str, Any]:
        """Wait for a worker to exit by itself; returns its exit notice."""
        end = time.monotonic() + limit
        while pid not in self.exits:
            self._send({"poll": 1})
            self._reply("polled", max(0.1, end - time.monotonic()))
            if pid in self.exits:
                break
            if time.monotonic() > end:
                raise AssertionError(f"worker {pid} did not exit within {limit} s: {self.stderr(pid)}")
            time.sleep(0.005)
        return self.exits[pid]

    def stderr(self, pid: int) -> str:
        out = self.outs.get(pid)
        if out is None:
            return ""
        try:
            return out.with_name(out.name + ".err").read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        for pid in list(self.live):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.popen.stdin:
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if self.popen.stdout:
            self.popen.stdout.close()
        self.err.close()


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
