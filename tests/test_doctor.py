"""``jetpack doctor``: on this Linux host for real (every check passes; a missing tool or a
loose state root fails with its fix), and for the jail driver against the FreeBSD stand-ins
(pf, racct, lo1, the anchors, devfs: each broken alone is reported with the line that fixes it,
and the printed commands really fix it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from jetpack.testing import freebsd_standins

from conftest import Jetpack, write_conf

PF_CONF = """\
ext_if = "em0"
nat-anchor "jetpack/*"
rdr-anchor "jetpack/*"
nat on $ext_if inet from 172.23.0.0/16 to any -> ($ext_if)
anchor "jetpack/*"
pass all
"""


def checks(jp: Jetpack) -> tuple[int, list[dict[str, object]]]:
    out = jp("doctor", "--json", check=False)
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


def missing(found: list[dict[str, object]]) -> list[dict[str, object]]:
    return [c for c in found if c["status"] != "ok"]


# --- Linux, for real --------------------------------------------------------------------------


def test_linux_host_has_everything(root: None, jetpack_dir: Jetpack) -> None:
    out = jetpack_dir("doctor", check=False)
    # Not initialized yet: the one thing missing is the state root, fixed by init.
    assert out.returncode == 1
    assert f"missing  state root {jetpack_dir.root} does not exist" in out.stdout
    assert "fix: jetpack init" in out.stdout
    jetpack_dir("init")

    code, found = checks(jetpack_dir)
    assert missing(found) == []
    assert code == 0
    whats = " ".join(str(c["what"]) for c in found)
    for needed in ("ip (", "gpg (", "nftables answers (libnftables", "cgroups (",
                   "bridges", "overlayfs", f"state root {jetpack_dir.root}"):
        assert needed in whats, needed
    assert jetpack_dir("doctor", "-q").stdout == ""


def path_without(tmp_path: Path, tool: str) -> str:
    """A PATH holding every command of the system's but ``tool``."""
    bin_dir = tmp_path / "path-bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin",
                      "/bin"):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name != tool and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    return str(bin_dir)


