"""Trust and fetch for real: a throwaway gpg key, an ACI signed with it, served with a discovery
page over real HTTPS (trustme certificates) on a loopback address, fetched by the CLI."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme

from jetpack.config import load_config
from jetpack.errors import TrustError
from jetpack.trust import add_key, verify_detached

from acis import aci_from_entries, dir_entry, file_entry, manifest, manifest_entry
from conftest import REPO, Jetpack, write_conf


@dataclass
class Signer:
    home: Path
    public_key: bytes

    def sign(self, path: Path) -> Path:
        subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--armor",
                        "--detach-sign", "--output", f"{path}.asc", str(path)], check=True,
                       capture_output=True)
        return Path(f"{path}.asc")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    """A signing key in a gpg home of its own, whose agent is stopped afterwards (it would
    outlive the suite otherwise)."""
    home = tmp_path_factory.mktemp("gpg")
    os.chmod(home, 0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
                    "--passphrase", "", "--quick-gen-key", "Jetpack Test <test@jetpack.invalid>",
                    "ed25519", "sign", "never"], check=True, capture_output=True)
    public = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export"],
                            check=True, capture_output=True).stdout
    try:
        yield Signer(home, public)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


@dataclass
class Site:
    host: str
    files: dict[str, bytes] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    requests: list[str] = field(default_factory=list)

    async def app(self, scope: dict[str, object], receive: Callable[..., object],
                  send: Callable[..., object]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()  # type: ignore[misc]
                kind = message["type"]  # type: ignore[index]
                await send({"type": f"{kind}.complete"})  # type: ignore[operator]
                if kind == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        path = str(scope["path"])
        query = bytes(scope["query_string"]).decode()  # type: ignore[call-overload]
        self.requests.append(f"{path}?{query}")
        if path in self.redirects:
            await send({"type": "http.response.start", "status": 302,  # type: ignore[operator]
                        "headers": [(b"location", self.redirects[path].encode()),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]
            return
        if "ac-discovery=1" in query and path.rstrip("/") in self.pages:
            body, status = self.pages[path.rstrip("/")].encode(), 200
        elif path in self.files:
            body, status = self.files[path], 200
        else:
            body, status = b"not found", 404
        await send({"type": "http.response.start", "status": status,  # type: ignore[operator]
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.fixture
async def site(root: None, tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Site]:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    host = str(ipaddress.IPv4Address("127.88.0.0") + secrets.randbelow(60000) + 2)
    ca = trustme.CA()
    cert = ca.issue_cert(host)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    config = HypercornConfig()
    config.bind = [f"{host}:443"]
    config.certfile = config.keyfile = str(tmp_path / "server.pem")
    config.accesslog = config.errorlog = None
    site = Site(host)
    done = trio.Event()
    await nursery.start(lambda task_status: serve(site.app, config,  # type: ignore[arg-type]
                                                  shutdown_trigger=done.wait,
                                                  task_status=task_status))
    yield site
    done.set()


async def cli(jp: Jetpack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO), SSL_CERT_FILE=str(tmp_path / "ca.pem"))
    return await trio.run_process(
        [sys.executable, "-m", "jetpack.cli.main", "-c", str(jp.conf), *args],
        capture_stdout=True, capture_stderr=True, check=False, env=env)


def publish(site: Site, signer: Signer, tmp_path: Path, app: str) -> tuple[Path, str]:
    name = f"{site.host}/{app}"
    aci = aci_from_entries(tmp_path / f"{app}.aci", [
        manifest_entry(manifest(name)), dir_entry("rootfs"), file_entry("rootfs/hello", b"hi")])
    signer.sign(aci)
    template = f"https://{site.host}/files/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}"
    site.pages[f"/{app}"] = (
        f'<html><head><meta name="ac-discovery" content="{name} {template}">'
        f'<meta name="ac-discovery-pubkeys" content="{name} https://{site.host}/key.gpg">'
        "</head></html>")
    base = f"/files/{name}-1.0.0-{manifest(name)['labels'][1]['value']}-" \
           f"{manifest(name)['labels'][2]['value']}"
    site.files[base + ".aci"] = aci.read_bytes()
    site.files[base + ".aci.asc"] = Path(f"{aci}.asc").read_bytes()
    site.files["/key.gpg"] = signer.public_key
    return aci, name


def state(tmp_path: Path, label: str) -> Jetpack:
    root = tmp_path / label
    jp = Jetpack(write_conf(tmp_path / f"{label}.conf", **{"root.path": str(root)}), root)
    jp("init")
    return jp


def leftovers(jp: Jetpack) -> list[str]:
    return [p.name for p in (jp.root / "tmp").iterdir()] + \
        [p.name for p in (jp.root / "images").iterdir()]


async def test_trust_discover_and_fetch(site: Site, signer: Signer, tmp_path: Path) -> None:
    aci, name = publish(site, signer, tmp_path, "app")
    jp = state(tmp_path, "good")
    out = await cli(jp, tmp_path, "trust", "--prefix", name, "--discover", "--yes")
    assert out.returncode == 0, out.stderr
    assert b"Jetpack Test" in out.stdout
    out = await cli(jp, tmp_path, "fetch", f"{name}:1.0.0")
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.decode().split()[-1]
    import gzip

    assert image_id == "sha512-" + hashlib.sha512(gzip.decompress(aci.read_bytes())).hexdigest()
    assert any("ac-discovery=1" in r for r in site.requests)
    # in the store now: fetched again only with --pull=update
    before = len(site.requests)
    assert (await cli(jp, tmp_path, "fetch", f"{name}:1.0.0")).returncode == 0
    assert len(site.requests) == before
    assert (await cli(jp, tmp_path, "fetch", f"{name}:1.0.0", "--pull", "update")
            ).returncode == 0
    assert len(site.requests) > before
    assert jp("trust", "--list", "--json").stdout.count(name) == 1
    # trusting and verifying used only public keys: no gpg-agent outlives the commands
    agents = await trio.run_process(["pgrep", "-af", "gpg-agent"], capture_stdout=True,
                                    check=False)
    assert [line for line in agents.stdout.decode().splitlines()
            if str(tmp_path / "good") in line and "defunct" not in line] == []


async def test_untrusted_key_is_refused(site: Site, signer: Signer, tmp_path: Path) -> None:
    _, name = publish(site, signer, tmp_path, "app")
    jp = state(tmp_path, "untrusted")
    out = await cli(jp, tmp_path, "fetch", f"{name}:1.0.0")
    assert out.returncode == 1
    assert b"not trusted" in out.stderr
    assert jp("images", "--json").stdout.strip() == "[]"
    assert leftovers(jp) == []


async def test_altered_aci_is_refused(site: Site, signer: Signer, tmp_path: Path) -> None:
    _, name = publish(site, signer, tmp_path, "app")
    path = next(p for p in site.files if p.endswith(".aci"))
    data = bytearray(site.files[path])
    data[len(data) // 2] ^= 0x01
    site.files[path] = bytes(data)
    jp = state(tmp_path, "altered")
    assert (await cli(jp, tmp_path, "trust", "--prefix", name, "--discover", "--yes")
            ).returncode == 0
    out = await cli(jp, tmp_path, "fetch", f"{name}:1.0.0")
    assert out.returncode == 1
    assert b"does not match" in out.stderr
    assert jp("images", "--json").stdout.strip() == "[]"
    assert leftovers(jp) == []


async def test_fetch_errors_name_the_url(site: Site, signer: Signer, tmp_path: Path) -> None:
    jp = state(tmp_path, "errors")
    out = await cli(jp, tmp_path, "fetch", f"https://{site.host}/files/missing.aci",
                    "--insecure", "image")
    assert out.returncode == 1
    assert f"https://{site.host}/files/missing.aci: HTTP 404".encode() in out.stderr
    out = await cli(jp, tmp_path, "fetch", "https://127.0.0.1:1/x.aci")
    assert out.returncode == 1
    assert b"https://127.0.0.1:1/x.aci" in out.stderr
    assert b"Traceback" not in out.stderr
    assert leftovers(jp) == []


async def test_prefix_covers_whole_segments(signer: Signer, tmp_path: Path) -> None:
    jp = state(tmp_path, "segments")
    config = load_config(jp.conf, environ={})
    add_key(config, signer.public_key, "example.com/foo")
    for name, ok in (("example.com/foo", True), ("example.com/foo/bar", True),
                     ("example.com/foobar", False)):
        aci = aci_from_entries(tmp_path / f"{name.replace('/', '_')}.aci", [
            manifest_entry(manifest(name)), dir_entry("rootfs")])
        sig = signer.sign(aci)
        if ok:
            assert len(verify_detached(config, name, aci, sig)) == 40
        else:
            with pytest.raises(TrustError, match=r"not trusted for example\.com/foobar"):
                verify_detached(config, name, aci, sig)
    # and a local import with --sig uses the same check
    aci = tmp_path / "example.com_foobar.aci"
    out = jp("import", str(aci), "--sig", f"{aci}.asc", check=False)
    assert out.returncode == 1
    assert "not trusted" in out.stderr


async def test_prepare_fetches_a_missing_image(site: Site, signer: Signer, tmp_path: Path
                                               ) -> None:
    _, name = publish(site, signer, tmp_path, "app")
    jp = state(tmp_path, "prepare")
    assert (await cli(jp, tmp_path, "trust", "--prefix", name, "--discover", "--yes")
            ).returncode == 0
    out = await cli(jp, tmp_path, "prepare", f"{name}:1.0.0", "--exec", "/hello")
    assert out.returncode == 0, out.stderr
    assert b"fetching it" in out.stderr
    assert name in jp("images", "--json").stdout
    untrusted = state(tmp_path, "prepare-untrusted")
    out = await cli(untrusted, tmp_path, "prepare", f"{name}:1.0.0", "--exec", "/hello")
    assert out.returncode == 1
    assert b"not trusted" in out.stderr
    assert untrusted("list", "--json").stdout.strip() == "[]"
