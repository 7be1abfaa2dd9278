"""The Linux helper executable: makes a pod's namespaces, and builds and runs one app in them.

Forked by linux.py's fork server (forkserver.py) for sandbox and app, run as a fresh interpreter
for enter; never forked from the trio supervisor, whose threads make fork unsafe. Imports only
the standard library and stage2, so it starts fast; nothing is imported after pivot_root, where
only the app's rootfs is visible.

    sandbox RUN_DIR HOSTNAME          new uts/ipc/net namespaces, kept by bind mounts in RUN_DIR/ns
    app LAUNCH_JSON REPORT_FD GO_FD   one app: its own mount and pid namespace, pod's uts/ipc/net
    enter ENTER_JSON [SOCKET_FD]      a command inside a running app (exec, console; on a pty
                                      of the pod's, its master sent over SOCKET_FD)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Any, Literal

from jetpack.errors import IsolationError, ValidationError
from jetpack.stage1 import linux_sys as sysc
from jetpack.stage1.apply import CgroupJoin, isolated_launcher, join_cgroups
from jetpack.stage1.devices import POD_DEVICES
from jetpack.stage1.identity import pidfd_open, process_start_time
from jetpack.stage2.executor import Executor, Output, RotatingLog, write_status
from jetpack.stage2.paths import make_in_root, open_entry, open_root, open_without_symlinks
from jetpack.stage2.plan import ExecPlan
from jetpack.stage2.status import ExitStatus

POD_NAMESPACES = {"uts": sysc.CLONE_NEWUTS, "ipc": sysc.CLONE_NEWIPC, "net": sysc.CLONE_NEWNET}

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

# (name, major, minor): the minimal /dev of ace.md and the OCI runtime spec; the pod's device
# cgroup allows exactly these (devices.py).
_DEVICES = POD_DEVICES
_DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))

# runc's default spec (libcontainer/specconv/example.go, ReadonlyPaths and MaskedPaths), plus
# Docker's /sys/devices/virtual/powercap (energy counters, a side channel). Read-only: what a
# pod could use to write host-wide kernel state (kernel.core_pattern runs a binary as host root).
# Masked: what leaks host memory, keys or timing. Paths the kernel lacks are skipped.
_PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")
_PROC_MASKED = ("acpi", "asound", "kcore", "keys", "latency_stats", "timer_list", "timer_stats",
                "sched_debug", "scsi")
_SYS_MASKED = ("firmware", "devices/virtual/tpm", "devices/virtual/powercap")
_PROC_FLAGS = sysc.MS_NOSUID | sysc.MS_NODEV | sysc.MS_NOEXEC


# --- sandbox -------------------------------------------------------------------------------------

def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def create_sandbox(run_dir: Path, hostname: str) -> None:
    """Unshare the pod namespaces and pin each with a bind mount, so no process must hold them.

    Run by a thread of the supervisor that ends with it (LinuxDriver): the namespaces are the
    calling thread's, hence /proc/thread-self."""
    ns_dir = run_dir / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True)
    sysc.unshare(sysc.CLONE_NEWUTS | sysc.CLONE_NEWIPC | sysc.CLONE_NEWNET)
    socket.sethostname(hostname)
    loopback_up()
    for kind in POD_NAMESPACES:
        holder = ns_dir / kind
        holder.touch()
        sysc.mount(f"/proc/thread-self/ns/{kind}", str(holder), None, sysc.MS_BIND)


# --- app -----------------------------------------------------------------------------------------

def join_pod_namespaces(namespaces: dict[str, str]) -> None:
    for kind, path in namespaces.items():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sysc.setns(fd, POD_NAMESPACES[kind])
        finally:
            os.close(fd)


