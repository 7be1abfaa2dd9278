"""The fuzzing campaign's short fixed-seed run, the stored corpus replayed, and one regression
test per finding of the long run (bench/fuzz.py).

Every target (tests/fuzz_targets.py) checks: only ``jetpack.errors`` come out (the HTTP apps
answer a well-formed 4xx, never a 500), nothing is written outside the target's directory,
and memory stays bounded. No pods and no namespaces: the ACI reader imports into a dir-driver
store in a temporary directory, the control API runs over the fake runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_targets as ft
import pytest
from hypothesis import HealthCheck, given, settings

from jetpack.config import load_config
from jetpack.errors import ConfigError, FetchError, ImageError

# Fixed seed, no example database (nothing written into the repository), no deadline (the
# machine is shared); example counts sized for well under a minute in all.
EXAMPLES = {"aci": 60, "manifest": 120, "config": 120, "discovery": 30, "mds": 80, "api": 25}


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home() -> Iterator[None]:
    """Hypothesis caches what it learns (constants, unicode tables) under .hypothesis/ in the
    working directory even without a database: kept out of the tree."""
    from hypothesis import configuration

    home = ft.temporary_base()
    previous = configuration.storage_directory()
    configuration.set_hypothesis_home_dir(str(home))
    yield
    configuration.set_hypothesis_home_dir(str(previous))
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, Any]]:
    base = ft.temporary_base()
    yield ft.make_targets(base)
    shutil.rmtree(base)


def _fixed_seed(name: str) -> Any:
    return settings(max_examples=EXAMPLES[name], derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fuzz_fixed_seed(targets: dict[str, Any], name: str) -> None:
    target = targets[name]

    @_fixed_seed(name)
    @given(target.strategy())
    def run(value: Any) -> None:
        target.check(value)

    run()


@pytest.mark.parametrize("path", sorted(p for p in ft.CORPUS.glob("*/*")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_corpus(targets: dict[str, Any], path: Path) -> None:
    targets[path.parent.name].check_bytes(path.read_bytes())


def test_fuzz_corpus_is_small() -> None:
    files = list(ft.CORPUS.glob("*/*"))
    assert {p.parent.name for p in files} == set(EXAMPLES)
    assert all(p.stat().st_size <= 16 << 10 for p in files)


def test_fuzz_properties_catch_violations(targets: dict[str, Any]) -> None:
    """The checks fail for real: a 500, a bad close code, a write outside the store."""
    start = {"type": "http.response.start", "status": 500, "headers": []}
    with pytest.raises(ft.PropertyViolation, match="status 500"):
        ft.check_http_answer([start, {"type": "http.response.body", "body": b"{}"}],
                             json_errors=True)
    start["status"] = 404
    with pytest.raises(ft.PropertyViolation, match="not JSON"):
        ft.check_http_answer([start, {"type": "http.response.body", "body": b"<html>"}],
                             json_errors=True)
    with pytest.raises(ft.PropertyViolation, match="closed with 1011"):
        ft.check_websocket_answer([{"type": "websocket.accept"},
                                   {"type": "websocket.close", "code": 1011}])
    aci: ft.AciTarget = targets["aci"]
    stray = aci.decoy / "x" / "planted"
    before = os.stat(stray.parent)
    stray.write_text("as an escaping entry would")
    try:
        with pytest.raises(ft.PropertyViolation, match="written outside the store"):
            aci.check_bytes((ft.CORPUS / "aci" / "valid-ustar.aci").read_bytes())
    finally:
        stray.unlink()
        os.utime(stray.parent, ns=(before.st_atime_ns, before.st_mtime_ns))
        for record in aci.store.all():
            aci.store.destroy(record.id)


# --------------------------------------------------------------------------- regressions

def _import_refused(targets: dict[str, Any], entries: list[ft.TarEntry], match: str, *,
                    fmt: int = tarfile.PAX_FORMAT, global_pax: dict[str, str] | None = None
                    ) -> None:
    """The archive is refused with an ImageError saying ``match``; nothing is left behind;
    the same archive without the bad entries imports."""
    aci: ft.AciTarget = targets["aci"]
    manifest = json.dumps(ft.image_manifest()).encode()
    head = [ft.TarEntry("manifest", tarfile.REGTYPE, manifest),
            ft.TarEntry("rootfs", tarfile.DIRTYPE, mode=0o755)]
    data = ft.AciInput(head + entries, fmt, "gzip", global_pax=global_pax or {}).to_bytes()
    with pytest.raises(ImageError, match=match):
        aci.store.import_aci(ft.io.BytesIO(data))
    aci.check_bytes(data)  # and the campaign's checks: no leftovers, nothing outside
    good = ft.AciInput([*head, ft.TarEntry("rootfs/a", tarfile.REGTYPE, b"a")], fmt).to_bytes()
    record = aci.store.import_aci(ft.io.BytesIO(good))
    aci.store.destroy(record.id)


@pytest.mark.parametrize("fields", [{"gid": 2**40}, {"uid": 2**32 - 1}],
                         ids=["gid-2^40", "uid-2^32-1"])
def test_fuzz_regression_aci_owner_out_of_range(targets: dict[str, Any],
                                                fields: dict[str, int]) -> None:
    """Was: OverflowError from os.chown ("gid is less than minimum")."""
    _import_refused(targets, [ft.TarEntry("rootfs/a", tarfile.REGTYPE, b"x", **fields)],
                    r"archive entry 'rootfs/a': (owner|group) ID \d+ is out of range")


def test_fuzz_regression_aci_negative_owner_in_pax(targets: dict[str, Any]) -> None:
    """Was: OverflowError from os.chown ("uid is less than minimum")."""
    _import_refused(targets, [ft.TarEntry("rootfs/a", tarfile.REGTYPE, b"x", pax={"uid": "-5"})],
                    "owner ID -5 is out of range")


@pytest.mark.parametrize("mtime", ["nan", "1e400", "1e19"])
def test_fuzz_regression_aci_mtime_out_of_range(targets: dict[str, Any], mtime: str) -> None:
    """Was: ValueError (NaN) or OverflowError (time_t) from os.utime."""
    _import_refused(targets, [ft.TarEntry("rootfs/a", tarfile.REGTYPE, b"x",
                                          pax={"mtime": mtime})],
                    "modification time .* is out of range")


@pytest.mark.parametrize("pax", [{"path": "rootfs/q\x00r"}, {"linkpath": "x\x00y"},
                                 {"SCHILY.xattr.user.a\x00b": "v"}],
                         ids=["path", "linkpath", "xattr"])
def test_fuzz_regression_aci_nul_byte(targets: dict[str, Any], pax: dict[str, str]) -> None:
    """Was: ValueError "embedded null byte" from os.mkdir, os.symlink or os.setxattr."""
    kind = tarfile.SYMTYPE if "linkpath" in pax else tarfile.REGTYPE
    _import_refused(targets, [ft.TarEntry("rootfs/a", kind, b"" if kind == tarfile.SYMTYPE
                                          else b"x", pax=pax)], "NUL byte")


@pytest.mark.parametrize("key", ["GNU.sparse.size", "GNU.sparse.realsize"])
def test_fuzz_regression_aci_bad_global_pax_number(targets: dict[str, Any], key: str) -> None:
    """Was: ValueError from tarfile applying a global pax header's GNU.sparse.size."""
    _import_refused(targets, [ft.TarEntry("rootfs/a", tarfile.REGTYPE, b"x",
                                          pax={"comment": "c"})],
                    "corrupt archive: bad pax header value", global_pax={key: "0,1,2"})


