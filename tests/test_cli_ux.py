"""The CLI as a new user meets it (issue 21, item 5): suggestions and aliases, -o json, short
flags that combine, status POD / inspect, logs --tail/--since/--timestamps, list's short UUIDs
and ages, export to stdout, run without a supervisor, completion scripts, the manual page,
colours only on a terminal; and the light transport the supervisor commands use."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REPO, Jetpack, require
from podhost import Host

RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def jp_bytes(jp: Jetpack, *args: str, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(jp.argv(*args), capture_output=True, env=jp.env(), timeout=120,
                          cwd=cwd)


# --- commands: suggestions, aliases, help --------------------------------------------------


def test_unknown_command_suggests_the_closest(jetpack_dir: Jetpack) -> None:
    out = jetpack_dir("lsit", check=False)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["jetpack: unknown command 'lsit'",
                                       "jetpack: did you mean list?"]
    assert jetpack_dir("stauts", check=False).stderr.endswith("did you mean status?\n")
    far = jetpack_dir("xyzzy-frobnicate", check=False)
    assert far.returncode == 2
    assert "did you mean" not in far.stderr
    assert "see 'jetpack help'" in far.stderr
    assert "Traceback" not in out.stderr + far.stderr


def test_aliases_dispatch_and_are_shown_in_help(jetpack_dir: Jetpack) -> None:
    from jetpack.cli.main import ALIASES, COMMANDS

    jetpack_dir("init")
    usage = jetpack_dir("help").stdout
    for alias, target in ALIASES.items():
        assert target in COMMANDS
        line = next(line for line in usage.splitlines() if line.startswith(f"  {target} "))
        assert alias in line.split("[alias:")[1], line
    assert jetpack_dir("pods", "--json").stdout == jetpack_dir("list", "--json").stdout
    assert jetpack_dir("help", "pods").stdout.startswith("usage: jetpack list")
    assert jetpack_dir("help", "rm").stdout.startswith("usage: jetpack destroy")
    # rm / rmi reach destroy / destroy-image: their own "not found", not a usage error
    for alias in ("rm", "rmi"):
        out = jetpack_dir(alias, "no-such-thing", check=False)
        assert out.returncode == 1, out.stderr
        assert "no-such-thing" in out.stderr
    missing = jetpack_dir("inspect", check=False)
    assert missing.returncode == 2
    assert "jetpack inspect POD" in missing.stderr


def test_output_rule_o_json_and_o_key_value_after_the_command(jetpack_dir: Jetpack) -> None:
    jetpack_dir("init")
    assert jetpack_dir("list", "-o", "json").stdout == jetpack_dir("list", "--json").stdout
    assert json.loads(jetpack_dir("images", "-ojson").stdout) == []
    assert jetpack_dir("config", "debug", "-o", "debug=on").stdout == "on\n"
    assert jetpack_dir("config", "-o", "debug=on", "debug").stdout == "on\n"
    bad = jetpack_dir("list", "-o", "yaml", check=False)
    assert bad.returncode == 2
    assert "-o KEY=VALUE" in bad.stderr  # the rule, as the hint
    no_json = jetpack_dir("version", "-o", "json", check=False)
    assert no_json.returncode == 2
    # documented: in the usage and in each --json command's help
    assert "-o json is --json" in jetpack_dir("help").stdout
    assert "-o json" in jetpack_dir("help", "list").stdout


def test_run_takes_combined_short_flags() -> None:
    from jetpack.cli.prepare import parse_command_line

    options, extra = parse_command_line(["-it", "--rm", "example.com/a", "-eFOO=1", "-e",
                                         "BAR=2", "-w/tmp"])
    assert extra["tty"] is True
    assert extra["rm"] is True
    assert options.apps[0].environment == {"FOO": "1", "BAR": "2"}
    assert options.apps[0].working_directory == "/tmp"
    options, extra = parse_command_line(["-ti", "example.com/a"])
    assert extra["tty"] is True
    from jetpack.errors import UsageError

    with pytest.raises(UsageError, match="unknown option -iz"):
        parse_command_line(["-iz", "example.com/a"])


def test_run_request_carries_the_whole_command_line_as_json() -> None:
    """What ``run`` sends the supervisor (plain JSON) reads back as the options ``prepare``
    gets from the same words; a body of another shape is a UsageError (400), not a 500."""
    from jetpack.cli.prepare import parse_command_line, parse_words
    from jetpack.store.prepare import PrepareRequest

    words = ["example.com/a", "--app-name", "one", "--exec", "/bin/sh -c 'echo hi'", "--user",
             "1000", "--group", "100", "-e", "A=1", "-w", "/tmp", "-m", "data:/data",
             "--name", "pod", "--restart", "on-failure:3", "-p", "http:8080", "-p",
             "dns:127.0.0.1:53", "-v", "data,kind=empty", "-a", "k=v", "--keep-etc", "--rm",
             "example.com/b", "--", "x", "--name", "y"]
    request, extra = parse_words(words)
    assert extra == {"rm": True, "tty": False, "manifest": None}
    assert request["apps"][1]["exec"] == ["x", "--name", "y"]  # after --: b's arguments
    sent = PrepareRequest.from_json(json.loads(json.dumps(request)))
    assert sent == parse_command_line(words)[0]
    assert sent.name == "pod"
    assert sent.restart == "on-failure:3"
    assert sent.keep_image_etc is True
    assert [(p.name, p.host_port, p.host_ip) for p in sent.ports] == [
        ("http", 8080, None), ("dns", 53, "127.0.0.1")]
    assert sent.volumes[0]["kind"] == "empty"
    assert sent.annotations == {"k": "v"}
    one = sent.apps[0]
    assert (one.image, one.name, one.exec, one.user, one.group, one.working_directory) == (
        "example.com/a", "one", ["/bin/sh", "-c", "echo hi"], "1000", "100", "/tmp")
    assert one.environment == {"A": "1"}
    assert one.mounts == [("data", "/data", False)]
    from jetpack.errors import UsageError

    for bad in ([], {"apps": "x"}, {"apps": [{"image": 1}]}, {"apps": [{"image": "a",
                "mounts": [["v"]]}]}, {"apps": [{"image": "a"}], "ports": [
                    {"name": "p", "host_port": "80"}]}, {"apps": [{"image": "a"}],
                                                         "restart": "sometimes"},
                {"apps": [{"image": "a", "environment": {"A": 1}}]}):
        with pytest.raises(UsageError):
            PrepareRequest.from_json(bad)


# --- no supervisor --------------------------------------------------------------------------


def test_status_json_without_supervisor(jetpack_dir: Jetpack) -> None:
    jetpack_dir("init")
    out = jetpack_dir("status", "--json", check=False)
    assert out.returncode == 1  # as plain `status`: exit 1 when none runs
    assert json.loads(out.stdout) == {"running": False}
    assert out.stderr == ""
    plain = jetpack_dir("status", check=False)
    assert plain.returncode == 1
    assert plain.stderr.startswith("jetpack: no supervisor is running")


def test_run_without_supervisor_leaves_nothing(host: Host) -> None:
    for args in (["run", "example.com/busybox", "--exec", "/bin/true"],
                 ["run", "--rm", "-it", "example.com/busybox"]):
        out = host.jp(*args, check=False)
        assert out.returncode == 1
        lines = out.stderr.splitlines()
        assert len(lines) == 2, out.stderr
        assert lines[0].startswith("jetpack: no supervisor is running (no control socket at ")
        assert lines[1].startswith("jetpack: start it with 'jetpack daemon'")
        assert json.loads(host.jp("list", "--json").stdout) == []
        assert not list((host.jp.root / "pods").glob("*"))


def test_export_writes_the_aci_to_stdout(host: Host, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    host.jp("export", "example.com/busybox", str(tmp_path / "file.aci"))
    out = jp_bytes(host.jp, "export", "example.com/busybox", "-", cwd=work)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (tmp_path / "file.aci").read_bytes()
    assert list(work.iterdir()) == []  # no file named "-"
    assert not list(host.jp.root.glob(".export-*"))
    # and it round-trips through import -
    again = subprocess.run(host.jp.argv("import", "-"), input=out.stdout, capture_output=True,
                           env=host.jp.env(), timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-1].startswith(b"sha512-")


# --- list, status POD, inspect ----------------------------------------------------------------


def test_list_short_uuids_ages_and_full_json(host: Host) -> None:
    pods = [host.jp("prepare", "example.com/busybox", "--name", name).stdout.split()[-1]
            for name in ("alpha", "beta")]
    table = host.jp("list").stdout.splitlines()
    assert table[0].split() == ["UUID", "NAME", "STATE", "IP", "CREATED", "BOOT", "APPS"]
    for uuid, line in zip(pods, table[1:], strict=True):
        short, _name, state, _ip, created, _ago = line.split()[:6]
        assert short == uuid[:8]
        assert state == "prepared"
        assert re.fullmatch(r"\d+[smhd]", created), line
    assert [line.split()[0] for line in host.jp("list", "--no-trunc").stdout.splitlines()[1:]
            ] == pods
    assert host.jp("list", "-q").stdout.split() == pods
    listed = json.loads(host.jp("list", "--json").stdout)
    assert [p["uuid"] for p in listed] == pods
    assert all(re.fullmatch(RFC3339, p["created"]) for p in listed)
    # a short UUID names the pod wherever a pod is named
    shown = json.loads(host.jp("status", pods[1][:8], "--json").stdout)
    assert shown["uuid"] == pods[1]
    assert host.jp("inspect", pods[1][:8], "--json").stdout == \
        host.jp("status", "beta", "-o", "json").stdout
    host.jp("rm", pods[0][:8])
    assert [p["uuid"] for p in json.loads(host.jp("pods", "--json").stdout)] == [pods[1]]


def test_light_listing_matches_the_store(host: Host) -> None:
    """``list``'s table reads the database with sqlite3 alone; it must see what PodStore sees."""
    from jetpack.cli import podview
    from jetpack.config import load_config
    from jetpack.state import StateDB
    from jetpack.state.db import DB_NAME
    from jetpack.store.pods import PodStore

    assert podview.DB_NAME == DB_NAME
    host.jp("prepare", "example.com/busybox", "--name", "one")
    host.jp("prepare", "example.com/busybox", "example.com/busybox", "--app-name", "second",
            "--name", "two")
    config = load_config(host.jp.conf)
    light = podview.read_pods(str(config.root))
    with StateDB.for_root(config.root) as db:
        store = PodStore(db).all()
    assert light is not None
    assert [(p["uuid"], p["name"], p["state"], p["ip"], p["created"], p["boot"],
             p["priority"], [(a["name"], a["state"], a["exit_status"]) for a in p["apps"]])
            for p in light] == \
        [(p.uuid, p.name, p.state, p.ip, p.created, p.boot, p.priority,
          [(a.name, a.state, a.exit_status) for a in p.apps]) for p in store]
    assert podview.read_pods(str(config.root / "nowhere")) is None


