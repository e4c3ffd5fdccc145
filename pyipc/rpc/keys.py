"""CurveZMQ keys for ``tcp://`` RPC: key files, and key arguments.

``pyipc keygen NAME`` (``generate()``) writes a key pair in ZeroMQ's
certificate format, the one ``zmq.auth.load_certificate`` reads:
``NAME.key`` holds the public key (hand it to the other side),
``NAME.key_secret`` both keys (mode 0600, created so: it is never readable
by others, not even for an instant).

Every key argument of ``Server`` and ``connect`` takes such a file's path
or the raw key: 40 bytes of Z85 text or 32 bytes of binary.  pyzmq is
imported only here and in the transport, and only when a ``tcp://``
address is used.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterable, List, Optional, Tuple, Union

__all__ = ["KeyArg", "require_zmq", "generate", "public_key", "secret_key", "public_keys"]

KeyArg = Union[str, "os.PathLike[str]", bytes]

_Z85_LEN = 40
_RAW_LEN = 32


def require_zmq() -> None:
    """Import pyzmq, or raise ``ImportError`` naming the extra that brings it."""
    try:
        import zmq
    except ImportError as exc:
        raise ImportError(
            "tcp:// addresses need pyzmq: pip install 'pyipc[net]'") from exc
    if not zmq.has("curve"):
        raise ImportError("this pyzmq's libzmq was built without CurveZMQ; "
                          "pip install --force-reinstall 'pyipc[net]'")


def _z85(key: bytes) -> bytes:
    """A key as 40 bytes of Z85 (what pyzmq's socket options take)."""
    from zmq.utils import z85

    if len(key) == _Z85_LEN:
        z85.decode(key)  # ValueError for text that is not Z85
        return key
    if len(key) == _RAW_LEN:
        return z85.encode(key)
    raise ValueError(f"a CurveZMQ key is 40 bytes of Z85 or 32 raw bytes, not {len(key)} bytes")


def _load(arg: KeyArg, what: str) -> Tuple[bytes, Optional[bytes]]:
    """``(public, secret or None)`` from a certificate file's path."""
    import zmq.auth

    path = os.fsdecode(arg)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} key file {path!r} (make one with `pyipc keygen NAME`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a ZeroMQ certificate: {exc}") from None
    return _z85(public), (_z85(secret) if secret else None)


def public_key(arg: KeyArg) -> bytes:
    """The Z85 public key given by ``arg``: a key file (``NAME.key``, or a
    ``NAME.key_secret``, which holds the public key too) or raw key bytes."""
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return _z85(bytes(arg))
    return _load(arg, "public")[0]


def secret_key(arg: KeyArg) -> Tuple[bytes, bytes]:
    """``(public, secret)`` in Z85 for a secret key: a ``NAME.key_secret``
    file or the raw secret key bytes (the public key is derived from it)."""
    import zmq

    if isinstance(arg, (bytes, bytearray, memoryview)):
        raw = _z85(bytes(arg))
        return zmq.curve_public(raw), raw
    public, secret = _load(arg, "secret")
    if secret is None:
        raise ValueError(f"{os.fsdecode(arg)!r} holds no secret key (pass the .key_secret file)")
    return public, secret


def public_keys(args: Iterable[KeyArg]) -> List[bytes]:
    """``public_key`` of each item; a single key or path (not a list) is a
    ``TypeError``, as an easy mistake to make."""
    if isinstance(args, (str, bytes, bytearray, os.PathLike)):
        raise TypeError("allowed_keys is a list of keys or key files, not one key")
    return [public_key(a) for a in args]


def _certificate(public: bytes, secret: Optional[bytes]) -> str:
    """A certificate in ZeroMQ's ZPL format (what ``zmq.auth`` reads)."""
    if secret is not None:
        lines = ["# pyipc CurveZMQ key pair: the secret key.  Keep this file private;",
                 "# hand out the .key file beside it instead."]
    else:
        lines = ["# pyipc CurveZMQ public key: give it to the peers that must know",
                 "# this one (a server's allowed_keys, a client's server_key)."]
    lines.append(f"# made {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    lines += ["", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate(name: str, directory: Union[str, "os.PathLike[str]"] = ".") -> Tuple[str, str]:
    """Write a new key pair as ``DIR/NAME.key`` and ``DIR/NAME.key_secret``
    (mode 0600, whatever the umask); return both paths.

    ``FileExistsError`` if either file exists (a key is never overwritten:
    servers and clients may trust it already).  ``NAME`` is a file name,
    without ``/``.
    """
    require_zmq()
    import zmq

    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"a key name is a file name without '/', not {name!r}")
    directory = os.fspath(directory)
    public_path = os.path.join(directory, name + ".key")
    secret_path = os.path.join(directory, name + ".key_secret")
    for path in (public_path, secret_path):
        if os.path.lexists(path):
            raise FileExistsError(17, "a key file is never overwritten", path)
    public, secret = zmq.curve_keypair()
    written: List[str] = []
    try:
        for path, text, mode in ((secret_path, _certificate(public, secret), 0o600),
                                 (public_path, _certificate(public, None), 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            written.append(path)
            try:
                os.fchmod(fd, mode)  # exactly `mode`: the umask may have narrowed it
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except BaseException:
        for path in written:
            os.unlink(path)
        raise
    return public_path, secret_path
