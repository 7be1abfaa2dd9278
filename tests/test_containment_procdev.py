"""Containment of /proc, /sys and devices (issue 15, items 1 and 2, and the pivot_root fallback):
each attack runs from inside a real default pod (busybox, root, the default isolators) and must
fail while the legitimate use of the same files keeps working. Also the device filter itself: the
v1 devices cgroup a pod gets, and the cgroup v2 eBPF program (run for real on this host's
unified hierarchy, and its decisions checked instruction by instruction)."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jetpack.errors import IsolationError
from jetpack.stage1 import cgroups, devices, linux_init
from jetpack.stage1.cgroups import Limits, PodCgroup

from acis import aci_from_entries, dir_entry, manifest, manifest_entry
from conftest import REPO, require
from podhost import Host, run_sh

pytestmark = [pytest.mark.root, pytest.mark.busybox]


def lines_with(prefix: str, output: str) -> dict[str, str]:
    """``prefix name=value`` lines the pod printed, as {name: value}."""
    found = {}
    for line in output.splitlines():
        if line.startswith(prefix + " "):
            name, _, value = line[len(prefix) + 1:].partition("=")
            found[name] = value
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- /proc and /sys ------------------------------------------------------------------------------

HOST_KNOBS = ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/swappiness")


@pytest.fixture
def host_knobs() -> Iterator[dict[str, str]]:
    """The host's values of the sysctls the attack aims at, put back if the attack got through."""
    before = {path: Path(path).read_text() for path in HOST_KNOBS}
    yield before
    for path, value in before.items():
        if Path(path).read_text() != value:
            Path(path).write_text(value)


def test_attack_write_host_sysctls_through_proc_fails(host: Host,
                                                       host_knobs: dict[str, str]) -> None:
    host.start()
    script = (
        'w() { if echo "$2" > "$1"; then echo "write $1=ok"; else echo "write $1=refused"; fi; }; '
        'w /proc/sys/kernel/core_pattern "|/bin/sh -c pwned-by-a-pod"; '
        'w /proc/sys/vm/swappiness 7; '
        'w /proc/sys/vm/drop_caches 1; '
        'w /proc/sysrq-trigger h; '
        'echo "read hostname=$(cat /proc/sys/kernel/hostname)"; '
        'echo "read uptime=$(wc -w < /proc/uptime)"; '
        'echo "read ps=$(ps | grep -c sleep)"')
    out = run_sh(host, f"sleep 60 & {script}", "--name", "knobs", check=False)
    writes = lines_with("write", out.stdout)
    assert writes == {"/proc/sys/kernel/core_pattern": "refused",
                      "/proc/sys/vm/swappiness": "refused",
                      "/proc/sys/vm/drop_caches": "refused",
                      "/proc/sysrq-trigger": "refused"}, out.stdout + out.stderr
    assert "Read-only file system" in out.stdout + out.stderr
    for path, value in host_knobs.items():
        assert Path(path).read_text() == value, f"the pod changed the host's {path}"
    # /proc itself still works: the pod's sysctls read, its processes list.
    reads = lines_with("read", out.stdout)
    assert reads["hostname"] == "knobs"
    assert reads["uptime"] == "2"
    assert int(reads["ps"]) >= 1


def test_attack_read_kernel_memory_keys_and_timers_gets_nothing(host: Host) -> None:
    host.start()
    masked_files = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
    masked_dirs = [p for p in ("/proc/acpi", "/proc/scsi", "/sys/firmware") if Path(p).is_dir()]
    script = " ".join(
        [f'echo "file {p}=$(cat {p} | wc -c) rc=$?";' for p in masked_files]
        + [f'echo "dir {p}=$(ls -A {p} | wc -l)";' for p in masked_dirs]
        + ['echo "meminfo=$(grep -c MemTotal /proc/meminfo)";',
           'echo "cpuinfo=$(grep -c processor /proc/cpuinfo)";',
           'echo "netdev=$(ls /sys/class/net | tr "\\n" " ")";'])
    out = run_sh(host, script, check=False)
    assert out.returncode == 0, out.stderr
    # Masked: /dev/null over the file (read succeeds, empty), an empty tmpfs over the directory.
    assert lines_with("file", out.stdout) == dict.fromkeys(masked_files, "0 rc=0"), out.stdout
    assert lines_with("dir", out.stdout) == dict.fromkeys(masked_dirs, "0"), out.stdout
    assert Path("/proc/timer_list").read_text()  # the host has something to hide
    assert "meminfo=1" in out.stdout
    assert "cpuinfo=0" not in out.stdout
    assert "lo" in out.stdout.split("netdev=")[1].split()


