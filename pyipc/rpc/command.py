"""``pyipc rpc`` (also ``python -m pyipc.rpc``): poke servers from a shell.

* ``pyipc rpc call ADDRESS METHOD [ARG ...] [-k NAME=VALUE ...]`` calls a
  method and prints its result (``repr``; a stream prints one item per
  line).  Each ARG and VALUE is read as a Python literal (``3``, ``'a'``,
  ``[1, 2]``, ``None``) and otherwise taken as a string.
* ``pyipc rpc notify ADDRESS METHOD [ARG ...]`` sends a one-way call.
* For a ``tcp://`` ADDRESS, ``--server-key FILE`` (the server's public key)
  and ``--secret-key FILE`` (this client's secret key) are required: the
  key files ``pyipc keygen`` writes.
* ``pyipc rpc ls`` lists the named servers' sockets in the per-user
  directory and whether a server is listening on each.

Exit codes: 0 success, 1 the call raised or no server answered, 2 usage.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import stat
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["add_subcommands", "main", "list_servers"]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _kwargs(items: Optional[List[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"-k takes NAME=VALUE, not {item!r}")
        out[name] = _literal(value)
    return out


def list_servers() -> List[Dict[str, Any]]:
    """The sockets in the per-user directory: ``name``, ``path`` and
    ``listening`` (a server accepted a connection just now)."""
    from .local import runtime_dir

    try:
        directory = runtime_dir(create=False)
    except FileNotFoundError:
        return []
    out = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        try:
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                continue
        except OSError:
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(entry.path)
            listening = True
        except OSError:
            listening = False
        finally:
            s.close()
        out.append({"name": entry.name, "path": entry.path, "listening": listening})
    return out


def _cmd_call(args: argparse.Namespace) -> int:
    from . import RemoteIterator, connect

    try:
        kwargs = _kwargs(args.kwarg)
    except ValueError as exc:
        print(f"pyipc: {exc}", file=sys.stderr)
        return 2
    positional = [_literal(a) for a in args.args]
    if (args.server_key or args.secret_key) and not args.address.startswith("tcp://"):
        print("pyipc: --server-key and --secret-key are for tcp:// addresses", file=sys.stderr)
        return 2
    keys: Dict[str, Any] = {}
    if args.server_key is not None:
        keys["server_key"] = args.server_key
    if args.secret_key is not None:
        keys["secret_key"] = args.secret_key
    try:
        with connect(args.address, timeout=args.timeout, **keys) as client:
            if args.command == "notify":
                client.notify(args.method, *positional, **kwargs)
                return 0
            result = client.call(args.method, *positional, timeout=args.timeout, **kwargs)
            if isinstance(result, RemoteIterator):
                with result:
                    for item in result:
                        print(repr(item), flush=True)
            else:
                print(repr(result))
    except Exception as exc:
        print(f"pyipc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    servers = list_servers()
    if args.json:
        print(json.dumps(servers, indent=2))
        return 0
    if not servers:
        print("no named rpc servers")
        return 0
    width = max(len("NAME"), *(len(s["name"]) for s in servers))
    print(f"{'NAME':<{width}}  STATE")
    for s in servers:
        print(f"{s['name']:<{width}}  {'listening' if s['listening'] else 'stale'}")
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Fill ``parser`` (``pyipc rpc``) with the ``call``, ``notify`` and
    ``ls`` subcommands; each sets ``func``."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in (("call", "call a method and print its result"),
                            ("notify", "send a one-way call")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("address", metavar="ADDRESS", help="a server name, socket path or tcp://host:port")
        p.add_argument("method", metavar="METHOD")
        p.add_argument("args", nargs="*", metavar="ARG", help="arguments, as Python literals")
        p.add_argument("-k", "--kwarg", action="append", metavar="NAME=VALUE",
                       help="a keyword argument (repeatable)")
        p.add_argument("--timeout", type=float, default=10.0,
                       help="seconds for the connection and the call (default 10)")
        p.add_argument("--server-key", metavar="FILE",
                       help="tcp:// only: the server's public key file")
        p.add_argument("--secret-key", metavar="FILE",
                       help="tcp:// only: this client's secret key file")
        p.set_defaults(func=_cmd_call)
    ls = sub.add_parser("ls", help="list named servers")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_cmd_ls)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pyipc.rpc``: the same as ``pyipc rpc``."""
    parser = argparse.ArgumentParser(prog="python -m pyipc.rpc",
                                     description="Call pyipc.rpc servers from the shell.")
    add_subcommands(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    code: int = args.func(args)
    return code