def _mount_dev(rootfs: Path) -> None:
    dev = rootfs / "dev"
    dev.mkdir(exist_ok=True)
    sysc.mount("tmpfs", str(dev), "tmpfs", sysc.MS_NOSUID | sysc.MS_NOEXEC, "mode=755,size=64k")
    for name, major, minor in _DEVICES:
        node = dev / name
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)  # noqa: S103 - these devices are world-usable by design; mknod applied the umask
    (dev / "pts").mkdir()
    sysc.mount("devpts", str(dev / "pts"), "devpts", sysc.MS_NOSUID | sysc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620")
    (dev / "shm").mkdir()
    sysc.mount("shm", str(dev / "shm"), "tmpfs", sysc.MS_NOSUID | sysc.MS_NODEV | sysc.MS_NOEXEC,
               "mode=1777,size=65536k")
    for name, target in _DEV_LINKS:
        (dev / name).symlink_to(target)


def _mask(path: Path, null: Path) -> None:
    """Hide ``path`` as runc does: /dev/null over a file, an empty read-only tmpfs over a
    directory; a path this kernel lacks needs nothing."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(found.st_mode):
        sysc.mount("tmpfs", str(path), "tmpfs", sysc.MS_RDONLY | _PROC_FLAGS, "mode=555")
    elif not stat.S_ISLNK(found.st_mode):
        sysc.mount(str(null), str(path), None, sysc.MS_BIND)


def _make_read_only(path: Path) -> None:
    """A read-only bind of ``path`` over itself (in a fresh /proc, which has no submounts)."""
    if not os.path.lexists(path) or path.is_symlink():
        return
    sysc.mount(str(path), str(path), None, sysc.MS_BIND)
    _remount_bind(path, sysc.MS_RDONLY)


def _remount_bind(path: Path, flags: int) -> None:
    """Add ``flags`` to the bind mount at ``path``, keeping the ones it has: a bind remount
    replaces them all, and must not drop a nosuid or noexec the host set."""
    kept = os.statvfs(path).f_flag & (os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC)
    sysc.mount(None, str(path), None, sysc.MS_BIND | sysc.MS_REMOUNT | kept | flags)


def _mount_proc(rootfs: Path) -> None:
    """A fresh /proc for the app's pid namespace, its host-wide knobs read-only, its leaks
    masked (with the /dev/null of the pod's /dev, so _mount_dev comes first)."""
    proc = rootfs / "proc"
    proc.mkdir(exist_ok=True)
    sysc.mount("proc", str(proc), "proc", _PROC_FLAGS)
    for name in _PROC_READ_ONLY:
        _make_read_only(proc / name)
    for name in _PROC_MASKED:
        _mask(proc / name, rootfs / "dev" / "null")


def _mount_sys(rootfs: Path) -> None:
    target = rootfs / "sys"
    target.mkdir(exist_ok=True)
    flags = sysc.MS_RDONLY | _PROC_FLAGS
    try:
        # A fresh sysfs (of the pod's net namespace) has no submounts: /sys/fs/cgroup is an
        # empty directory of this read-only mount.
        sysc.mount("sysfs", str(target), "sysfs", flags)
    except OSError:
        # sysfs may refuse a fresh mount (a locked-down host): a read-only bind of the host's,
        # without its submounts (the host's cgroup hierarchies would stay writable under it).
        sysc.mount("/sys", str(target), None, sysc.MS_BIND)
        sysc.mount(None, str(target), None, sysc.MS_BIND | sysc.MS_REMOUNT | flags)
    for name in _SYS_MASKED:
        _mask(target / name, rootfs / "dev" / "null")


def _mount_volume(rootfs: Path, mount: dict[str, Any]) -> bool:
    """Bind a volume onto its mount point, both held as descriptors from start to end: the
    source opened without following a symlink (ace.md refuses any on a host source's path), the
    target resolved inside the rootfs (CVE-2021-30465: never a path again that the pod could
    have swapped for a symlink meanwhile). True when it masks a non-empty directory."""
    try:
        source = (open_without_symlinks(Path(mount["source"])) if mount.get("kind") != "empty"
                  else open_entry(Path(mount["source"])))
    except OSError as exc:
        raise IsolationError(f"volume {mount['volume']}: cannot open its source "
                             f"{mount['source']}: {exc.strerror}") from None
    try:
        source_mode = os.fstat(source).st_mode
        if stat.S_ISLNK(source_mode):
            raise IsolationError(f"volume {mount['volume']}: its source {mount['source']} "
                                 "is a symbolic link")
        kind: Literal["dir", "file"] = "dir" if stat.S_ISDIR(source_mode) else "file"
        root = open_root(rootfs)
        try:
            target = make_in_root(root, mount["target"], kind)
        except (NotADirectoryError, FileExistsError):
            raise IsolationError(f"mount point {mount['target']} of volume {mount['volume']} "
                                 "goes through a file") from None
        finally:
            os.close(root)
        try:
            if stat.S_ISDIR(os.fstat(target).st_mode) != (kind == "dir"):
                want, have = ("directory", "file") if kind == "dir" else ("file", "directory")
                raise IsolationError(f"mount point {mount['target']} is a {have}, volume "
                                     f"{mount['volume']} is a {want}")
            masks = kind == "dir" and _non_empty(target)
            # nodev: a volume is no way to bring device nodes in, unless the admin named a
            # device node itself as the source.
            device = stat.S_ISCHR(source_mode) or stat.S_ISBLK(source_mode)
            attrs = (0 if device else sysc.MOUNT_ATTR_NODEV) \
                | (sysc.MOUNT_ATTR_RDONLY if mount["read_only"] else 0)
            _bind_volume(source, target, recursive=bool(mount["recursive"]), attrs=attrs)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return masks


def _non_empty(directory: int) -> bool:
    """Whether the directory held by ``directory`` (an O_PATH descriptor) has any entry."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
    try:
        return bool(os.listdir(fd))
    finally:
        os.close(fd)


def _bind_volume(source: int, target: int, *, recursive: bool, attrs: int) -> None:
    """A copy of the mount tree at ``source``, with ``attrs`` added to every mount in it (each
    keeps its own nosuid/noexec/...), attached on ``target``; never visible without them."""
    try:
        tree = sysc.open_tree(source, sysc.OPEN_TREE_CLONE | (sysc.AT_RECURSIVE if recursive
                                                               else 0))
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        _bind_volume_by_remount(source, target, recursive=recursive, attrs=attrs)
        return
    try:
        try:
            if attrs:
                sysc.mount_setattr(tree, attrs)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            os.close(tree)
            tree = -1
            _bind_volume_by_remount(source, target, recursive=recursive, attrs=attrs)
            return
        sysc.move_mount(tree, target)
    finally:
        if tree >= 0:
            os.close(tree)


_ST_TO_MS = ((os.ST_NOSUID, sysc.MS_NOSUID), (os.ST_NODEV, sysc.MS_NODEV),
             (os.ST_NOEXEC, sysc.MS_NOEXEC), (os.ST_NOATIME, sysc.MS_NOATIME),
             (os.ST_NODIRATIME, sysc.MS_NODIRATIME), (os.ST_RELATIME, sysc.MS_RELATIME))
_ATTR_TO_MS = ((sysc.MOUNT_ATTR_RDONLY, sysc.MS_RDONLY), (sysc.MOUNT_ATTR_NODEV, sysc.MS_NODEV))


def _bind_volume_by_remount(source: int, target: int, *, recursive: bool, attrs: int) -> None:
    """Kernels before 5.12: bind through /proc/self/fd, then remount each mount of the new
    tree with the flags it already has (a remount replaces them all: without them a nosuid
    source would turn suid) plus ``attrs``."""
    sysc.mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{target}", None,
               sysc.MS_BIND | (sysc.MS_REC if recursive else 0))
    extra = sum(ms for attr, ms in _ATTR_TO_MS if attrs & attr)
    if not extra:
        return
    top = os.readlink(f"/proc/self/fd/{target}")
    for point in _mount_points_under(top):
        kept = os.statvfs(point).f_flag
        flags = sum(ms for st, ms in _ST_TO_MS if kept & st)
        sysc.mount(None, point, None, sysc.MS_BIND | sysc.MS_REMOUNT | flags | extra)


def _mount_points_under(top: str) -> list[str]:
    """Mount points at or below ``top`` in this mount namespace, parents first."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t") \
                .replace("\\012", "\n").replace("\\134", "\\")
            if point == top or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=len)