def test_attack_write_sys_or_cgroupfs_fails(host: Host) -> None:
    host.start()
    script = (
        'mkdir /sys/fs/cgroup/pwned 2>&1; echo "mkdir cgroup rc=$?"; '
        'touch /sys/pwned 2>&1; echo "touch sys rc=$?"; '
        'echo 1 > /sys/kernel/profiling 2>&1; echo "write profiling rc=$?"; '
        'echo "cgroupfs=$(ls -A /sys/fs/cgroup | wc -l)"; '
        'echo "mounts=$(grep -c " /sys" /proc/self/mounts)"; '
        'grep " /sys " /proc/self/mounts; '
        'echo "lo=$(cat /sys/class/net/lo/mtu)"')
    out = run_sh(host, script, check=False)
    assert "mkdir cgroup rc=1" in out.stdout, out.stdout
    assert "touch sys rc=1" in out.stdout, out.stdout
    assert "write profiling rc=1" in out.stdout, out.stdout
    assert out.stdout.count("Read-only file system") >= 2, out.stdout
    # No cgroup hierarchy is mounted under the pod's /sys: an empty directory of read-only sysfs.
    assert "cgroupfs=0" in out.stdout
    (sys_line,) = [line for line in out.stdout.splitlines() if line.startswith("sysfs /sys ")]
    assert set(sys_line.split()[3].split(",")) >= {"ro", "nosuid", "nodev", "noexec"}
    assert "lo=65536" in out.stdout  # reading sysfs works


_FALLBACK = """
import errno, json, os, sys
from pathlib import Path
from jetpack.stage1 import linux_init, linux_sys as sysc

rootfs, probe = Path(sys.argv[1]), Path(sys.argv[2])
sysc.unshare(sysc.CLONE_NEWNS)
sysc.mount(None, "/", None, sysc.MS_REC | sysc.MS_PRIVATE)
real_mount = sysc.mount

def no_fresh_sysfs(source, target, fstype, flags=0, data=None):
    if fstype == "sysfs":
        raise OSError(errno.EPERM, "sysfs: refused (as on a locked-down host)")
    real_mount(source, target, fstype, flags, data)

sysc.mount = no_fresh_sysfs
linux_init._mount_dev(rootfs)
linux_init._mount_sys(rootfs)
try:
    os.mkdir(probe)
    made = "made"
except OSError as exc:
    made = errno.errorcode[exc.errno]
mounts = [line.split()[1] for line in open("/proc/self/mounts") if str(rootfs) in line]
print(json.dumps({"made": made, "mounts": mounts}))
"""


def test_attack_sys_fallback_bind_carries_no_writable_cgroupfs(root: None,
                                                               tmp_path: Path) -> None:
    """Where sysfs refuses a fresh mount, the host's /sys is bound instead: without its
    submounts, so the host's cgroup hierarchies are not writable under the pod's /sys."""
    controller = next((c for c in ("pids", "memory", "cpu")
                       if Path(f"/sys/fs/cgroup/{c}/cgroup.procs").exists()), None)
    require(controller is not None, "a v1 cgroup hierarchy under /sys/fs/cgroup")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    name = f"jetpack-procdev-probe-{uuid.uuid4().hex[:8]}"
    probe = rootfs / "sys/fs/cgroup" / str(controller) / name
    try:
        out = subprocess.run([sys.executable, "-c", _FALLBACK, str(rootfs), str(probe)],
                             env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)
        assert found["made"] in ("ENOENT", "EROFS"), found
        assert not any("/sys/fs/cgroup" in m for m in found["mounts"]), found["mounts"]
        assert str(rootfs / "sys") in found["mounts"]  # the bind itself is there
    finally:
        leaked = Path("/sys/fs/cgroup") / str(controller) / name
        if leaked.exists():
            leaked.rmdir()