@pytest.mark.parametrize("location", ["javascript:x", "mailto:a@b"])
def test_fuzz_regression_discovery_redirect_to_invalid_url(location: str) -> None:
    """Was: httpx.InvalidURL out of http.send (httpx builds the next request of a redirect
    even when it does not follow it)."""
    page = ft.Page(302, b"", location=location)
    with pytest.raises(FetchError, match="redirects to a location that is not a valid URL"):
        ft.trio.run(_endpoints, [page])
    # a redirect to a page with the tags is followed
    good = [ft.Page(302, b"", location="https://example.com/"),
            ft.Page(200, ft.META[0].encode())]
    endpoints = ft.trio.run(_endpoints, good)
    assert endpoints[0].aci == "https://e.com/example.com/app/sub-1.aci"


async def _endpoints(pages: list[ft.Page]) -> Any:
    served = iter(range(100))

    def handler(request: ft.httpx.Request) -> ft.httpx.Response:
        del request
        page = pages[next(served) % len(pages)]
        headers = {"location": page.location} if page.location is not None else {}
        return ft.httpx.Response(page.status, headers=headers, content=page.body)

    async with ft.httpx.AsyncClient(transport=ft.httpx.MockTransport(handler)) as http:
        return await ft.Discovery(http).endpoints(ft.DISCOVERY_NAME, {"version": "1"})


