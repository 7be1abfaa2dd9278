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
  the lowest free number. When that is below 1024 the call runs in the caller's thread (the
  number is checked after ``nft_ctx_new``: the socket must be there); otherwise, or when
  another thread took the number first, it runs in a short-lived thread of its own with a
  private copy of the descriptor table (unshare(2) CLONE_FILES; a new thread starts in its
  creator's network namespace), where closing the copy of a low number frees it for the socket
  without touching the process's own descriptors (the copies hold their files open until the
  thread ends with the call: a pipe closed meanwhile sees its end of file that much later).
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import stat
import threading

from jetpack.errors import NetworkError
from jetpack.stage1.own_thread import in_own_thread

LIBRARY = "libnftables.so.1"  # Debian's libnftables1 (nftables depends on it)
_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_HANDLE = 1 << 3  # <nftables/libnftables.h>
_NFT_CTX_OUTPUT_JSON = 1 << 4
_FD_SETSIZE = 1024  # <sys/select.h>
_AF_NETLINK = 16  # <linux/socket.h> (the socket module has no name for it off Linux)
_NETLINK_NETFILTER = 12  # <linux/netlink.h>
_CLONE_FILES = 0x400  # <sched.h>

_lock = threading.Lock()


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
        try:
            ctx = _context_here(lib)
            if ctx is None:  # no low number free here: a thread with a table of its own
                return in_own_thread(lambda: _run_apart(lib, script, listing),
                                     "jetpack libnftables")
        except OSError as exc:  # EMFILE and the like, around the library's socket
            raise NftablesError(f"libnftables: {exc.strerror or exc}") from None
        return _run(lib, ctx, script, listing)


def _run(lib: ctypes.CDLL, ctx: int, script: str, listing: bool) -> str:
    """Run ``script`` with ``ctx`` (freed here) and return its output or raise its error."""
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
    if failed != 0:
        raise NftablesError(err or f"nft_run_cmd_from_buffer returned {failed}")
    return out


def _text(buffer: bytes | None) -> str:
    return (buffer or b"").decode("utf-8", "replace")


def _new_context(lib: ctypes.CDLL) -> int:
    ctx: int | None = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
    if not ctx:
        raise NftablesError("nft_ctx_new failed (out of memory or no netlink socket)")
    return ctx


def _context_here(lib: ctypes.CDLL) -> int | None:
    """A context made in this thread whose socket sits below FD_SETSIZE, or None when the
    lowest free number is not below 1024 or the socket did not land on it."""
    slot = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(slot)
    if slot >= _FD_SETSIZE:
        return None
    ctx = _new_context(lib)
    if _placed_below(slot):
        return ctx
    lib.nft_ctx_free(ctx)  # nothing ran on it yet: no select(2)
    return None


def _run_apart(lib: ctypes.CDLL, script: str, listing: bool) -> str:
    """``_run`` in this (new, short-lived) thread after giving it a descriptor table of its
    own with a number below FD_SETSIZE free: its copy of 1023 closed when none is."""
    if _libc().unshare(_CLONE_FILES) != 0:
        reason = os.strerror(ctypes.get_errno())
        raise NftablesError(f"unshare(CLONE_FILES) for a netlink socket below FD_SETSIZE: "
                            f"{reason}")
    probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(probe)
    if probe >= _FD_SETSIZE:
        os.close(_FD_SETSIZE - 1)  # only this thread's copy: the process keeps its own
    return _run(lib, _new_context(lib), script, listing)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _placed_below(slot: int) -> bool:
    """Whether the socket just made took ``slot``: it holds a NETLINK_NETFILTER socket (only
    this module makes those, one at a time). Anything else, even ``slot`` free (another thread
    may have held it for a moment), leaves the socket's number unknown."""
    try:
        mode = os.fstat(slot).st_mode
    except OSError:
        return False
    if not stat.S_ISSOCK(mode):
        return False
    try:
        probe = socket.socket(fileno=slot)
    except OSError:  # closed again meanwhile: someone else's, so the socket may be anywhere
        return False
    try:
        return probe.family == _AF_NETLINK and probe.proto == _NETLINK_NETFILTER
    finally:
        probe.detach()