# --- devices -------------------------------------------------------------------------------------

def host_block_device() -> tuple[int, int] | None:
    """(major, minor) of a real disk of this host (not a loop device), if it has one."""
    for entry in sorted(Path("/sys/block").iterdir()):
        if not entry.name.startswith(("loop", "ram", "zram")):
            major, minor = (entry / "dev").read_text().split(":")
            return int(major), int(minor)
    return None


def test_attack_mknod_host_devices_then_open_fails(host: Host) -> None:
    host.start()
    disk = host_block_device()
    block = (f'mknod /dev/disk b {disk[0]} {disk[1]} && echo "made disk"; '
             'head -c 512 /dev/disk > /dev/null; echo "open disk rc=$?"; ' if disk else "")
    script = (
        'mknod /dev/tty0 c 4 0 && echo "made tty0"; '
        'true < /dev/tty0; echo "open tty0 rc=$?"; '
        'mknod /tmp/tty0 c 4 0 && echo "made tmp-tty0"; '
        'true < /tmp/tty0; echo "open tmp-tty0 rc=$?"; '
        + block +
        # the allowed devices still work, a node made for one of them too
        'echo x > /dev/null && echo "ok null"; '
        'test "$(head -c 3 /dev/zero | wc -c)" = 3 && echo "ok zero"; '
        'test "$(head -c 16 /dev/urandom | wc -c)" = 16 && echo "ok urandom"; '
        'test "$(head -c 16 /dev/random | wc -c)" = 16 && echo "ok random"; '
        'echo x 2>/dev/null > /dev/full || echo "ok full"; '
        'true < /dev/ptmx && echo "ok ptmx"; '
        'mknod /dev/null2 c 1 3 && echo x > /dev/null2 && echo "ok null2"')
    out = run_sh(host, script, check=False)
    text = out.stdout + out.stderr
    # CAP_MKNOD stays (appc's default set): making the node works, opening it does not.
    assert "made tty0" in text, text
    assert "made tmp-tty0" in text, text
    assert "open tty0 rc=1" in text, text  # the device cgroup: EPERM
    assert "can't open /dev/tty0: Operation not permitted" in text, text
    assert "open tmp-tty0 rc=1" in text, text  # nodev on the rootfs: EACCES
    if disk:
        assert "made disk" in text, text
        assert "open disk rc=1" in text, text
    for device in ("null", "zero", "urandom", "random", "full", "ptmx", "null2"):
        assert f"ok {device}" in text, text


def test_attack_image_ships_a_world_writable_host_device(host: Host) -> None:
    disk = host_block_device()
    nodes = [("host-tty0", tarfile.CHRTYPE, 4, 0)]
    if disk:
        nodes.append(("host-disk", tarfile.BLKTYPE, *disk))

    def node(name: str, kind: bytes, major: int, minor: int) -> Callable[[tarfile.TarFile], None]:
        def add(tar: tarfile.TarFile) -> None:
            info = tarfile.TarInfo(f"rootfs/{name}")
            info.type, info.mode, info.devmajor, info.devminor = kind, 0o666, major, minor
            tar.addfile(info)
        return add

    aci = aci_from_entries(host.tmp / "devices.aci", [
        manifest_entry(manifest("example.com/devices", dependencies=[
            {"imageName": "example.com/busybox"}],
            app={"exec": ["/bin/sh", "-c", " ".join(
                f'true < /{n}; echo "open {n} rc=$?";' for n, *_ in nodes)
                + ' echo x > /dev/null && echo "ok null"'], "user": "0", "group": "0"})),
        dir_entry("rootfs"), *(node(*n) for n in nodes)])
    imported = host.jp("import", str(aci), check=False)
    if imported.returncode != 0:
        # Refusing device nodes at import is a defence too; it must say why.
        assert "device" in imported.stderr.lower(), imported.stderr
        return
    host.start()
    out = host.jp("run", "--rm", "example.com/devices", check=False)
    text = out.stdout + out.stderr
    for name, *_ in nodes:
        assert f"open {name} rc=1" in text, text
    assert "ok null" in text


