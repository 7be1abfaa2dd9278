"""CLI conventions: help, version, exit codes 0/1/2, plain errors, light start-up, init."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Jetpack


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetpack.cli.main", *args], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), JETPACK_CONF="/nonexistent/jetpack.conf"),
        timeout=60,
    )


def test_help_lists_commands() -> None:
    for args in (["--help"], ["help"]):
        out = run_cli(*args)
        assert out.returncode == 0
        assert "usage: jetpack" in out.stdout
        for command in ("init", "config", "version", "help"):
            assert f"  {command} " in out.stdout


def test_help_for_one_command() -> None:
    out = run_cli("help", "config")
    assert out.returncode == 0
    assert "usage: jetpack config" in out.stdout
    assert run_cli("config", "--help").returncode == 0


def test_version() -> None:
    from jetpack import __version__

    assert run_cli("version").stdout == f"jetpack {__version__}\n"
    assert run_cli("--version").stdout == f"jetpack {__version__}\n"


@pytest.mark.parametrize(
    "args", [["no-such-command"], ["help", "no-such-command"], ["config", "--no-such-flag"], []]
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    out = run_cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip()


def test_error_exit_1_plain_and_traceback_only_with_debug(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.conf")
    out = run_cli("-c", missing, "config")
    assert out.returncode == 1
    assert out.stderr.startswith("jetpack: ")
    assert len(out.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in out.stderr
    out = run_cli("-c", missing, "-o", "debug=on", "config")
    assert out.returncode == 1
    assert "Traceback" in out.stderr


def test_help_start_up_imports_no_heavy_modules() -> None:
    """``jetpack --help`` must stay light: measured with ``python -X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jetpack.cli.main", "--help"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60,
    )
    assert out.returncode == 0
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "jetpack.cli" in imported
    for heavy in ("trio", "httpx", "gnupg", "structlog", "sqlite3", "hypercorn"):
        assert heavy not in imported, f"jetpack --help imports {heavy}"


LOADED_MODULES = (
    "import sys\n"
    "from jetpack.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def loaded_modules(jetpack: Jetpack, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                         set[str]]:
    """Run the CLI in a subprocess; its answer and the modules it had loaded when done."""
    out = subprocess.run([sys.executable, "-c", LOADED_MODULES, "-c", str(jetpack.conf), *args],
                         capture_output=True, text=True, env=jetpack.env(), timeout=60)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("MODULES "), out.stderr
    return out, set(last.split()[1:])


HEAVY = ("trio", "httpx", "structlog", "hypercorn", "gnupg", "trio_websocket", "asyncio")


def test_list_and_status_import_only_what_they_need(jetpack_dir: Jetpack) -> None:
    """``list`` reads the database with sqlite3 alone and ``status``/``start``/``stop`` speak
    HTTP over the socket with socket alone: neither loads trio, httpx, structlog, http.client
    or the store (the CLI's start-up is their cost; tests/test_cli_ux.py has the full budget)."""
    jetpack_dir("init")
    listed, modules = loaded_modules(jetpack_dir, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("UUID")
    assert "sqlite3" in modules
    assert "jetpack.cli.podview" in modules
    for heavy in (*HEAVY, "http.client", "jetpack.store.pods", "dataclasses"):
        assert heavy not in modules, f"jetpack list imports {heavy}"
    # No supervisor: the one-line message with its hint, exit 1, through the light client.
    for command in (["status"], ["stop", "web"]):
        status, modules = loaded_modules(jetpack_dir, *command)
        assert status.returncode == 1
        lines = status.stderr.splitlines()
        assert lines[0].startswith("jetpack: no supervisor is running (no control socket at ")
        assert lines[1].startswith("jetpack: start it with 'jetpack daemon'")
        assert "jetpack.cli.unixhttp" in modules
        for heavy in (*HEAVY, "sqlite3", "http.client", "ssl", "email"):
            assert heavy not in modules, f"jetpack {command[0]} imports {heavy}"


def test_init_dir_driver_is_idempotent(root: None, jetpack_dir: Jetpack) -> None:
    first = jetpack_dir("init")
    assert "ready (dir storage)" in first.stdout
    state = jetpack_dir.root
    for sub in ("images", "pods", "tmp", "jetpack.db", "mds-signing.key", "mds-token.key"):
        assert (state / sub).exists(), sub
    assert (state / "mds-token.key").stat().st_mode & 0o777 == 0o600
    keys = {p.name: p.read_text() for p in state.glob("*.key")}
    listing = sorted(str(p.relative_to(state)) for p in state.rglob("*")
                     if not p.name.startswith("jetpack.db"))
    second = jetpack_dir("init")
    assert "generated" not in second.stdout
    assert "created" not in second.stdout
    assert {p.name: p.read_text() for p in state.glob("*.key")} == keys
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")
                  if not p.name.startswith("jetpack.db")) == listing


def test_init_keeps_configured_keys(jetpack_dir: Jetpack) -> None:
    key = "ab" * 32
    jetpack_dir("-o", f"mds.signing-key={key}", "init")
    assert not (jetpack_dir.root / "mds-signing.key").exists()
    assert (jetpack_dir.root / "mds-token.key").exists()


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True).stdout


def test_init_zfs_driver_creates_datasets(jetpack_zfs: Jetpack, zfs_dataset: str) -> None:
    jetpack_zfs("init")
    names = zfs("list", "-H", "-o", "name", "-r", zfs_dataset).split()
    assert names == [zfs_dataset, f"{zfs_dataset}/images", f"{zfs_dataset}/pods"]
    assert zfs("get", "-H", "-o", "value", "mountpoint", zfs_dataset).strip() == str(
        jetpack_zfs.root
    )
    assert zfs("get", "-H", "-o", "value", "mounted", zfs_dataset).strip() == "yes"
    assert (jetpack_zfs.root / "jetpack.db").exists()
    assert (jetpack_zfs.root / "images").is_dir()
    jetpack_zfs("init")  # idempotent
    assert zfs("list", "-H", "-o", "name", "-r", zfs_dataset).split() == names


def test_init_zfs_on_pool_created_with_mountpoint_none(
    jetpack_zfs: Jetpack, zfs_dataset: str
) -> None:
    # The parent exists with mountpoint=none (as `zpool create -m none` leaves the pool).
    zfs("create", "-o", "mountpoint=none", zfs_dataset)
    nested = f"{zfs_dataset}/jetpack"
    jetpack_zfs("-o", f"root.zfs={nested}", "init")
    assert zfs("get", "-H", "-o", "value", "mountpoint", nested).strip() == str(jetpack_zfs.root)
    assert (jetpack_zfs.root / "jetpack.db").exists()


def test_init_zfs_bad_pool_is_a_clear_error(jetpack_zfs: Jetpack) -> None:
    out = jetpack_zfs("-o", "root.zfs=nosuchpool-jp/x", "init", check=False)
    assert out.returncode == 1
    assert "nosuchpool-jp" in out.stderr
    assert "Traceback" not in out.stderr