def build_rootfs(launch: dict[str, Any]) -> list[str]:
    """Every mount the app sees, made in its fresh mount namespace, then pivot_root into it.
    Returns the warnings for the user: volumes that mask files of the image (ace.md)."""
    app = launch["app"]  # the app's AppSpec as JSON (stage1/base.py)
    rootfs = Path(app["rootfs"])
    # Nothing we mount may propagate back to the host (a shared / would carry it).
    sysc.mount(None, "/", None, sysc.MS_REC | sysc.MS_PRIVATE)
    sysc.mount(str(rootfs), str(rootfs), None, sysc.MS_BIND | sysc.MS_REC)
    # nodev: a device node an image ships or the app makes in its tree opens nothing; devices
    # live only in the /dev built below (and the device cgroup bounds even those).
    _remount_bind(rootfs, sysc.MS_NODEV)
    _mount_dev(rootfs)
    _mount_proc(rootfs)
    _mount_sys(rootfs)
    masking = [f"volume {mount['volume']} masks the existing files at {mount['target']}"
               for mount in launch["mounts"] if _mount_volume(rootfs, mount)]
    if app["read_only_rootfs"]:
        _remount_bind(rootfs, sysc.MS_RDONLY)
    pivot_into(rootfs)
    return masking


def pivot_into(rootfs: Path) -> None:
    """runc's pivot_root(".", "."): the old root is stacked on the new one and detached, so no
    directory is needed for it and nothing of the host stays reachable."""
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        try:
            sysc.pivot_root(".", ".")
        except OSError as exc:
            # No chroot instead: the host's root would stay mounted under the app, one chroot
            # escape away (runc refuses the same way unless told --no-pivot).
            raise IsolationError(
                f"cannot pivot_root into {rootfs}: {os.strerror(exc.errno or 0)}",
                hint="the host's / must be a real mount (not an initramfs root); boot with "
                     "a root filesystem or run jetpack from one") from None
        os.fchdir(old_root)
        sysc.umount2(".", sysc.MNT_DETACH)
        os.chdir("/")
    finally:
        os.close(old_root)
        os.close(new_root)