def test_short_uuids_stay_unique() -> None:
    from jetpack.cli.podview import age, short_uuids

    uuids = ["0123456789ab-1", "0123456789ab-2", "abcdef01-0000", "abcdef02-0000"]
    assert short_uuids(uuids) == {"0123456789ab-1": "0123456789ab-1",
                                  "0123456789ab-2": "0123456789ab-2",
                                  "abcdef01-0000": "abcdef01", "abcdef02-0000": "abcdef02"}
    assert short_uuids(["only-one-uuid-here"]) == {"only-one-uuid-here": "only-one"}
    assert [age(100.0 - s, now=100.0) for s in (5, 125, 7300, 3 * 86400)] == \
        ["5s ago", "2m ago", "2h ago", "3d ago"]


def test_list_without_init_explains(jetpack_dir: Jetpack) -> None:
    out = jetpack_dir("list", check=False)
    assert out.returncode == 1
    assert "jetpack init" in out.stderr


# --- with a supervisor: status, inspect of a running pod, logs -------------------------------


def test_status_inspect_and_logs_with_a_supervisor(host: Host) -> None:
    host.start()
    info = json.loads(host.jp("status", "--json").stdout)
    assert info["running"] is True
    assert info["pid"] == host.daemon.pid  # type: ignore[union-attr]
    script = "echo one; sleep 1.2; echo two; echo three; printf tail"
    pod = host.jp("prepare", "example.com/busybox", "--name", "talker",
                  "--exec", f"/bin/sh -c '{script}; sleep 60'").stdout.split()[-1]
    host.jp("start", pod[:8])
    host.wait_for("the output", lambda: "tail" in host.jp("logs", "talker").stdout)

    shown = json.loads(host.jp("inspect", "talker", "--json").stdout)
    assert shown["uuid"] == pod
    assert shown["state"] == "running"
    assert shown["network"]["ip"] == shown["ip"] is not None
    assert re.fullmatch(RFC3339, shown["started"])
    (app,) = shown["apps"]
    assert app["image_name"] == "example.com/busybox"
    assert app["pid"]
    assert app["exec"][:2] == ["/bin/sh", "-c"]
    assert {"volumes", "annotations", "limits"} <= shown.keys()
    human = host.jp("status", "talker").stdout
    for needle in (pod, "running", shown["ip"], "app busybox", "example.com/busybox",
                   "mounts", "started"):
        assert needle in human, human

    assert host.jp("logs", "talker").stdout == "one\ntwo\nthree\ntail"
    assert host.jp("logs", "talker", "--tail", "2").stdout == "three\ntail"
    assert host.jp("logs", "talker", "-n", "0").stdout == ""
    stamped = host.jp("logs", "talker", "--timestamps").stdout.splitlines()
    assert len(stamped) == 4
    times = [datetime.fromisoformat(line.split()[0]) for line in stamped]
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three", "tail"]
    assert all(re.fullmatch(RFC3339, line.split()[0]) for line in stamped)
    assert times == sorted(times)
    assert (times[1] - times[0]).total_seconds() >= 1.0  # the sleep between them
    since = stamped[1].split()[0]
    assert host.jp("logs", "talker", "--since", since).stdout == "two\nthree\ntail"
    assert host.jp("logs", "talker", "--since", "1h").stdout.startswith("one\n")
    assert host.jp("logs", "talker", "--since", "2026-01-01T00:00:00+05:00",
                   "-n", "1").stdout == "tail"
    bad = host.jp("logs", "talker", "--since", "yesterday", check=False)
    assert bad.returncode == 2
    assert "--since" in bad.stderr

    # -f with --tail and -t (combined: -ft): the last lines (the unfinished one counts, and
    # is printed once finished or when the pod stops), then until the pod stops
    follower = subprocess.Popen(host.jp.argv("logs", "talker", "-ft", "--tail", "2"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=host.jp.env())
    time.sleep(0.5)
    assert follower.poll() is None  # still following the running pod
    host.jp("stop", "talker")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert re.fullmatch(f"{RFC3339} three\n{RFC3339} tail", out), out


# --- completion, manual page, colours -------------------------------------------------------


def completions(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(
        ["bash", "-c", f'source "{script}"; COMP_WORDS=({line}); '
                       f"COMP_CWORD={len(words) - 1}; _jetpack; "
                       'printf "%s\\n" "${COMPREPLY[@]}"'],
        capture_output=True, text=True, timeout=30, check=True)
    return sorted(out.stdout.split())


def test_bash_completion_from_the_command_table(jetpack_dir: Jetpack, tmp_path: Path) -> None:
    from jetpack.cli.main import ALIASES, COMMANDS

    script = tmp_path / "jetpack.bash"
    script.write_text(jetpack_dir("completion", "bash").stdout)
    assert completions(script, "jetpack", "") == sorted([*COMMANDS, *ALIASES])
    assert completions(script, "jetpack", "lis") == ["list"]
    assert completions(script, "jetpack", "r") == ["restart", "rm", "rmi", "run"]
    assert completions(script, "jetpack", "-c", "x.conf", "logs", "--t") == \
        ["--tail", "--timestamps"]
    assert completions(script, "jetpack", "pods", "--j") == ["--json"]
    assert completions(script, "jetpack", "completion", "") == ["bash", "zsh"]
    zsh = jetpack_dir("completion", "zsh").stdout
    assert zsh.startswith("#compdef jetpack\n")
    for name in COMMANDS:
        assert f"'{name}:" in zsh
    require(shutil.which("zsh") is not None, "zsh (to parse the zsh completion script)")
    checked = subprocess.run(["zsh", "-n"], input=zsh, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr


MAN_PAGE = REPO / "man" / "jetpack.8"


def test_manual_page_is_lint_clean_and_names_every_command() -> None:
    from jetpack.cli.main import ALIASES, COMMANDS

    assert shutil.which("mandoc"), "mandoc (scripts/test.sh installs it)"
    lint = subprocess.run(["mandoc", "-Tlint", str(MAN_PAGE)], capture_output=True, text=True)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    documented = set(re.findall(r"^\.It Cm ([a-z-]+)", MAN_PAGE.read_text(), re.MULTILINE))
    assert set(COMMANDS) <= documented, set(COMMANDS) - documented
    text = MAN_PAGE.read_text()
    for alias in ALIASES:
        assert f".Cm {alias}" in text


def test_make_install_places_the_manual_page(tmp_path: Path) -> None:
    out = subprocess.run(["make", "install", f"DESTDIR={tmp_path / 'stage'}", "PREFIX=/usr/local",
                          f"BUILDDIR={tmp_path / 'build'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    installed = tmp_path / "stage/usr/local/share/man/man8/jetpack.8"
    assert installed.read_bytes() == MAN_PAGE.read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o444


def on_a_terminal(jp: Jetpack, *args: str, env: dict[str, str] | None = None) -> bytes:
    """What the CLI writes when its stdout is a pty."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(jp.argv(*args), stdout=secondary, stderr=subprocess.PIPE,
                                env={**jp.env(), **(env or {})})
        os.close(secondary)
        secondary = -1
        data = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                data += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        return data
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)


def test_colours_on_a_terminal_only(host: Host) -> None:
    host.jp("prepare", "example.com/busybox", "--name", "painted")
    on_tty = on_a_terminal(host.jp, "list")
    assert b"\x1b[1mUUID" in on_tty  # a bold header
    assert b"painted" in on_tty
    assert b"\x1b[" not in on_a_terminal(host.jp, "list", env={"NO_COLOR": "1"})
    assert b"\x1b[" not in on_a_terminal(host.jp, "list", env={"TERM": "dumb"})
    piped = host.jp("list").stdout
    assert "\x1b[" not in piped
    assert "painted" in piped
    assert "\x1b[" not in host.jp("status", "painted").stdout


# --- the light transport and the import budget -----------------------------------------------


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                for piece in (answer[:7], answer[7:40], answer[40:]):  # split anywhere
                    conn.sendall(piece)
                    time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_light_client_reads_chunked_streams_and_lengths(tmp_path: Path) -> None:
    from jetpack.cli.client import ControlClient
    from jetpack.errors import NotFoundError

    client = ControlClient(tmp_path / "s.sock")
    chunked = (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
               b"transfer-encoding: chunked\r\n\r\n"
               b"6\r\n{\"a\":1\r\n3\r\n}\n{\r\nb\r\n\"b\":[1,2]}\n\r\n0\r\n\r\n")
    thread = serve_once(tmp_path / "s.sock", chunked)
    assert list(client.stream_sync("POST", "/v1/pods/x/run")) == [{"a": 1}, {"b": [1, 2]}]
    thread.join(10)
    (tmp_path / "s.sock").unlink()
    body = b'{"error": "no pod \'x\'", "kind": "NotFoundError", "hint": "list"}'
    thread = serve_once(tmp_path / "s.sock", b"HTTP/1.1 404 Not Found\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
    with pytest.raises(NotFoundError, match="no pod 'x'"):
        client.request_sync("GET", "/v1/pods/x")
    thread.join(10)


LOADED_MODULES = (
    "import sys\n"
    "from jetpack.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)
# Never added by `list` or `status` to what the interpreter loads by itself: each costs start-up
# time the issue-18 budget (2x the bare interpreter with sqlite3 and json) cannot pay. A module
# set, not a timing: it cannot flake.
NEVER = ("httpx", "trio", "ssl", "email", "http.client", "hypercorn", "structlog", "asyncio",
         "dataclasses", "typing", "inspect", "jetpack.store", "jetpack.state", "jetpack.stage1",
         "shutil", "platform", "ipaddress")


def loaded_modules(jp: Jetpack, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = subprocess.run([sys.executable, "-c", LOADED_MODULES, "-c", str(jp.conf), *args],
                         capture_output=True, text=True, env=jp.env(), timeout=60)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("MODULES "), out.stderr
    return out, set(last.split()[1:])


def interpreter_modules(jp: Jetpack) -> set[str]:
    """What the bare interpreter with sqlite3 and json has loaded, in the same environment (an
    editable install's finder, for one, brings pathlib in at every start)."""
    out = subprocess.run([sys.executable, "-c", "import sqlite3, json, sys; "
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=jp.env(), timeout=60, check=True)
    return set(out.stdout.split())


def test_list_and_status_stay_within_their_import_budget(host: Host) -> None:
    host.jp("prepare", "example.com/busybox", "--name", "budget")
    floor = interpreter_modules(host.jp)
    assert "http.client" not in floor
    checks = [("list",), ("list", "-q"), ("status",), ("status", "--json")]
    for supervised in (False, True):
        if supervised:
            host.start()
        for args in checks:
            out, modules = loaded_modules(host.jp, *args)
            assert out.returncode == (0 if supervised or args[0] == "list" else 1), out.stderr
            for heavy in NEVER:
                assert heavy not in modules - floor, f"jetpack {' '.join(args)} imports {heavy}"
            if args[0] == "list":
                assert ("budget" if args == ("list",) else "-") in out.stdout
                assert "sqlite3" in modules
            else:
                assert "sqlite3" not in modules
                assert "socket" in modules


# Never imported by `run IMAGE` (one request: the supervisor prepares, starts, streams, waits and
# destroys): the store, the database, appc's models, the isolation drivers, their network
# backends and trio are the supervisor's. A module set, not a timing.
RUN_NEVER = ("trio", "httpx", "ssl", "email", "http.client", "hypercorn", "asyncio", "structlog",
             "pyroute2", "ctypes.util", "tarfile", "sqlite3", "dataclasses", "typing",
             "inspect", "jetpack.store", "jetpack.state", "jetpack.appc", "jetpack.stage1",
             "jetpack.supervisor")


def test_run_stays_within_its_import_budget(host: Host) -> None:
    host.start()
    out, modules = loaded_modules(host.jp, "run", "--rm", "example.com/busybox", "--exec",
                                  "/bin/echo budget-ran")
    assert out.returncode == 0, out.stderr
    assert "budget-ran" in out.stdout
    assert "jetpack.cli.unixhttp" in modules  # the supervisor was asked
    for heavy in RUN_NEVER:
        assert heavy not in modules, f"jetpack run imports {heavy}"
    assert json.loads(host.jp("list", "--json").stdout) == []  # --rm: the pod is gone
    # run POD (a prepared pod named like this) takes the same request
    host.jp("prepare", "example.com/busybox", "--name", "named", "--exec", "/bin/echo by-name")
    out, modules = loaded_modules(host.jp, "run", "--rm", "named")
    assert out.returncode == 0, out.stderr
    assert "by-name" in out.stdout
    assert "jetpack.store" not in modules
    assert "sqlite3" not in modules
    assert json.loads(host.jp("list", "--json").stdout) == []


def test_log_times_index_follows_rotation(tmp_path: Path) -> None:
    """The app's monitor marks when bytes were written (NAME.times), rotating it with the log,
    so that --timestamps and --since still hold after a rotation."""
    from jetpack.cli import logs
    from jetpack.stage2.executor import TIMES_SUFFIX, RotatingLog

    assert logs.TIMES_SUFFIX == TIMES_SUFFIX
    dir_fd = os.open(tmp_path, os.O_DIRECTORY | os.O_RDONLY)
    try:
        log = RotatingLog(dir_fd, "app.log", 40)
        stamps = []
        for text in (b"first line\n", b"second line\n", b"third line, rotates\n", b"fourth\n"):
            stamps.append(time.time())
            log.write(text)
            time.sleep(0.01)
    finally:
        os.close(dir_fd)
    old, _ = logs.read_times(tmp_path / "app.log.1.times")
    new, _ = logs.read_times(tmp_path / "app.log.times")
    assert [offset for offset, _ in old] == [0, 11]
    assert [offset for offset, _ in new] == [0, 20]
    marks = [stamp for _, stamp in old + new]
    assert marks == sorted(marks)
    assert all(abs(mark - stamp) < 0.5 for mark, stamp in zip(marks, stamps, strict=True))
    reader = logs.Reader(tmp_path / "app.log")
    lines = reader.lines(tmp_path / "app.log.1") + reader.lines()
    assert [line for _, line in lines] == [b"first line\n", b"second line\n",
                                           b"third line, rotates\n", b"fourth\n"]
    assert [stamp for stamp, _ in lines] == marks
