"""The ``pyipc`` command: ``bench``, ``ls``, ``info``, ``rm``, ``repair``, ``rpc`` and ``keygen``.

``ls``, ``info``, ``rm`` and ``repair`` work on rings and on topics
(``Publisher``/``Subscriber`` segments) alike.  A ring is named as in the API: ``jobs`` or ``/jobs`` is the shared-memory
segment ``/dev/shm/jobs``.  A ring in a file is given by its path, which
must start with ``./``, ``../`` or be absolute with a directory
(``./ring``, ``/mnt/vol/ring``), the way a shell tells a path from a name.

Exit codes: 0 success, 1 an operational error (a missing or corrupted ring,
a permission, a failed write), 2 a usage error (bad option or name), 130
interrupted.  Expected errors print one ``pyipc: ...`` line on stderr, never a
traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

# Only the defaults: the harness itself is imported when `pyipc bench` runs.
from .bench import DEFAULT_DURATION, DEFAULT_REPEAT, LATENCY_SIZE
from ._util import format_size, shm_name
from ._core import ffi, lib
from .errors import CorruptedError
from .ring import RingBuffer, _where, attach_for_repair
from .topic import Publisher
from .topic import attach_for_repair as attach_topic_for_repair

__all__ = ["main", "SHM_DIR", "pid_alive", "list_rings", "list_topics", "is_path"]

SHM_DIR = "/dev/shm"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """A bad argument found after parsing (an unknown transport, a bad name)."""


def _say(message: str) -> None:
    print(f"pyipc: {message}", file=sys.stderr)


def pid_alive(pid: int) -> Optional[bool]:
    """Whether process ``pid`` exists (None when the pid is not a real one).

    ``PermissionError`` from ``kill(pid, 0)`` means the process exists but
    belongs to someone else: alive.
    """
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive_text(pid: int) -> str:
    alive = pid_alive(pid)
    return "unknown" if alive is None else ("alive" if alive else "dead")


def is_path(arg: str) -> bool:
    """Does a command-line ring argument name a file rather than a segment?"""
    return arg.startswith(("./", "../")) or (arg.startswith("/") and "/" in arg[1:])


def _ring_args(arg: str) -> Dict[str, Any]:
    """RingBuffer keyword arguments for a command-line ring argument."""
    return {"path": arg} if is_path(arg) else {"name": arg}


def list_rings(directory: str = SHM_DIR) -> List[Dict[str, Any]]:
    """``info()`` of every pyipc ring in ``directory`` (``/dev/shm`` by
    default: segments by name; elsewhere: files by path), with its ``name``.

    Files that are not rings (``CorruptedError``), that we may not open
    (``PermissionError``), that vanish meanwhile, or whose names are not
    valid ring names are skipped.  Raises OSError if the directory cannot be
    read.
    """
    rings = []
    in_shm = os.path.realpath(directory) == os.path.realpath(SHM_DIR)
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        shown = entry.name if in_shm else entry.path
        try:
            kw: Dict[str, Any] = {"name": entry.name} if in_shm else {"path": entry.path}
            with RingBuffer(**kw) as ring:
                info = ring.info()
        except (CorruptedError, PermissionError, FileNotFoundError, ValueError):
            continue
        except OSError:
            # Anything else the kernel says about someone else's file (a
            # size it cannot map, say) also means "not one of our rings".
            continue
        rings.append({"name": shown, "kind": "ring", **info})
    return rings


def _is_topic(arg: str) -> bool:
    """Does the segment ``arg`` say it is a topic (without attaching)?"""
    try:
        kw = _ring_args(arg)
        where, flags, _ = _where(kw.get("name"), kw.get("path"))
    except ValueError:
        return False
    probe = ffi.new("struct pyipc_seg_probe *")
    return bool(lib.pyipc_seg_probe(where, flags, probe) == 0 and probe.magic_ok
                and probe.version == lib.PYIPC_LAYOUT_VERSION and probe.kind == lib.PYIPC_KIND_TOPIC)


def list_topics(directory: str = SHM_DIR) -> List[Dict[str, Any]]:
    """``info()`` of every pyipc topic in ``directory``, with its ``name`` and
    ``subscriber_info()`` as ``subscribers_detail``; other files are skipped
    as ``list_rings`` skips them."""
    topics = []
    in_shm = os.path.realpath(directory) == os.path.realpath(SHM_DIR)
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        shown = entry.name if in_shm else entry.path
        try:
            kw: Dict[str, Any] = {"name": entry.name} if in_shm else {"path": entry.path}
            with Publisher(**kw) as topic:
                info = topic.info()
                info["subscribers"] = topic.subscribers
                subs = topic.subscriber_info()
        except (CorruptedError, ValueError, OSError):
            continue
        topics.append({"name": shown, "kind": "topic", **info, "subscribers_detail": subs})
    return topics


def _open(arg: str) -> RingBuffer:
    """Attach to ring ``arg``; expected failures become one-line messages."""
    try:
        return RingBuffer(**_ring_args(arg))
    except FileNotFoundError:
        raise _OperationalError(f"no ring named {arg!r}") from None
    except CorruptedError as exc:
        raise _OperationalError(str(exc)) from None
    except PermissionError:
        raise _OperationalError(f"permission denied: {arg!r}") from None
    except IsADirectoryError:
        raise _OperationalError(f"{arg!r} is a directory, not a ring") from None


class _OperationalError(Exception):
    """An expected failure of the command itself (exit code 1)."""


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if is_path(name):
            continue
        try:
            shm_name(name)
        except ValueError as exc:
            raise _UsageError(f"invalid ring name {name!r}: {exc}") from None


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _cmd_ls(args: argparse.Namespace) -> int:
    where = args.dir or SHM_DIR
    try:
        rings = list_rings(where)
    except OSError as exc:
        raise _OperationalError(f"cannot read {where}: {exc.strerror}") from None
    topics = list_topics(where)
    for info in rings + topics:
        info["creator_alive"] = pid_alive(info["creator_pid"])
    if args.json:
        print(json.dumps(rings + topics, indent=2))
        return EXIT_OK
    if not rings and not topics:
        print(f"no pyipc rings or topics in {where}")
        return EXIT_OK
    if rings:
        _print_rings(rings)
    if topics:
        if rings:
            print()
        _print_topics(topics)
    return EXIT_OK


def _alive_word(alive: Optional[bool]) -> str:
    return "unknown" if alive is None else ("yes" if alive else "no")


def _print_topics(topics: List[Dict[str, Any]]) -> None:
    width = max(len("TOPIC"), *(len(t["name"]) for t in topics))
    print(f"{'TOPIC':<{width}}  {'CAPACITY':>10}  {'OVERFLOW':>9}  {'SUBS':>4}  {'PUBLISHED':>10}  "
          f"{'RETAINED':>9}  {'MAX LAG':>8}  {'CREATOR':>8}  ALIVE")
    for t in topics:
        lag = max((s["lag"] for s in t["subscribers_detail"]), default=0)
        print(f"{t['name']:<{width}}  {t['capacity']:>10}  {_OVERFLOW[t['overflow']]:>9}  "
              f"{t['subscribers']:>4}  {t['published']:>10}  {t['retained']:>9}  {lag:>8}  "
              f"{t['creator_pid']:>8}  {_alive_word(t['creator_alive'])}")


_OVERFLOW = {0: "block", 1: "overwrite"}


def _print_rings(rings: List[Dict[str, Any]]) -> None:
    width = max(len("NAME"), *(len(r["name"]) for r in rings))
    print(f"{'NAME':<{width}}  {'CAPACITY':>10}  {'MESSAGES':>9}  {'USED':>10}  "
          f"{'LEASES':>6}  {'CREATOR':>8}  ALIVE")
    for r in rings:
        alive = r["creator_alive"]
        print(f"{r['name']:<{width}}  {r['capacity']:>10}  {r['messages']:>9}  "
              f"{r['bytes_used']:>10}  {r['reserves'] + r['views']:>6}  {r['creator_pid']:>8}  "
              f"{'unknown' if alive is None else ('yes' if alive else 'no')}")


_SHUTDOWN = {0: "open", 1: "shut down", 2: "shut down immediately", 3: "damaged (see pyipc repair)"}


def _topic_info(args: argparse.Namespace) -> int:
    try:
        topic = Publisher(**_ring_args(args.name))
    except CorruptedError as exc:
        raise _OperationalError(str(exc)) from None
    except PermissionError:
        raise _OperationalError(f"permission denied: {args.name!r}") from None
    with topic:
        info = topic.info()
        info["subscribers"] = topic.subscribers  # dead ones detached first
        subs = topic.subscriber_info()
        name = topic.path or topic.name
    if args.json:
        print(json.dumps({"name": name, "kind": "topic", **info,
                          "creator_alive": pid_alive(info["creator_pid"]), "subscribers_detail": subs},
                         indent=2))
        return EXIT_OK
    rows = [
        ("name", str(name)),
        ("kind", "topic"),
        ("capacity", f"{info['capacity']} ({format_size(info['capacity'])})"),
        ("max_message_size", str(info["max_message_size"])),
        ("overflow", _OVERFLOW.get(info["overflow"], str(info["overflow"]))),
        ("version", str(info["version"])),
        ("shutdown", _SHUTDOWN.get(info["shutdown"], str(info["shutdown"]))),
        ("creator_pid", f"{info['creator_pid']} ({_alive_text(info['creator_pid'])})"),
        ("lock recoveries", str(info["recoveries"])),
        ("published", str(info["published"])),
        ("bytes_published", str(info["bytes_published"])),
        ("retained", str(info["retained"])),
        ("bytes_used", str(info["bytes_used"])),
        ("publish_waits", str(info["publish_waits"])),
        ("open reservations", str(info["reserves"])),
        ("subscribers", f"{info['subscribers']} of {info['max_subscribers']}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if subs:
        print()
        print(f"{'SLOT':>4}  {'LAG':>8}  {'RECEIVED':>10}  {'MISSED':>8}  {'VIEWS':>5}  {'WAITS':>8}  ALIVE")
        for sub in subs:
            alive = {1: "yes", 0: "no", 2: "unknown"}.get(sub["alive"], "?")
            print(f"{sub['slot']:>4}  {sub['lag']:>8}  {sub['received']:>10}  {sub['missed']:>8}  "
                  f"{sub['views']:>5}  {sub['waits']:>8}  {alive}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    _check_names([args.name])
    if _is_topic(args.name):
        return _topic_info(args)
    with _open(args.name) as ring:
        info = ring.info()
        stats = ring.stats()
        name = ring.path or ring.name
    if args.json:
        out = {"name": name, **info, "creator_alive": pid_alive(info["creator_pid"]),
               "stats": stats}
        print(json.dumps(out, indent=2))
        return EXIT_OK
    rows = [
        ("name", name),
        ("capacity", f"{info['capacity']} ({format_size(info['capacity'])})"),
        ("max_message_size", str(info["max_message_size"])),
    ]
    if "max_messages" in info:
        bound = info["max_messages"]
        rows.append(("max_messages", str(bound) if bound else "0 (no bound)"))
    rows += [
        ("version", str(info["version"])),
        ("shutdown", _SHUTDOWN.get(info["shutdown"], str(info["shutdown"]))),
        ("creator_pid", f"{info['creator_pid']} ({_alive_text(info['creator_pid'])})"),
        ("lock recoveries", str(info["recoveries"])),
        ("messages", str(info["messages"])),
        ("bytes_used", str(info["bytes_used"])),
        ("open reservations", str(info["reserves"])),
        ("open views", str(info["views"])),
    ]
    rows += [(key, str(value)) for key, value in stats.items()
             if key not in ("messages", "recoveries")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _cmd_rm(args: argparse.Namespace) -> int:
    _check_names(args.names)
    failed = False
    for name in args.names:
        try:
            if args.force:
                # No attach: a corrupted segment is exactly what --force is for.
                os.unlink(name if is_path(name) else os.path.join(SHM_DIR, shm_name(name)))
            elif _is_topic(name):
                with Publisher(**_ring_args(name)) as topic:
                    topic.unlink()
            else:
                with RingBuffer(**_ring_args(name)) as ring:
                    ring.unlink()
        except FileNotFoundError:
            _say(f"no ring named {name!r}")
            failed = True
        except CorruptedError:
            _say(f"{name!r} is not a valid pyipc ring (use --force to remove it anyway)")
            failed = True
        except PermissionError:
            _say(f"permission denied: {name!r}")
            failed = True
        except IsADirectoryError:
            _say(f"{name!r} is a directory, not a ring")
            failed = True
        except OSError as exc:
            _say(f"cannot remove {name!r}: {exc.strerror or exc}")
            failed = True
        else:
            if args.verbose:
                print(f"removed {name}")
    return EXIT_ERROR if failed else EXIT_OK


def _cmd_repair(args: argparse.Namespace) -> int:
    _check_names([args.name])
    topic = _is_topic(args.name)
    try:
        ring: Any = (attach_topic_for_repair if topic else attach_for_repair)(**_ring_args(args.name))
    except FileNotFoundError:
        raise _OperationalError(f"no ring named {args.name!r}") from None
    except CorruptedError as exc:
        if topic:
            raise _OperationalError(f"{args.name!r} says it is a pyipc topic but fails validation as one "
                                    "(pyipc rm --force removes it)") from None
        raise _OperationalError(f"{exc} (pyipc rm --force removes it)") from None
    except PermissionError:
        raise _OperationalError(f"permission denied: {args.name!r}") from None
    except IsADirectoryError:
        raise _OperationalError(f"{args.name!r} is a directory, not a ring") from None
    with ring:
        try:
            dropped = ring.repair()
            queued = ring.check()
        except (OSError, CorruptedError) as exc:  # a lock a live holder keeps (EBUSY)
            raise _OperationalError(getattr(exc, "strerror", None) or str(exc)) from None
    print(f"repaired {args.name}: dropped {dropped} message{'s' if dropped != 1 else ''}, "
          f"{queued} still {'retained' if topic else 'queued'}")
    return EXIT_OK


def _cmd_bench_topic(args: argparse.Namespace) -> int:
    from .bench import topic as topic_bench

    progress = None if args.quiet else (lambda s: print(f"pyipc bench --topic: {s}", file=sys.stderr))
    names = None
    if args.transports is not None:
        names = [n.strip() for n in args.transports.split(",") if n.strip()]
        unknown = [n for n in names if n not in topic_bench.CONTENDERS]
        if unknown or not names:
            raise _UsageError(f"unknown contender(s): {', '.join(unknown) or '(none given)'}; "
                              f"known: {', '.join(topic_bench.CONTENDERS)}")
    report = topic_bench.run_topic_bench(seconds=max(0.5, args.duration), repeat=args.repeat,
                                         names=names, progress=progress)
    print(topic_bench.format_topic_table(report))
    return EXIT_OK


def _cmd_bench_leases(args: argparse.Namespace) -> int:
    from .bench import leases, runner

    try:
        sizes = runner.parse_sizes(args.sizes) if args.sizes else list(leases.DEFAULT_SIZES)
    except ValueError as exc:
        raise _UsageError(f"--sizes: {exc}") from None
    if any(size % 8 for size in sizes):
        raise _UsageError("--sizes: --leases needs multiples of 8 bytes")
    names = None
    if args.transports is not None:
        names = [n.strip() for n in args.transports.split(",") if n.strip()]
        unknown = [n for n in names if n not in leases.CONTENDERS]
        if unknown or not names:
            raise _UsageError(f"unknown contender(s): {', '.join(unknown) or '(none given)'}; "
                              f"known: {', '.join(leases.CONTENDERS)}")
    progress = None if args.quiet else (lambda s: print(f"pyipc bench --leases: {s}", file=sys.stderr))
    report = leases.run_lease_bench(sizes, names=names, repeat=args.repeat, progress=progress)
    print(leases.format_lease_table(report))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        except OSError as exc:
            raise _OperationalError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return EXIT_OK


def _cmd_bench_rpc(args: argparse.Namespace) -> int:
    from .bench import rpc

    known = rpc.TCP_CONTENDERS if args.tcp else rpc.CONTENDERS
    names = None
    if args.transports is not None:
        names = [n.strip() for n in args.transports.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise _UsageError(f"unknown contender(s): {', '.join(unknown) or '(none given)'}; "
                              f"known: {', '.join(known)}")
    if args.duration <= 0:
        raise _UsageError("--duration must be a positive number of seconds")
    ignored = [flag for flag, on in (("--topic", args.topic), ("--leases", args.leases),
                                     ("--latency", args.latency), ("--async", args.async_),
                                     ("--list", args.list), ("--sizes", args.sizes),
                                     ("--plot", args.plot)) if on]
    if ignored:
        raise _UsageError(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} "
                          "not go with --rpc")
    argv = ["--duration", str(args.duration)]
    if names:
        argv += ["--only", ",".join(names)]
    if args.tcp:
        argv.append("--tcp")
    if args.json:
        argv += ["--json", args.json]
    if args.quiet:
        argv.append("--quiet")
    try:
        return rpc.main(argv)
    except OSError as exc:
        if args.json is None or exc.filename != args.json:
            raise
        raise _OperationalError(f"cannot write {exc.filename}: {exc.strerror}") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.tcp and not args.rpc:
        raise _UsageError("--tcp goes with --rpc (pyipc bench --rpc --tcp)")
    if args.rpc:
        return _cmd_bench_rpc(args)
    if args.topic:
        return _cmd_bench_topic(args)
    if args.leases:
        return _cmd_bench_leases(args)
    if args.async_:
        if not args.latency:
            raise _UsageError("--async goes with --latency (pyipc bench --latency --async)")
        from .bench import aio

        aio.main(args.repeat)
        return EXIT_OK
    from .bench import output, runner, transports

    if args.list:
        width = max(map(len, transports.TRANSPORTS)) + 2
        for t in transports.TRANSPORTS.values():
            reason = t.unavailable()
            state = "" if reason is None else f"  [unavailable: {reason}]"
            print(f"{t.name:<{width}}{t.note}{state}")
        return EXIT_OK
    if args.transports is None:
        names = list(transports.TRANSPORTS)
    else:
        names = [n.strip() for n in args.transports.split(",") if n.strip()]
        unknown = [n for n in names if n not in transports.TRANSPORTS]
        if unknown or not names:
            raise _UsageError(f"unknown transport(s): {', '.join(unknown) or '(none given)'}; "
                              f"known: {', '.join(transports.TRANSPORTS)}")
    try:
        sizes = runner.parse_sizes(args.sizes) if args.sizes else list(runner.DEFAULT_SIZES)
    except ValueError as exc:
        raise _UsageError(f"--sizes: {exc}") from None
    if args.duration <= 0:
        raise _UsageError("--duration must be a positive number of seconds")
    if args.repeat < 1:
        raise _UsageError("--repeat must be at least 1")
    # Fail before minutes of measuring, not after.
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise _OperationalError(
            "--plot needs matplotlib, which is not installed (pip install 'pyipc[plot]')")
    consumer, producer = runner.pick_cpus()
    progress = None if args.quiet else output.stderr_progress()
    if progress is not None:
        where = ("no pinning: only one CPU" if consumer is None
                 else f"producer on CPU {producer}, consumer on CPU {consumer}")
        progress(f"pyipc bench: {where}")
    report = runner.run_bench(names, sizes, args.duration, repeat=args.repeat,
                              latency=args.latency, progress=progress)
    if progress is not None and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    print(output.format_table(report))
    try:
        if args.json:
            output.write_json(report, args.json)
        if args.plot:
            output.write_plot(report, args.plot)
    except OSError as exc:
        raise _OperationalError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return EXIT_OK


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        from .rpc.keys import generate

        public, secret = generate(args.name, args.dir)
    except ImportError as exc:
        raise _OperationalError(str(exc)) from None
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    except OSError as exc:
        raise _OperationalError(f"{exc.filename or args.dir}: {exc.strerror}") from None
    print(f"public key (give it to the other side): {public}")
    print(f"secret key (mode 0600, keep it here):   {secret}")
    return EXIT_OK


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyipc",
        description="Inspect and remove pyipc rings, and benchmark pyipc's transports.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    b = sub.add_parser(
        "bench",
        help="cross-process producer/consumer benchmark",
        description=(
            "Producer and consumer in two processes pinned to two CPUs, over every "
            "transport and message size; prints msg/s, MB/s and the ratio to "
            "multiprocessing.Queue (median of --repeat runs per cell)."
        ),
    )
    b.add_argument("--transports", metavar="A,B,...",
                   help="transports to run (default: all; see --list)")
    b.add_argument("--sizes", metavar="S,S,...",
                   help="message sizes, e.g. 64,4K,1M (default: 64,4K,64K,1M)")
    b.add_argument("--duration", type=float, default=DEFAULT_DURATION, metavar="SECONDS",
                   help="producing time per cell, split over the repetitions "
                        f"(default: {DEFAULT_DURATION})")
    b.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                   help=f"runs per cell; the median is reported (default: {DEFAULT_REPEAT})")
    b.add_argument("--latency", action="store_true",
                   help=f"ping-pong round trips of {LATENCY_SIZE} B messages "
                        "(p50/p99) instead of throughput")
    b.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    b.add_argument("--plot", metavar="FILE.png",
                   help="also draw a bar chart (log scale; needs matplotlib)")
    b.add_argument("--list", action="store_true", help="list the transports and exit")
    b.add_argument("--topic", action="store_true",
                   help="broadcast instead: one publisher, 1 and 4 subscriber processes, "
                        "pyipc topics beside ZeroMQ XPUB/SUB, iceoryx2 and multiprocessing.Queue")
    b.add_argument("--leases", action="store_true",
                   help="large messages filled and summed: zero-copy leases beside copies, "
                        "Queue, iceoryx2, shared_memory and multiprocessing.Queue "
                        "(default sizes 1M,16M,64M)")
    b.add_argument("--async", dest="async_", action="store_true",
                   help="with --latency: asyncio round trips and throughput beside pyzmq's "
                        "asyncio sockets and an asyncio UNIX stream, and the idle cost of waiters")
    b.add_argument("--rpc", action="store_true",
                   help="pyipc.rpc calls (f(x) -> x; submit, acall, idle cost) beside "
                        "multiprocessing.managers, multiprocessing.connection, grpcio, Pyro5, "
                        "RPyC and pyzmq REQ/REP; each cell runs once for --duration seconds "
                        "(--transports, --json and -q apply)")
    b.add_argument("--tcp", action="store_true",
                   help="with --rpc: tcp:// on loopback, pyipc.rpc (CurveZMQ) beside grpcio "
                        "(insecure, TLS) and raw pyzmq (plain, CurveZMQ)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=_cmd_bench)

    ls = sub.add_parser("ls", help="list the pyipc rings and topics in /dev/shm (or a directory)",
                        description="List the pyipc rings in /dev/shm (or in DIR) with "
                                    "capacity, queued messages, open leases and whether "
                                    "their creator is alive, then the topics with their "
                                    "subscribers, messages published and retained, and the "
                                    "largest subscriber lag.")
    ls.add_argument("dir", nargs="?", metavar="DIR", help="a directory of rings in files")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_cmd_ls)

    info = sub.add_parser("info", help="show a ring's or a topic's header and counters",
                          description="Show a ring's header (capacity, max message size, "
                                      "version, shutdown state, creator) and its counters; "
                                      "for a topic, also each attached subscriber's lag, "
                                      "messages received and missed.")
    info.add_argument("name", metavar="NAME", help="the ring's name (leading / optional) or path")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)

    rm = sub.add_parser("rm", help="remove rings",
                        description="Remove rings by name.  Exit code 1 if any could "
                                    "not be removed.")
    rm.add_argument("names", nargs="+", metavar="NAME", help="ring names or paths")
    rm.add_argument("-f", "--force", action="store_true",
                    help="remove the name even if it is not a valid ring")
    rm.add_argument("-v", "--verbose", action="store_true", help="say what was removed")
    rm.set_defaults(func=_cmd_rm)

    rp = sub.add_parser("repair", help="make a damaged ring usable again",
                        description="Keep every queued message that validates, up to the "
                                    "first damaged one, drop the rest, and put the header "
                                    "right.  Exit code 1 if NAME is not a pyipc ring.")
    rp.add_argument("name", metavar="NAME", help="the ring's name (leading / optional) or path")
    rp.set_defaults(func=_cmd_repair)

    from .rpc.command import add_subcommands as _rpc_subcommands

    rpc = sub.add_parser("rpc", help="call pyipc.rpc servers, list them",
                         description="Call a pyipc.rpc server's methods from the shell "
                                     "(arguments are Python literals), or list named servers.")
    _rpc_subcommands(rpc)

    kg = sub.add_parser("keygen", help="make a CurveZMQ key pair for tcp:// RPC",
                        description="Write a CurveZMQ key pair in ZeroMQ's certificate format: "
                                    "NAME.key (public: give it to the other side) and "
                                    "NAME.key_secret (secret, mode 0600).  Existing files are "
                                    "never overwritten.  Needs pyipc[net].")
    kg.add_argument("name", metavar="NAME", help="the files' name, without extension")
    kg.add_argument("--dir", default=".", metavar="DIR",
                    help="where to write them (default: the current directory)")
    kg.set_defaults(func=_cmd_keygen)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pyipc`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code; never raises for expected errors.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.func(args)
        return code
    except _UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except _OperationalError as exc:
        _say(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        # What the system refused that no command foresaw: still one line.
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        return EXIT_ERROR
