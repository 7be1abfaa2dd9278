"""jetpack.conf parsing, lookup order, validation, and the ``config`` command."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetpack.config import KEYS, load_config, parse_duration, render
from jetpack.errors import ConfigError

from conftest import Jetpack, write_conf


def test_defaults_without_any_file(tmp_path: Path) -> None:
    config = load_config(None, environ={"JETPACK_CONF": ""})
    assert config["root.path"] == "/var/jetpack"
    assert config["jail.network"] == "172.23.0.1/16"
    assert config["supervisor.socket"] == "/var/run/jetpack/jetpack.sock"
    assert config.duration("pod.stop-timeout") == 10.0
    assert config.duration("restart.delay") == pytest.approx(0.1)
    assert config.duration("events.retention.age") == 30 * 86400
    assert config.int("mds.port") == 1104
    assert config.bool("jail.nat") is False


def test_platform_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import jetpack.config as cfg

    monkeypatch.setattr(cfg, "platform_kind", lambda: "freebsd")
    config = load_config(None, environ={})
    assert config["storage.driver"] == "zfs"
    assert config["isolation.driver"] == "jail"
    assert config["jail.interface"] == "lo1"
    assert cfg.default_path() == Path("/usr/local/etc/jetpack.conf")
    monkeypatch.setattr(cfg, "platform_kind", lambda: "linux")
    config = load_config(None, environ={})
    assert config["storage.driver"] == "dir"
    assert config["isolation.driver"] == "linux"
    assert config["jail.interface"] == "jetpack0"
    assert cfg.default_path() == Path("/etc/jetpack.conf")


def test_lookup_order_defaults_file_overrides(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "a.conf", **{"root.path": "/srv/a", "mds.port": "2000"})
    env_conf = write_conf(tmp_path / "b.conf", **{"root.path": "/srv/b"})
    # explicit path beats $JETPACK_CONF
    config = load_config(conf, environ={"JETPACK_CONF": str(env_conf)})
    assert config["root.path"] == "/srv/a"
    # $JETPACK_CONF when no path is given
    assert load_config(None, environ={"JETPACK_CONF": str(env_conf)})["root.path"] == "/srv/b"
    # -o beats the file; later -o beats earlier
    config = load_config(conf, ["mds.port=3000", "mds.port=3001"], environ={})
    assert config["mds.port"] == "3001"
    assert config["root.path"] == "/srv/a"


def test_comments_blank_lines_spaces_and_alias(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text(
        "# a comment\n\n   root.zfs.mountpoint   =   /data/jp  \n"
        "images.zfs.compression = lz4\n  # indented comment\njail.nat=on\n"
    )
    config = load_config(path, environ={})
    assert config["root.path"] == "/data/jp"
    assert config["root.zfs.mountpoint"] == "/data/jp"
    assert config.prefixed("images.zfs.") == {"compression": "lz4"}
    assert config.bool("jail.nat") is True


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("root.path = /x\nthis line has no equals sign\n", 2),
        ("# ok\n= value without key\n", 2),
        ("mds.port = 99999\n", 1),
        ("pod.stop-timeout = soon\n", 1),
        ("storage.driver = btrfs\n", 1),
        ("jail.network = 172.23.0.0/16\n", 1),
        ("\n\njail.nat = maybe\n", 3),
        ("bad key = 1\n", 1),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}:{line}:")


def test_unknown_key_is_a_warning(tmp_path: Path) -> None:
    path = write_conf(tmp_path / "w.conf", **{"no.such.key": "1", "root.path": "/r"})
    config = load_config(path, environ={})
    assert config["root.path"] == "/r"
    assert len(config.warnings) == 1
    assert "no.such.key" in config.warnings[0]
    assert f"{path}:1" in config.warnings[0]


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.conf", environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(None, environ={"JETPACK_CONF": str(tmp_path / "absent.conf")})


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["novalue"], environ={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("100ms", 0.1), ("30m", 1800), ("2h", 7200), ("30d", 2592000), ("5", 5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_render_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["root.path=/q", "debug=on"], environ={})
    path = tmp_path / "r.conf"
    path.write_text(render(config))
    again = load_config(path, environ={})
    assert again.values == config.values
    assert set(KEYS) <= set(again.values)


def test_sample_config_is_valid_and_documents_every_key() -> None:
    sample = Path(__file__).resolve().parent.parent / "conf" / "jetpack.conf.sample"
    text = sample.read_text()
    config = load_config(sample, environ={})
    assert config.warnings == []
    for key in KEYS:
        assert key in text, f"{key} is not documented in conf/jetpack.conf.sample"


def test_cli_config_key_and_errors(jetpack_dir: Jetpack, tmp_path: Path) -> None:
    out = jetpack_dir("config", "root.path")
    assert out.stdout == f"{jetpack_dir.root}\n"
    out = jetpack_dir("-o", "mds.port=1200", "config", "mds.port", "root.path")
    assert out.stdout.splitlines() == ["1200", str(jetpack_dir.root)]
    full = jetpack_dir("config").stdout
    assert f"root.path = {jetpack_dir.root}\n" in full
    assert "storage.driver = dir\n" in full
    unknown = jetpack_dir("config", "no.such", check=False)
    assert unknown.returncode == 1
    assert "no.such" in unknown.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text("root.path = /x\noops\n")
    res = Jetpack(bad, jetpack_dir.root)("config", check=False)
    assert res.returncode == 1
    assert f"{bad}:2" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
