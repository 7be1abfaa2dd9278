"""Installing the service files: a wheel (and pip) carries them; `make install` stages them."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, Jetpack, require, write_conf
from podhost import busybox_image, open_host

SHARE = {
    "share/jetpack/rc.d/jetpack": ("rc.d/jetpack", 0o755),
    "share/jetpack/jetpack.conf.sample": ("conf/jetpack.conf.sample", 0o644),
    "share/jetpack/jetpack.service": ("conf/jetpack.service", 0o644),
    "share/jetpack/service.md": ("docs/service.md", 0o644),
}
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".*_cache", ".hypothesis")


def source_copy(tmp_path: Path) -> Path:
    """The tree in a scratch place, so a build never writes into the checkout under test."""
    tree = tmp_path / "src"
    shutil.copytree(REPO, tree, symlinks=True, ignore=SKIP)
    return tree


def without_checkout() -> dict[str, str]:
    """The environment less PYTHONPATH: pip must not take the checkout for an installed jetpack."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(top / "dist"),
         str(source_copy(top))],
        capture_output=True, text=True, timeout=600, env=without_checkout(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [built] = (top / "dist").glob("jetpack-*.whl")
    return built


def test_wheel_carries_the_service_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        data_dir = next(n.split("/")[0] for n in archive.namelist() if ".data/" in n)
        for installed, (source, want_mode) in SHARE.items():
            info = archive.getinfo(f"{data_dir}/data/{installed}")
            assert archive.read(info) == (REPO / source).read_bytes()
            assert stat.S_IMODE(info.external_attr >> 16) == want_mode, installed
        entry_points = archive.read(f"{data_dir.replace('.data', '.dist-info')}/entry_points.txt")
        assert b"jetpack = jetpack.cli.main:program" in entry_points


def test_pip_install_places_them_under_the_prefix(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", "--prefix", str(prefix), str(wheel)],
        capture_output=True, text=True, timeout=600, env=without_checkout(),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for installed, (source, want_mode) in SHARE.items():
        path = prefix / installed
        assert path.read_bytes() == (REPO / source).read_bytes()
        assert mode(path) & 0o111 == want_mode & 0o111, installed
    assert os.access(prefix / "bin" / "jetpack", os.X_OK)


@pytest.mark.parametrize("make", ["make", "bmake"])
@pytest.mark.parametrize("prefix", ["/usr/local", "/opt/jetpack"])
def test_make_install_stages_like_a_port(make: str, prefix: str, tmp_path: Path) -> None:
    require(shutil.which(make) is not None, f"{make} (apt-get install {make})")
    stage = tmp_path / "stage"
    out = subprocess.run(
        [make, "install", f"DESTDIR={stage}", f"PREFIX={prefix}",
         f"BUILDDIR={tmp_path / 'build'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    root = stage / prefix.lstrip("/")
    rc_script = root / "etc" / "rc.d" / "jetpack"
    sample = root / "etc" / "jetpack.conf.sample"
    assert mode(rc_script) == 0o555
    assert mode(sample) == 0o644
    assert sample.read_bytes() == (REPO / "conf" / "jetpack.conf.sample").read_bytes()
    text = rc_script.read_text()
    assert f': ${{jetpack_conf:="{prefix}/etc/jetpack.conf"}}' in text
    assert f': ${{jetpack_cli:="{prefix}/bin/jetpack"}}' in text
    if prefix == "/usr/local":
        assert text == (REPO / "rc.d" / "jetpack").read_text()
    else:
        assert "/usr/local/" not in text
    # Everything staged is what pkg-plist lists, relative to PREFIX.
    staged = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    plist = [line.split()[-1] for line in (REPO / "pkg-plist").read_text().splitlines()
             if line.strip() and not line.startswith("@comment")]
    assert staged == sorted(plist)

    out = subprocess.run([make, "uninstall", f"DESTDIR={stage}", f"PREFIX={prefix}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not rc_script.exists()
    assert not sample.exists()


# --- the installed wheel is the whole jetpack --------------------------------------------------

PACKAGE_DIRS = {"jetpack": "jetpack", "jetpack.supervisor": "supervisor",
                "jetpack.stage1": "stage1", "jetpack.stage2": "stage2", "jetpack.mds": "mds",
                "jetpack.testing": "testing"}


def tree_modules() -> set[str]:
    """Every module of the source tree under its installed name (jetpack.stage1.linux, ...).
    os.walk does not follow jetpack/<name> -> ../<name>: each folder counts once, as itself."""
    found = set()
    for package, folder in PACKAGE_DIRS.items():
        top = REPO / folder
        for directory, _, files in os.walk(top):
            for file in files:
                if not file.endswith(".py"):
                    continue
                relative = (Path(directory) / file).relative_to(top).with_suffix("")
                parts = [*package.split("."), *relative.parts]
                if parts[-1] == "__init__":
                    parts.pop()
                found.add(".".join(parts))
    return found


def test_wheel_holds_every_module_of_the_tree(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name[:-3].replace("/", ".").removesuffix(".__init__")
                   for name in archive.namelist() if name.endswith(".py")}
        names = set(archive.namelist())
    modules = tree_modules()
    assert {"jetpack.supervisor.daemon", "jetpack.stage1.linux_init", "jetpack.stage1.network",
            "jetpack.stage2.executor", "jetpack.mds.service",
            "jetpack.testing.fake_runtime"} <= modules
    assert modules - shipped == set()
    assert "jetpack/testing/standins/jail" in names
    assert "jetpack/py.typed" in names
    dashboard = {f"jetpack/supervisor/ui/{f.name}" for f in (REPO / "supervisor" / "ui").iterdir()}
    assert {"jetpack/supervisor/ui/index.html", "jetpack/supervisor/ui/app.js"} <= dashboard
    assert dashboard <= names, "the dashboard's files are package data"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel in a fresh venv outside the checkout, with its dependencies from the index:
    what `pip install jetpack-*.whl` gives a user. Returns the venv's bin directory."""
    venv = tmp_path_factory.mktemp("venv") / "jetpack"
    out = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                         text=True, timeout=300, env=without_checkout())
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=900, env=without_checkout(),
                         cwd=venv)
    assert out.returncode == 0, out.stdout + out.stderr
    return venv / "bin"


def test_every_module_imports_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    modules = sorted(tree_modules())
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n"
              "    module = importlib.import_module(name)\n"
              "    assert module.__file__.startswith(sys.prefix), (name, module.__file__)\n"
              "print(len(sys.modules))\n")
    out = subprocess.run([str(installed / "python"), "-c", script], capture_output=True,
                         text=True, timeout=300, env=without_checkout(), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_installed_jetpack_runs_a_pod(installed: Path, root: None, busybox_rootfs: Path,
                                      tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    with open_host(tmp_path, busybox_rootfs, {"storage.driver": "dir"},
                   command=(str(installed / "jetpack"),), cwd=work) as host:
        host.start()
        out = host.jp("run", "--rm", "example.com/busybox", "--exec",
                      "/bin/sh -c 'echo hello from $AC_APP_NAME; exit 7'", check=False)
        assert out.returncode == 7, out.stdout + out.stderr
        assert "hello from busybox" in out.stdout
        assert host.stop() == 0
    log = (tmp_path / "daemon.log").read_text()
    assert str(REPO) not in log  # nothing ran from the checkout


# --- system tools: a missing one is a plain error naming it and its package ---------------------

def without_tools(jp: Jetpack, tmp_path: Path) -> dict[str, str]:
    """jetpack's environment with a PATH that holds no host tool at all (no gpg, zfs, ip...)."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return dict(jp.env(), PATH=str(empty))


def test_import_sig_without_gpg_names_gpg(root: None, jetpack_dir: Jetpack, busybox_rootfs: Path,
                                          tmp_path: Path) -> None:
    jetpack_dir("init")
    aci = busybox_image(tmp_path, busybox_rootfs, "example.com/busybox")
    sig = tmp_path / "busybox.aci.asc"
    sig.write_text("-----BEGIN PGP SIGNATURE-----\n")
    out = subprocess.run(jetpack_dir.argv("import", str(aci), "--sig", str(sig)),
                         env=without_tools(jetpack_dir, tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 2, out.stderr
    assert lines[0].startswith("jetpack: gpg: command not found"), out.stderr
    assert "pkg install gnupg" in out.stderr
    assert "apt install gnupg" in out.stderr
    assert json.loads(jetpack_dir("images", "--json").stdout) == []


def test_zfs_storage_without_zfs_names_zfs(root: None, tmp_path: Path) -> None:
    jp = Jetpack(write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(tmp_path / "state"), "storage.driver": "zfs",
        "root.zfs": "nopool/jetpack"}), tmp_path / "state")
    out = subprocess.run(jp.argv("init"), env=without_tools(jp, tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "zfs: command not found" in out.stderr
    assert "storage.driver = dir" in out.stderr


def test_supervisor_without_libnftables_names_it(root: None, tmp_path: Path) -> None:
    """The pod network's rules go through libnftables in-process (no nft command): a daemon
    that cannot load it (here an unloadable copy found first on LD_LIBRARY_PATH, as a broken
    install would leave) says which library and how to install it, and serves nothing."""
    bridge = f"jpt{secrets.token_hex(3)}"
    jp = Jetpack(write_conf(tmp_path / "jetpack.conf", **{
        "root.path": str(tmp_path / "state"), "storage.driver": "dir",
        "supervisor.socket": str(tmp_path / "jp.sock"), "jail.interface": bridge,
        "jail.network": "172.31.251.1/24"}), tmp_path / "state")
    jp("init")
    broken = tmp_path / "lib"
    broken.mkdir()
    (broken / "libnftables.so.1").write_bytes(b"not a shared object\n")
    try:
        out = subprocess.run(jp.argv("daemon"), env=dict(jp.env(), LD_LIBRARY_PATH=str(broken)),
                             capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "libnftables.so.1: cannot load it" in out.stderr, out.stderr
    assert "apt install libnftables1" in out.stderr
    assert not (tmp_path / "jp.sock").exists()
