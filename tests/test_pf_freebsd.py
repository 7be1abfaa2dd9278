"""FreeBSD networking against stand-in ifconfig(8) and pfctl(8) that parse what they are given."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from jetpack.errors import NetworkError
from jetpack.stage1.network import freebsd

from conftest import REPO

pytestmark = pytest.mark.freebsd

STANDINS = REPO / "testing" / "standins"


@pytest.fixture
def standin_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "standin"
    state.mkdir()
    monkeypatch.setenv("JETPACK_STANDIN_STATE", str(state))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    return state


def calls(state: Path, tool: str) -> list[list[str]]:
    lines = (state / "calls.log").read_text().splitlines()
    return [entry["argv"] for entry in map(json.loads, lines)
            if entry["tool"] == tool and "argv" in entry]


def pfctl(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pfctl", *argv], input=stdin, capture_output=True, text=True,
                          timeout=30)


def ifconfig_inet(state: Path, iface: str) -> list[str]:
    return list(json.loads((state / "ifconfig" / f"{iface}.json").read_text())["inet"])


def test_alias_and_unalias_on_lo1(standin_state: Path) -> None:
    assert freebsd.ensure_interface("lo1") is True
    assert freebsd.ensure_interface("lo1") is False
    freebsd.add_alias("172.23.0.2", "lo1")
    freebsd.add_alias("172.23.0.3", "lo1")
    assert ifconfig_inet(standin_state, "lo1") == ["172.23.0.2/32", "172.23.0.3/32"]
    with pytest.raises(NetworkError, match="File exists"):
        freebsd.add_alias("172.23.0.2", "lo1")
    assert freebsd.remove_alias("172.23.0.2", "lo1") is True
    assert freebsd.remove_alias("172.23.0.2", "lo1") is False
    assert ifconfig_inet(standin_state, "lo1") == ["172.23.0.3/32"]
    assert calls(standin_state, "ifconfig") == [
        ["lo1"], ["lo1", "create"], ["lo1", "up"], ["lo1"],
        ["lo1", "alias", "172.23.0.2/32"], ["lo1", "alias", "172.23.0.3/32"],
        ["lo1", "alias", "172.23.0.2/32"],
        ["lo1", "-alias", "172.23.0.2"], ["lo1", "-alias", "172.23.0.2"],
    ]


def test_alias_on_a_missing_interface_names_it(standin_state: Path) -> None:
    with pytest.raises(NetworkError, match="interface lo7 does not exist"):
        freebsd.add_alias("172.23.0.2", "lo7")
    with pytest.raises(NetworkError, match="not an IPv4 address"):
        freebsd.add_alias("172.23.0.300", "lo1")


def test_pod_rules_text() -> None:
    rules = freebsd.pod_rules("172.23.0.2", [("tcp", 8080, 80, None),
                                             ("udp", 5353, 53, "192.0.2.2")],
                              interface="lo1", nat_interface="em0")
    assert rules == (
        "nat on em0 inet from 172.23.0.2 to any -> (em0)\n"
        "rdr pass on ! lo1 inet proto tcp from any to any port 8080 -> 172.23.0.2 port 80\n"
        "rdr pass on ! lo1 inet proto udp from any to 192.0.2.2 port 5353 -> 172.23.0.2 port 53\n"
    )


def test_anchor_load_and_flush(standin_state: Path) -> None:
    pod = str(uuid.uuid4())
    other = str(uuid.uuid4())
    rules = freebsd.pod_rules("172.23.0.2", [("tcp", 8080, 80, None)], nat_interface="em0")
    freebsd.load_pod_rules(pod, rules)
    freebsd.load_pod_rules(other, freebsd.pod_rules("172.23.0.3", [("tcp", 8081, 80, None)]))
    assert pfctl("-a", f"jetpack/{pod}", "-s", "nat").stdout == rules
    anchors = pfctl("-a", "jetpack", "-s", "Anchors").stdout.split()
    assert sorted(anchors) == sorted([f"jetpack/{pod}", f"jetpack/{other}"])
    # The main ruleset was never written.
    assert pfctl("-s", "rules").stdout == ""
    assert not (standin_state / "pf" / "_main.rules").exists()

    freebsd.flush_pod_rules(pod)
    freebsd.flush_pod_rules(pod)  # idempotent
    assert pfctl("-a", f"jetpack/{pod}", "-s", "nat").stdout == ""
    assert pfctl("-a", "jetpack", "-s", "Anchors").stdout.split() == [f"jetpack/{other}"]
    assert calls(standin_state, "pfctl")[:2] == [["-a", f"jetpack/{pod}", "-f", "-"],
                                                 ["-a", f"jetpack/{other}", "-f", "-"]]
    assert ["-a", f"jetpack/{pod}", "-F", "all"] in calls(standin_state, "pfctl")


@pytest.mark.parametrize("bad", [
    "rdr pass on ! lo1 inet proto tcp from any to any port 8080 172.23.0.2 port 80",  # no ->
    "rdr pass on ! lo1 inet proto tcp from any to any port 99999 -> 172.23.0.2 port 80",
    "rdr pass on ! lo1 inet from any to any port 8080 -> 172.23.0.2 port 80",  # port, no proto
    "nat on em0 from 172.23.0.0/16 to any -> ($ext_if)",  # undefined macro
    "nat on em0 from 172.23.0.300 to any -> (em0)",
    "nat on em0 from 172.23.0.0/16 to any -> (em0) port 80",
    "pass in on em0 proto tcp to any port 80",  # "to" without "from"
    "frobnicate all",
])
def test_malformed_rules_are_rejected_like_pfctl(standin_state: Path, bad: str) -> None:
    pod = str(uuid.uuid4())
    with pytest.raises(NetworkError, match="stdin:1: syntax error"):
        freebsd.load_pod_rules(pod, bad + "\n")
    assert not (standin_state / "pf" / "jetpack" / f"{pod}.rules").exists()


def test_the_stand_in_accepts_real_pf_conf_forms(standin_state: Path) -> None:
    conf = (
        'ext_if = "em0"\n'
        "# comment\n"
        "nat on $ext_if from 172.23.0.0/16 to any -> ($ext_if)\n"
        "rdr pass on ! lo1 inet proto tcp from any to any port 8080 -> 172.23.0.2 port 80\n"
        "pass in quick on $ext_if inet proto { tcp udp } from any to 172.23.0.2 port 80 "
        "keep state\n"
        "block drop in all\n"
    )
    done = pfctl("-a", "jetpack/test", "-f", "-", stdin=conf)
    assert done.returncode == 0, done.stderr
    shown = pfctl("-a", "jetpack/test", "-s", "rules").stdout.splitlines()
    assert shown == ["pass in quick on em0 inet proto { tcp udp } from any to 172.23.0.2 "
                     "port 80 keep state", "block drop in all"]
    # Translation after filtering is refused, as pfctl does.
    late = pfctl("-a", "jetpack/test", "-f", "-",
                 stdin="pass all\nnat on em0 from any to any -> (em0)\n")
    assert late.returncode == 1
    assert "Rules must be in order" in late.stderr
    assert pfctl("-a", "jetpack/test", "-z").returncode == 1  # unsupported, never ignored
    assert pfctl("-a", "jetpack/test", "-F", "bogus").returncode == 1


def test_default_route_interface_is_parsed() -> None:
    sample = ("   route to: default\ndestination: default\n       mask: default\n"
              "    gateway: 192.0.2.1\n        fib: 0\n  interface: vtnet0\n")
    assert freebsd.parse_default_interface(sample) == "vtnet0"
    assert freebsd.parse_default_interface("route: route has not been found\n") is None