def test_attack_device_node_planted_in_the_rootfs_opens_nothing(host: Host) -> None:
    """A node in the app's tree (as an importer that keeps device nodes would leave it) is on a
    nodev mount: it opens nothing even where the device cgroup would allow the device."""
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sh -c '"
                  "while ! test -e /planted-null; do sleep 0.05; done; "
                  'echo x > /planted-null; echo "open planted rc=$?"; '
                  'echo x > /dev/null && echo "ok null"\'').stdout.split()[-1]
    apps = host.jp.root / "pods" / pod / "apps"
    host.jp("start", pod)
    rootfs = apps / "busybox" / "rootfs"
    wait_for("the app's rootfs", (rootfs / "bin").exists)
    os.mknod(rootfs / "planted-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    host.wait_for("the app", lambda: "ok null" in host.jp("logs", pod).stdout)
    logs = host.jp("logs", pod).stdout
    assert "open planted rc=1" in logs, logs
    assert "Permission denied" in logs, logs


def test_devices_cgroup_holds_the_pod_and_goes_with_it(host: Host) -> None:
    layout = cgroups.detect_layout()
    require("devices" in layout.v1, "the v1 devices cgroup controller")
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 300"
                  ).stdout.split()[-1]
    directory = layout.v1["devices"] / cgroups.PARENT / pod
    host.jp("start", pod)
    wait_for("the app in the devices cgroup",
             lambda: directory.is_dir() and bool((directory / "cgroup.procs").read_text()))
    allowed = set((directory / "devices.list").read_text().split("\n")) - {""}
    assert allowed == {rule.v1_line() for rule in devices.ALLOWED_DEVICES}
    host.jp("destroy", pod)
    assert not directory.exists()
    assert not [p for p in cgroups.leftover_cgroups(layout) if p.name == pod]


# --- the cgroup v2 device filter -----------------------------------------------------------------

def run_filter(program: bytes, kind: int, major: int, minor: int, access: int) -> int:
    """Interpret ``program`` (the instructions device_filter_program emits) on one request."""
    regs = [0] * 11
    context = struct.pack("<III", (access << 16) | kind, major, minor)
    insns = [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]
    pc = 0
    for _ in range(len(insns)):  # no backward jumps: each instruction runs at most once
        code, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == 0x61:
            assert src == 1, "loads only from the context"
            regs[dst] = struct.unpack_from("<I", context, off)[0]
        elif code == 0x54:
            regs[dst] &= imm & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == 0xB4:
            regs[dst] = imm & 0xFFFFFFFF
        elif code == 0xBC:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif code == 0x55:
            pc += off if regs[dst] != imm & 0xFFFFFFFF else 0
        elif code == 0x5D:
            pc += off if regs[dst] != regs[src] else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("ran off the end of the program")


CHAR, BLOCK = devices.BPF_DEVCG_DEV_CHAR, devices.BPF_DEVCG_DEV_BLOCK
MKNOD, READ, WRITE = (devices.BPF_DEVCG_ACC_MKNOD, devices.BPF_DEVCG_ACC_READ,
                      devices.BPF_DEVCG_ACC_WRITE)


