"""stage2 from outside the rootfs: credentials, environment, working directory, rootfs paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jetpack.errors import IsolationError
from jetpack.stage2.credentials import resolve_credentials
from jetpack.stage2.paths import resolve_in_root
from jetpack.stage2.plan import DEFAULT_PATH, app_environment, plan_app


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:80:81::/srv:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nwww:x:81:\nstaff:x:50:web\n")
    (tmp_path / "srv/data").mkdir(parents=True)
    return tmp_path


def test_names_numbers_and_path_owners(rootfs: Path) -> None:
    assert resolve_credentials(rootfs, "web", "staff", (7,)) == \
        resolve_credentials(rootfs, "80", "50", (7,))
    creds = resolve_credentials(rootfs, "web", "www")
    assert (creds.uid, creds.gid, creds.groups) == (80, 81, ())
    os.chown(rootfs / "srv/data", 1234, 4321)
    owner = resolve_credentials(rootfs, "/srv/data", "/srv/data")
    assert (owner.uid, owner.gid) == (1234, 4321)


def test_unknown_names_and_paths_are_clear_errors(rootfs: Path) -> None:
    with pytest.raises(IsolationError, match="user 'ghost'"):
        resolve_credentials(rootfs, "ghost", "0")
    with pytest.raises(IsolationError, match="group 'ghosts'"):
        resolve_credentials(rootfs, "0", "ghosts")
    with pytest.raises(IsolationError, match="no such path"):
        resolve_credentials(rootfs, "/missing", "0")


def test_symlinks_resolve_inside_the_rootfs(rootfs: Path) -> None:
    (rootfs / "escape").symlink_to("/etc")
    (rootfs / "up").symlink_to("../../../../srv")
    assert resolve_in_root(rootfs, "/escape/passwd") == rootfs / "etc/passwd"
    assert resolve_in_root(rootfs, "/up/data") == rootfs / "srv/data"
    assert resolve_in_root(rootfs, "/../../srv") == rootfs / "srv"


def test_environment_order_and_exact_values() -> None:
    env = app_environment("web", "http://h:1104/tok/", [("PATH", "/mine"), ("AC_APP_NAME", "x"),
                                                        ("X", "1")])
    assert env == {"PATH": "/mine", "container": "jetpack", "X": "1", "AC_APP_NAME": "web",
                   "AC_METADATA_URL": "http://h:1104/tok"}
    assert app_environment("a", "u", [])["PATH"] == DEFAULT_PATH


def test_plan_refuses_a_missing_working_directory(rootfs: Path) -> None:
    with pytest.raises(IsolationError, match="working directory /nope does not exist"):
        plan_app(app_name="a", rootfs=rootfs, argv=["x"], user="0", group="0",
                 supplementary_gids=(), working_directory="/nope", environment=[],
                 metadata_url="")
    plan = plan_app(app_name="a", rootfs=rootfs, argv=["x"], user="web", group="www",
                    supplementary_gids=(50,), working_directory="/srv", environment=[],
                    metadata_url="")
    assert plan.working_directory == "/srv"
    assert plan.credentials.groups == (50,)
