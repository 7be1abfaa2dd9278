"""Installing the service files: a wheel (and pip) carries them; `make install` stages them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, require

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
        assert b"jetpack = jetpack.cli.main:main" in entry_points


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
