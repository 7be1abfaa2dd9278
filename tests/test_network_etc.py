"""A pod's /etc/resolv.conf and /etc/hosts contents."""

from __future__ import annotations

from pathlib import Path

from jetpack.config import Config, load_config
from jetpack.stage1.network.etc import pod_hosts, pod_resolv_conf


def config(tmp_path: Path, *overrides: str) -> Config:
    empty = tmp_path / "jetpack.conf"
    empty.write_text("")
    return load_config(empty, overrides, environ={})


def test_dns_servers_from_the_config_win(tmp_path: Path) -> None:
    conf = config(tmp_path, "ace.dns-servers=192.0.2.53, 198.51.100.53")
    assert pod_resolv_conf(conf, host_resolv_conf=tmp_path / "missing") == (
        "nameserver 192.0.2.53\nnameserver 198.51.100.53\n")


def test_the_host_s_resolv_conf_without_loopback_resolvers(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n"
                    "search example.com\noptions edns0\n")
    assert pod_resolv_conf(config(tmp_path), host_resolv_conf=host) == (
        "nameserver 192.0.2.1\nsearch example.com\noptions edns0\n")


def test_systemd_resolved_upstream_when_the_host_only_has_a_stub(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 127.0.0.53\nsearch lan\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 203.0.113.1\n")
    assert pod_resolv_conf(config(tmp_path), host_resolv_conf=host,
                           resolved_upstream=upstream) == "nameserver 203.0.113.1\n"
    upstream.unlink()
    text = pod_resolv_conf(config(tmp_path), host_resolv_conf=host, resolved_upstream=upstream)
    assert not [line for line in text.splitlines() if line.startswith("nameserver")]
    assert "ace.dns-servers" in text


def test_hosts_names_the_pod() -> None:
    assert pod_hosts("web", "172.23.0.2") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n172.23.0.2\tweb\n")
    assert pod_hosts("web", None).endswith("127.0.1.1\tweb\n")