def _report(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (line.replace("\n", " ") + "\n").encode())


def _note_exit(go_fd: int, status: ExitStatus) -> None:
    """Send the supervisor the status just written, on the socket go came on: its ``wait``
    answers without waiting for this process to finish exiting (monitor.SocketExitNote). No
    one listening (a supervisor restarted since) is no error: the status file says it."""
    with contextlib.suppress(OSError), socket.socket(fileno=go_fd) as go:
        go.send(json.dumps(status.to_json()).encode() + b"\n", socket.MSG_NOSIGNAL)


def run_app(launch_path: str, report_fd: int, go_fd: int, *, pid_one: int | None = None
            ) -> int:
    """The helper of one app: joins the pod's namespaces, makes the app's mount and pid
    namespaces and forks the monitor, pid 1 of the latter. With ``pid_one`` this process is
    that monitor already (forkserver.py made it in advance, pid 1 of a new pid namespace, and
    ``pid_one`` its pid on the host): it joins and makes the rest, and runs the app itself."""
    launch = json.loads(Path(launch_path).read_text())
    plan = ExecPlan.from_json(launch["plan"])
    status_fd = os.open(launch["status_path"], os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                        0o640)
    stdio: dict[str, int] | None = launch.get("stdio")
    log = None
    if stdio is None:
        log_dir = os.open(launch["log_dir"], os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        log = RotatingLog(log_dir, launch["log_name"], launch["app"]["log_max_bytes"])
    try:
        join_pod_namespaces(launch["namespaces"])
        sysc.unshare(sysc.CLONE_NEWNS | (sysc.CLONE_NEWPID if pid_one is None else 0))
    except (OSError, IsolationError) as exc:
        _report(report_fd, f"error joining the pod's namespaces: {exc}")
        return 1
    if pid_one is None:
        pid = os.fork()
        if pid:
            _report(report_fd, f"pid {pid}")
            return 0
    else:
        _report(report_fd, f"pid {pid_one}")
    # The child: pid 1 of the app's pid namespace, its monitor until the end. Its signal
    # handlers go in first: a SIGTERM that arrives while it builds the rootfs is remembered
    # (the app is then never started) instead of being dropped, as pid 1 drops unhandled ones.
    code = 127
    try:
        if log is not None:
            output = Output.to_log(log)
        else:
            assert stdio is not None
            output = Output(stdio["stdin"], stdio["stdout"], stdio["stderr"])
        try:
            # Into the pod's cgroups while the rootfs is built (CgroupJoin: the kernel makes
            # the first move wait for an RCU grace period); waited for before any fork.
            cgroups = CgroupJoin(launch.get("cgroup_dirs") or [])
            launcher = isolated_launcher(launch["app"]["isolators"] or {})
        except (OSError, IsolationError, ValidationError) as exc:  # a syscall name unknown here
            _report(report_fd, f"error applying the app's isolators: {exc}")
            write_status(status_fd, ExitStatus(code=127, failed=f"isolators: {exc}"))
            return 127
        executor = Executor(plan, launcher, output, prepare=launcher.prepare)
        try:
            masking = build_rootfs(launch)
        except (OSError, IsolationError) as exc:
            _report(report_fd, f"error setting up the app's rootfs: {exc}")
            write_status(status_fd, ExitStatus(code=127, failed=f"rootfs: {exc}"))
            return 127
        try:
            cgroups.wait()
        except IsolationError as exc:
            _report(report_fd, f"error applying the app's isolators: {exc}")
            write_status(status_fd, ExitStatus(code=127, failed=f"isolators: {exc}"))
            return 127
        for warning in masking:
            output.message(warning)
        # The app's process, forked now (in the rootfs and the cgroups already), confines
        # itself while the supervisor readies its go: go only lets it load seccomp and exec.
        executor.prepare()
        _report(report_fd, "ready")
        os.close(report_fd)
        if not os.read(go_fd, 1):
            executor.cancel()  # it exits unexec'd, reaped
            write_status(status_fd, ExitStatus(code=127, failed="start cancelled"))
            return 127
        status = executor.run()
        write_status(status_fd, status)
        _note_exit(go_fd, status)
        code = status.code if status.code is not None else 128 + (status.signal or 0)
    finally:
        os._exit(code)  # never return into the caller's stack in a forked child


# --- enter ---------------------------------------------------------------------------------------

_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_PTMX = os.makedev(5, 2)


def open_pod_terminal(sock_fd: int) -> int:
    """A new pty of the pod's own devpts (we stand in its mount namespace): the master goes to
    jetpack over ``sock_fd``, which relays it; the slave, returned, is the command's stdio."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(master)
        if not stat.S_ISCHR(info.st_mode) or info.st_rdev != _PTMX:
            raise IsolationError("the pod's /dev/pts/ptmx is not a pty multiplexer")
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        with socket.socket(fileno=sock_fd) as sock:
            socket.send_fds(sock, [b"t"], [master])
        return slave
    finally:
        os.close(master)


def enter_app(enter_path: str, terminal_socket: int | None = None) -> int:
    """A command inside a running app, with exactly the app's confinement: its cgroups, its
    isolator plan (capabilities, seccomp, no_new_privs) and a session of its own; on a pty of
    the pod's when ``terminal_socket`` is given."""
    spec = json.loads(Path(enter_path).read_text())
    plan = ExecPlan.from_json(spec["plan"])
    pidfd = pidfd_open(spec["pid"])
    if process_start_time(spec["pid"]) != spec["start_time"]:
        print(f"jetpack: app {plan.app_name} is not running", file=sys.stderr)
        return 1
    join_cgroups(spec.get("cgroup_dirs") or [])  # the host's paths: before setns
    launcher = isolated_launcher(spec.get("isolators") or {})
    # One setns on the pidfd joins all five atomically (Linux 5.8+); the mount namespace brings
    # the app's root and cwd with it.
    sysc.setns(pidfd, sysc.CLONE_NEWNS | sysc.CLONE_NEWPID | sysc.CLONE_NEWUTS
               | sysc.CLONE_NEWIPC | sysc.CLONE_NEWNET)
    os.close(pidfd)
    output = Output(0, 1, 2)
    if terminal_socket is not None:
        slave = open_pod_terminal(terminal_socket)
        output = Output(slave, slave, slave)
    executor = Executor(plan, launcher, output)
    status = executor.run()
    if status.signal is not None:
        signal.signal(status.signal, signal.SIG_DFL)
        os.kill(os.getpid(), status.signal)
    return status.code if status.code is not None else 1


def main(argv: list[str], *, pid_one: int | None = None) -> int:
    command, *args = argv
    try:
        if command == "sandbox":
            create_sandbox(Path(args[0]), args[1])
            return 0
        if command == "app":
            return run_app(args[0], int(args[1]), int(args[2]), pid_one=pid_one)
        if command == "enter":
            return enter_app(args[0], int(args[1]) if len(args) > 1 else None)
    except (OSError, IsolationError) as exc:
        print(f"jetpack stage1: {command}: {exc}", file=sys.stderr)
        return 1
    print(f"jetpack stage1: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