def test_linux_missing_tool_is_reported_with_its_package(
    root: None, jetpack_dir: Jetpack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jetpack_dir("init")
    monkeypatch.setenv("PATH", path_without(tmp_path, "gpg"))
    out = jetpack_dir("doctor", check=False)
    assert out.returncode == 1
    assert ("missing  gpg: command not found (needed to check signatures and manage trusted "
            "keys)") in out.stdout
    assert "fix: apt install gnupg" in out.stdout
    assert "ok       ip (" in out.stdout  # everything else still checked
    quiet = jetpack_dir("doctor", "-q", check=False)
    assert quiet.returncode == 1
    assert quiet.stdout.splitlines() == [
        "missing  gpg: command not found (needed to check signatures and manage trusted keys)",
        "           fix: apt install gnupg"]


def test_linux_missing_libnftables_is_reported_with_its_package(
    root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod network's rules go through libnftables in-process: without it the doctor says
    which library and how to get it (the nft command is not needed)."""
    from jetpack.doctor.linux import linux_checks
    from jetpack.stage1.network import nftables

    assert [c.what for c in linux_checks() if c.what.startswith("nftables answers")]
    monkeypatch.setattr(nftables, "LIBRARY", "libnftables-jp-missing.so.1")
    nftables._library.cache_clear()
    try:
        found = [c for c in linux_checks() if "nftables" in c.what]
    finally:
        nftables._library.cache_clear()
    assert len(found) == 1
    assert found[0].status == "missing"
    assert "libnftables-jp-missing.so.1: cannot load it" in found[0].what
    assert found[0].fix == ("apt install libnftables1",)


def test_state_root_readable_by_others_is_missing(root: None, jetpack_dir: Jetpack) -> None:
    jetpack_dir("init")
    jetpack_dir.root.chmod(0o755)
    code, found = checks(jetpack_dir)
    assert code == 1
    assert missing(found) == [{
        "status": "missing",
        "what": f"state root {jetpack_dir.root} is mode 0755: other users reach images, pods "
                "and the database",
        "fix": [f"chmod 0700 {jetpack_dir.root}"]}]
    sh(f"chmod 0700 {jetpack_dir.root}")
    code, found = checks(jetpack_dir)
    assert missing(found) == []
    assert code == 0


def test_zfs_dataset_checked(jetpack_zfs: Jetpack, zfs_dataset: str) -> None:
    jetpack_zfs("init")
    code, found = checks(jetpack_zfs)
    assert code == 0, missing(found)
    assert {"status": "ok", "what": f"ZFS dataset {zfs_dataset} mounted on {jetpack_zfs.root}",
            "fix": []} in found

    out = jetpack_zfs("-o", f"root.zfs={zfs_dataset}-absent", "doctor", check=False)
    assert out.returncode == 1
    assert f"missing  ZFS dataset {zfs_dataset}-absent (root.zfs):" in out.stdout
    assert f"fix: jetpack init   (creates {zfs_dataset}-absent;" in out.stdout


# --- FreeBSD, against the stand-ins -----------------------------------------------------------


@pytest.fixture
def freebsd_host(standins: Path, tmp_path: Path) -> Jetpack:
    """A FreeBSD host set up as docs/freebsd.md says (lo1 with its address, pf enabled with
    the anchors hooked, racct on, devfs ruleset 4), and the jail driver configured."""
    root = tmp_path / "state"
    conf = write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(root), "storage.driver": "dir", "isolation.driver": "jail",
        "jail.interface": "lo1", "jail.network": "172.23.0.1/16"})
    jp = Jetpack(conf, root)
    jp("init")
    sh("ifconfig lo1 create inet 172.23.0.1/16")
    (tmp_path / "pf.conf").write_text(PF_CONF)
    sh(f"pfctl -f {tmp_path / 'pf.conf'}")
    return jp


def sh(command: str) -> None:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{command}: {out.stderr}"


@pytest.mark.freebsd
def test_freebsd_host_set_up_as_documented_is_ok(freebsd_host: Jetpack) -> None:
    code, found = checks(freebsd_host)
    assert missing(found) == []
    assert code == 0
    whats = [c["what"] for c in found]
    for expected in ("interface lo1 holds 172.23.0.1", "pf loaded and enabled",
                     'pf evaluates jetpack\'s anchors ("jetpack/*")',
                     "racct enabled (kern.racct.enable=1)", "devfs ruleset 4 loaded"):
        assert expected in whats


def pf_unloaded(standins: Path, tmp_path: Path) -> None:
    freebsd_standins.set_pf_loaded(standins, False)


def pf_disabled(standins: Path, tmp_path: Path) -> None:
    freebsd_standins.set_pf_enabled(standins, False)


def racct_off(standins: Path, tmp_path: Path) -> None:
    freebsd_standins.set_sysctl(standins, "kern.racct.enable", "0")


def lo1_without_address(standins: Path, tmp_path: Path) -> None:
    sh("ifconfig lo1 -alias 172.23.0.1 && ifconfig lo1 alias 172.23.0.5/32")


def lo1_absent(standins: Path, tmp_path: Path) -> None:
    sh("ifconfig lo1 destroy")


def anchors_unhooked(standins: Path, tmp_path: Path) -> None:
    (tmp_path / "pf.conf").write_text(
        "".join(line + "\n" for line in PF_CONF.splitlines() if "anchor" not in line
                or line.startswith("rdr-anchor")))
    sh(f"pfctl -f {tmp_path / 'pf.conf'}")


def devfs_ruleset_absent(standins: Path, tmp_path: Path) -> None:
    freebsd_standins.set_devfs_rulesets(standins, ["1", "2", "3"])


@pytest.mark.freebsd
@pytest.mark.parametrize(("breakage", "what", "fix"), [
    (pf_unloaded, "pf is not loaded (/dev/pf does not exist)",
     ["kldload pf", "sysrc pf_enable=YES", "service pf start"]),
    (pf_disabled, "pf is loaded but not enabled", ["pfctl -e", "sysrc pf_enable=YES"]),
    (racct_off, "racct is disabled (kern.racct.enable=0): resource isolators cannot be "
     "enforced", ["echo kern.racct.enable=1 >> /boot/loader.conf", "shutdown -r now"]),
    (lo1_without_address, "interface lo1 does not hold the host address 172.23.0.1 of "
     "jail.network 172.23.0.1/16", ["ifconfig lo1 inet 172.23.0.1/16 alias",
                                    'sysrc cloned_interfaces+="lo1"',
                                    'sysrc ifconfig_lo1="inet 172.23.0.1/16"']),
    (lo1_absent, "interface lo1 (jail.interface): ifconfig: interface lo1 does not exist",
     ["ifconfig lo1 create inet 172.23.0.1/16", 'sysrc cloned_interfaces+="lo1"',
      'sysrc ifconfig_lo1="inet 172.23.0.1/16"']),
    (anchors_unhooked, "pf's running ruleset does not evaluate jetpack's anchors "
     '(nat-anchor "jetpack/*", anchor "jetpack/*"): port forwards and NAT would not apply',
     ['nat-anchor "jetpack/*"   (/etc/pf.conf: translation anchors before filter rules)',
      'anchor "jetpack/*"   (/etc/pf.conf: translation anchors before filter rules)',
      "service pf reload"]),
    (devfs_ruleset_absent, "devfs ruleset 4 (jail devfs_ruleset) is not loaded: "
     "/etc/defaults/devfs.rules defines it (devfsrules_jail)", ["service devfs restart"]),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_freebsd_missing_piece_is_reported_with_its_fix(
    freebsd_host: Jetpack, standins: Path, tmp_path: Path,
    breakage: Callable[[Path, Path], None], what: str, fix: list[str]
) -> None:
    breakage(standins, tmp_path)
    code, found = checks(freebsd_host)
    assert code == 1
    assert missing(found) == [{"status": "missing", "what": what, "fix": fix}]
    text = freebsd_host("doctor", check=False).stdout
    assert f"missing  {what}\n" in text
    for line in fix:
        assert f"   fix: {line}\n" in text


@pytest.mark.freebsd
@pytest.mark.parametrize("breakage", [pf_disabled, lo1_without_address, lo1_absent],
                         ids=lambda f: f.__name__)
def test_freebsd_printed_commands_fix_the_host(
    freebsd_host: Jetpack, standins: Path, tmp_path: Path,
    breakage: Callable[[Path, Path], None]
) -> None:
    """The commands doctor prints (not the rc.conf lines) repair the running host."""
    breakage(standins, tmp_path)
    _, found = checks(freebsd_host)
    [broken] = missing(found)
    for line in broken["fix"]:  # type: ignore[attr-defined]
        if not line.startswith("sysrc "):
            sh(line)
    code, after = checks(freebsd_host)
    assert missing(after) == []
    assert code == 0


@pytest.mark.freebsd
def test_freebsd_printed_pf_conf_lines_hook_the_anchors(
    freebsd_host: Jetpack, standins: Path, tmp_path: Path
) -> None:
    anchors_unhooked(standins, tmp_path)
    _, found = checks(freebsd_host)
    [broken] = missing(found)
    lines = [str(line).split("   (")[0] for line in broken["fix"]  # type: ignore[attr-defined]
             if "anchor" in str(line)]
    conf = (tmp_path / "pf.conf").read_text().splitlines()
    # Where the fix says: translation anchors with the translation rules, filter anchors
    # before the filter rules.
    nat_at = next(i for i, line in enumerate(conf) if line.startswith("nat on"))
    pass_at = next(i for i, line in enumerate(conf) if line.startswith("pass"))
    conf[pass_at:pass_at] = [line for line in lines if line.startswith("anchor")]
    conf[nat_at:nat_at] = [line for line in lines if not line.startswith("anchor")]
    (tmp_path / "pf.conf").write_text("\n".join(conf) + "\n")
    sh(f"pfctl -f {tmp_path / 'pf.conf'}")
    assert checks(freebsd_host)[0] == 0


@pytest.mark.freebsd
def test_freebsd_missing_tool(freebsd_host: Jetpack, tmp_path: Path) -> None:
    (tmp_path / "bin" / "rctl").unlink()
    out = freebsd_host("doctor", "-q", check=False)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "missing  rctl: command not found (needed for resource isolators)",
        "           fix: rctl is part of FreeBSD's base system: restore it "
        "(freebsd-update fetch install)"]
    assert shutil.which("rctl") is None
