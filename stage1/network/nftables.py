"""nftables in-process through libnftables(3), the library nft(8) is built on: one script is
one kernel transaction, run without a process (a ``nft -f -`` costs 3-4 ms to start, forked
from the supervisor, for ~0.1 ms of kernel work).

The calls, as libnftables(3) documents them: ``nft_ctx_new(NFT_CTX_DEFAULT)`` (it opens the
context's NETLINK_NETFILTER socket at once, in the calling thread's network namespace),
``nft_ctx_buffer_output`` / ``nft_ctx_buffer_error`` (what nft would print to stdout / stderr,
kept for ``nft_ctx_get_output_buffer`` / ``nft_ctx_get_error_buffer``),
``nft_ctx_output_set_flags(NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE)`` for listings (as
``nft -j -a``), ``nft_run_cmd_from_buffer`` (nonzero when nft refused the script; ctypes lets
go of the GIL during the call), ``nft_ctx_free`` (closes the socket).

Three rules follow from how the library works:
- One context per call, made and freed by the calling thread: a context's socket stays in the
  namespace it was opened in, and callers run in several namespaces (a thread that entered
  another one with setns(2)), so a context is never reused. Making one costs ~0.02 ms.
- One call at a time in the process (a lock): a context is not thread-safe and the library
  keeps global state (its symbol tables, the GMP allocator).
- The socket's number stays below FD_SETSIZE (1024): the library waits on it with select(2),
  which glibc's fortified FD_SET turns into an abort of the whole process for a larger number,
  and a supervisor holding hundreds of pods holds more descriptors than that. The socket takes
  the lowest free number, so a low one is kept open on /dev/null (``_reserve``) and closed just
  before ``nft_ctx_new``; the number is checked afterwards (the socket there, or that number
  still free: the socket took a lower one) and the call refused rather than run otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import stat
import threading

from jetpack.errors import NetworkError

LIBRARY = "libnftables.so.1"  # Debian's libnftables1 (nftables depends on it)
_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3  # <nftables/libnftables.h>
_NFT_CTX_OUTPUT_JSON = 1 << 4
_FD_SETSIZE = 1024  # <sys/select.h>
_AF_NETLINK = 16  # <linux/socket.h> (the socket module has no name for it off Linux)
_NETLINK_NETFILTER = 12  # <linux/netlink.h>
_PLACING_TRIES = 3

_lock = threading.Lock()
_reserve: list[int] = []  # at most one: open on /dev/null, below FD_SETSIZE, for the next socket


class NftablesError(Exception):
    """nft refused a script, or the call could not be made safely; the text says which."""


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise NetworkError(f"{LIBRARY}: cannot load it ({exc}) (needed for pod networking)",
                           hint="install it: apt install libnftables1 (Debian)") from None
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_free.restype = None
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_int
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def run(script: str, *, listing: bool = False) -> str:
    """Run ``script`` in the calling thread's network namespace and return what nft printed
    (JSON with rule handles when ``listing``, as ``nft -j -a``); raise ``NftablesError`` with
    nft's own error message when it refuses the script (then nothing of it applied)."""
    lib = _library()
    with _lock:
        ctx = _new_context(lib)
        try:
            if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
                raise NftablesError("libnftables could not buffer its output")
            if listing:
                lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
            failed = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            out = _text(lib.nft_ctx_get_output_buffer(ctx))
            err = _text(lib.nft_ctx_get_error_buffer(ctx)).strip()
        finally:
            lib.nft_ctx_free(ctx)
            _refill()
    if failed != 0:
        raise NftablesError(err or f"nft_run_cmd_from_buffer returned {failed}")
    return out


def _text(buffer: bytes | None) -> str:
    return (buffer or b"").decode("utf-8", "replace")


def _new_context(lib: ctypes.CDLL) -> int:
    """A fresh context whose socket is known to sit below FD_SETSIZE (the lock is held)."""
    for _ in range(_PLACING_TRIES):
        slot = _take_reserve()
        os.close(slot)
        ctx: int | None = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not ctx:
            _refill()
            raise NftablesError("nft_ctx_new failed (out of memory or no netlink socket)")
        if _placed_below(slot):
            return ctx
        lib.nft_ctx_free(ctx)  # another thread took the number first; nothing ran yet
    raise NftablesError(f"its netlink socket could not be placed below FD_SETSIZE "
                        f"({_FD_SETSIZE}) in {_PLACING_TRIES} tries")


def _placed_below(slot: int) -> bool:
    """Whether the socket just made took ``slot`` or a lower number: ``slot`` holds a
    NETLINK_NETFILTER socket (only this module makes those, one at a time) or is still free."""
    try:
        mode = os.fstat(slot).st_mode
    except OSError:
        return True  # still free: the lowest free number, the socket's, was lower
    if not stat.S_ISSOCK(mode):
        return False
    probe = socket.socket(fileno=slot)
    try:
        return probe.family == _AF_NETLINK and probe.proto == _NETLINK_NETFILTER
    finally:
        probe.detach()


def _take_reserve() -> int:
    """The reserved low number (opened now if there is none): raise when none is free."""
    _refill()
    if not _reserve:
        raise NftablesError(f"no file descriptor below FD_SETSIZE ({_FD_SETSIZE}) is free for "
                            f"its netlink socket (libnftables waits on it with select(2))")
    return _reserve.pop()


def _refill() -> None:
    """Hold the lowest free number again (kept only below FD_SETSIZE); the lock is held."""
    if _reserve:
        return
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if fd < _FD_SETSIZE:
        _reserve.append(fd)
    else:
        os.close(fd)