@pytest.mark.parametrize(("kind", "major", "minor", "access", "allowed"), [
    (CHAR, 1, 3, READ | WRITE, 1),  # /dev/null
    (CHAR, 1, 9, READ, 1),  # /dev/urandom
    (CHAR, 5, 2, READ | WRITE, 1),  # /dev/ptmx
    (CHAR, 136, 7, READ | WRITE, 1),  # /dev/pts/7
    (CHAR, 4, 0, MKNOD, 1),  # mknod of anything: CAP_MKNOD keeps its meaning
    (BLOCK, 8, 0, MKNOD, 1),
    (CHAR, 4, 0, READ, 0),  # the host's tty0
    (CHAR, 4, 0, WRITE, 0),
    (CHAR, 1, 1, READ, 0),  # /dev/mem
    (CHAR, 1, 3, MKNOD | READ, 1),
    (CHAR, 4, 0, MKNOD | READ, 0),  # one access not granted is enough to refuse
    (BLOCK, 8, 0, READ, 0),  # a host disk
    (BLOCK, 1, 3, READ, 0),  # the numbers of /dev/null as a block device
    (CHAR, 10, 200, READ | WRITE, 0),  # /dev/net/tun: runc allows it, jetpack does not
    (CHAR, 3, 1, READ, 0),
])
def test_device_filter_program_decides_like_the_allow_list(
        kind: int, major: int, minor: int, access: int, allowed: int) -> None:
    program = devices.device_filter_program()
    assert len(program) % 8 == 0
    assert len(program) // 8 < 4096  # BPF_MAXINSNS for unprivileged-size programs
    assert run_filter(program, kind, major, minor, access) == allowed


def test_v1_lines_are_the_allow_list() -> None:
    lines = [rule.v1_line() for rule in devices.ALLOWED_DEVICES]
    assert lines == ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm",
                     "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]


@pytest.fixture
def v2_cgroup(root: None) -> Iterator[PodCgroup]:
    """A pod cgroup that must use the eBPF filter: this host's layout without the v1 devices
    controller (the unified hierarchy of a hybrid host takes BPF device programs too)."""
    found = cgroups.detect_layout()
    require(found.unified is not None, "a cgroup2 hierarchy")
    layout = cgroups.Layout(found.kind, {k: v for k, v in found.v1.items() if k != "devices"},
                            found.unified, found.unified_controllers)
    cgroup = PodCgroup.for_pod(str(uuid.uuid4()), layout)
    yield cgroup
    cgroup.remove()
    assert not cgroup.exists()


def test_attack_mknod_under_the_v2_device_filter(v2_cgroup: PodCgroup, tmp_path: Path) -> None:
    v2_cgroup.create(Limits())
    assert v2_cgroup.layout.unified is not None
    directory = v2_cgroup.layout.unified / v2_cgroup.name
    assert devices.attached_device_filters(directory) == 1
    v2_cgroup.restrict_devices()  # idempotent: the program is replaced, not stacked
    assert devices.attached_device_filters(directory) == 1
    script = (f'echo $$ > {directory}/cgroup.procs; '
              f'mknod {tmp_path}/tty0 c 4 0 && echo "made tty0"; '
              f'true < {tmp_path}/tty0; echo "open tty0 rc=$?"; '
              f'mknod {tmp_path}/null c 1 3 && echo x > {tmp_path}/null && echo "ok null"; '
              'test "$(head -c 8 /dev/urandom | wc -c)" = 8 && echo "ok urandom"')
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30,
                         check=False)
    text = out.stdout + out.stderr
    assert "made tty0" in text, text
    assert "open tty0 rc=2" in text, text  # dash: a failed redirection
    assert "Operation not permitted" in text, text
    assert "ok null" in text, text
    assert "ok urandom" in text, text


def test_no_device_policy_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    layout = cgroups.Layout("v1", {"memory": tmp_path, "pids": tmp_path, "cpu": tmp_path})
    cgroup = PodCgroup("jetpack/x", layout)
    with pytest.raises(IsolationError, match="no device policy"):
        cgroup.create(Limits())
    assert not (tmp_path / "jetpack").exists()


# --- pivot_root ----------------------------------------------------------------------------------

def test_attack_pivot_root_failure_never_falls_back_to_chroot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chroots: list[str] = []

    def refuse(new_root: str, put_old: str) -> None:
        raise OSError(errno.EINVAL, "pivot_root: Invalid argument")

    monkeypatch.setattr(linux_init.sysc, "pivot_root", refuse)
    monkeypatch.setattr(os, "chroot", chroots.append)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(IsolationError, match=r"cannot pivot_root into .*: Invalid argument$"):
        linux_init.pivot_into(tmp_path)
    assert chroots == []
    assert len(os.listdir("/proc/self/fd")) == open_before  # both directory fds closed