@pytest.mark.parametrize("value", ["9" * 400, "1000000000d"])
def test_fuzz_regression_config_duration_too_long(tmp_path: Path, value: str) -> None:
    """Was: accepted as inf (or just past timedelta.max); trimming the event log by
    events.retention.age then raised OverflowError."""
    conf = tmp_path / "jetpack.conf"
    conf.write_text(f"events.retention.age = {value}\n")
    with pytest.raises(ConfigError, match=r"jetpack.conf:1: events.retention.age: duration "
                                          r".* is too long"):
        load_config(conf, environ={})
    conf.write_text("events.retention.age = 999999999d\n")
    assert load_config(conf, environ={}).duration("events.retention.age") == 999999999 * 86400


def _post(targets: dict[str, Any], path: str, query: bytes) -> tuple[int, dict[str, Any]]:
    request = ft.AsgiInput("http", "POST", path, query, [], ft.body_messages([b""]))
    sent = targets["api"].answer(request)
    status = ft.check_http_answer(sent, json_errors=True)
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.mark.parametrize("signal", [b"%C2%B2", b"9" * 5000, b"99999", b"0"],
                         ids=["superscript-2", "5000-digits", "99999", "0"])
def test_fuzz_regression_api_kill_signal_number(targets: dict[str, Any], signal: bytes
                                                ) -> None:
    """Was: 500 (ValueError from int("²") or a 5000-digit int); 99999 went to the runtime."""
    status, body = _post(targets, "/v1/pods/sleeper/kill", b"signal=" + signal)
    assert (status, body["kind"]) == (400, "UsageError")
    assert "unknown signal number" in body["error"]
    status, body = _post(targets, "/v1/pods/sleeper/kill", b"signal=15")
    assert status == 200


@pytest.mark.parametrize("grace", [b"nan", b"inf", b"1e999"])
def test_fuzz_regression_api_stop_grace_not_finite(targets: dict[str, Any], grace: bytes
                                                   ) -> None:
    """Was: grace=nan made stopping an app that ignores SIGTERM fail inside the manager and
    the request never answered."""
    status, body = _post(targets, "/v1/pods/stubborn/stop", b"grace=" + grace)
    assert (status, body["kind"]) == (400, "UsageError")
    assert "finite" in body["error"]
    status, body = _post(targets, "/v1/pods/stubborn/stop", b"grace=0.01")
    assert (status, body["state"]) == (200, "exited")


@pytest.mark.parametrize("since", [b"%C2%B2", b"9" * 5000, b"0001-01-01T00:00:00%2B01:00"],
                         ids=["superscript-2", "5000-digits", "before-year-1"])
def test_fuzz_regression_events_since_out_of_range(targets: dict[str, Any], since: bytes
                                                   ) -> None:
    """Was: ValueError or OverflowError out of the /v1/events websocket handler."""
    request = ft.AsgiInput("websocket", "GET", "/v1/events", b"since=" + since, [],
                           [{"type": "websocket.connect"}])
    sent = targets["api"].answer(request)
    ft.check_websocket_answer(sent)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[-1]["code"] == 4400
    request.query = b"since=0"
    sent = targets["api"].answer(request)
    assert next(m["type"] for m in sent) == "websocket.accept"
    assert sent[-1]["code"] == 1000  # followed until the client left


@pytest.mark.parametrize("missing", ["mode", "uid", "gid"])
def test_fuzz_regression_pod_manifest_empty_volume_defaults_round_trip(missing: str) -> None:
    """Was: an empty volume without mode (uid, gid) parsed as None but was written out as
    "0755" (0), so parse → to_json → parse gave another value than the first parse."""
    volume = {"name": "data", "kind": "empty", "mode": "0700", "uid": 5, "gid": 6}
    del volume[missing]
    doc = {**ft.POD_MANIFEST, "volumes": [volume]}
    parsed = ft.PodManifest.from_json(json.dumps(doc))
    again = ft.PodManifest.from_json(parsed.to_json())
    assert again == parsed
    assert getattr(parsed.volumes[0], missing) == {"mode": "0755", "uid": 0, "gid": 0}[missing]
