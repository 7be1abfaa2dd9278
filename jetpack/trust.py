"""Trusted signing keys, a GnuPG keyring per name prefix under the state root (never the user's
~/.gnupg), and verifying an ACI's detached signature against the keys trusted for its name.

Layout: ``<root>/trust/prefix.d/<prefix, %-escaped>/`` and ``<root>/trust/root.d/`` (keys
trusted for every name), each a GNUPGHOME of its own (mode 0700). Prefixes cover whole path
segments: a key for ``example.com/foo`` verifies ``example.com/foo/bar`` but never
``example.com/foobar``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

from jetpack.config import Config
from jetpack.discovery import covers
from jetpack.errors import NotFoundError, TrustError, UsageError

ROOT_KEYRING = "root.d"


@dataclass(frozen=True)
class TrustedKey:
    fingerprint: str
    uids: tuple[str, ...]
    prefix: str | None  # None: trusted for every name (--root)
    keyring: Path


def trust_dir(config: Config) -> Path:
    return config.root / "trust"


def keyring_for(config: Config, prefix: str | None) -> Path:
    if prefix is None:
        return trust_dir(config) / ROOT_KEYRING
    prefix = prefix.strip().rstrip("/")
    if not prefix:
        raise UsageError("an empty prefix: use --root to trust a key for every name")
    return trust_dir(config) / "prefix.d" / quote(prefix, safe="")


def _gpg(home: Path) -> Any:  # python-gnupg has no type hints
    import gnupg

    from jetpack.tools import require_tool

    gpg = require_tool("gpg", TrustError, "to check signatures and manage trusted keys")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    # Only public keys live here: no gpg-agent is needed, and one started would outlive us
    # (gpg daemonizes it per home directory; every trusted prefix would keep one running).
    return gnupg.GPG(gpgbinary=gpg, gnupghome=str(home), options=["--no-autostart"])


def inspect_key(data: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """Fingerprints and user ids of the keys in ``data`` (armored or binary), without
    importing them anywhere."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jetpack-gpg-") as scratch:
        gpg = _gpg(Path(scratch))
        result = gpg.import_keys(data)
        keys = gpg.list_keys()
        found = [(k["fingerprint"], tuple(k["uids"])) for k in keys]
        if not found:
            raise TrustError(f"no public key in the data given ({result.stderr.strip()[:200]})")
        return found


def add_key(config: Config, data: bytes, prefix: str | None) -> list[TrustedKey]:
    home = keyring_for(config, prefix)
    result = _gpg(home).import_keys(data)
    if not result.fingerprints:
        raise TrustError(f"gpg imported no key: {result.stderr.strip()[:300]}")
    keys = {k.fingerprint: k for k in list_keys(config)}
    return [keys[f] for f in result.fingerprints if f in keys]


def _keyrings(config: Config) -> list[tuple[str | None, Path]]:
    rings: list[tuple[str | None, Path]] = []
    root = trust_dir(config) / ROOT_KEYRING
    if root.is_dir():
        rings.append((None, root))
    prefixes = trust_dir(config) / "prefix.d"
    if prefixes.is_dir():
        for entry in sorted(prefixes.iterdir()):
            rings.append((unquote(entry.name), entry))
    return rings


def list_keys(config: Config) -> list[TrustedKey]:
    keys = []
    for prefix, home in _keyrings(config):
        for key in _gpg(home).list_keys():
            keys.append(TrustedKey(key["fingerprint"], tuple(key["uids"]), prefix, home))
    return keys


def remove_key(config: Config, fingerprint: str) -> list[TrustedKey]:
    wanted = fingerprint.replace(" ", "").upper()
    removed = []
    for key in list_keys(config):
        full = key.fingerprint.upper()
        if full == wanted or (len(wanted) >= 16 and full.endswith(wanted)):
            result = _gpg(key.keyring).delete_keys(key.fingerprint)
            if str(result) != "ok":
                raise TrustError(f"cannot remove key {key.fingerprint}: {result.stderr.strip()}")
            removed.append(key)
            if not _gpg(key.keyring).list_keys():
                shutil.rmtree(key.keyring, ignore_errors=True)
    if not removed:
        raise NotFoundError(f"no trusted key {fingerprint}", hint="'jetpack trust --list'")
    return removed


@dataclass(frozen=True)
class Verified:
    """A good signature by a trusted key, and the prefixes (None: every name) it is trusted
    for among the keyrings that accepted it."""

    fingerprint: str
    prefixes: tuple[str | None, ...]

    def covers(self, name: str) -> bool:
        return any(p is None or covers(p, name) for p in self.prefixes)


def verify_detached(config: Config, image_name: str, aci_path: Path, sig_path: Path) -> str:
    """The fingerprint of the trusted key that signed ``aci_path``; TrustError otherwise."""
    with aci_path.open("rb") as data:
        return verify_stream(config, image_name, data, sig_path, shown_as=aci_path.name
                             ).fingerprint


def verify_stream(config: Config, image_name: str | None, data: BinaryIO, sig_path: Path, *,
                  shown_as: str) -> Verified:
    """Check ``sig_path`` over the bytes of ``data`` (read from its current position, once per
    keyring; gpg reads them from a pipe, so what is checked is what this open file holds, not
    whatever a path names by then). ``image_name``: only keys trusted for it count; None (the
    name is not known before the archive is read): every trusted key counts, and the caller
    checks ``Verified.covers`` against the manifest's name. TrustError otherwise."""
    if not sig_path.exists():
        raise TrustError(f"no signature for {shown_as} ({sig_path} is missing)",
                         hint="fetch with its .asc, or --insecure=image to skip the check")
    start = data.tell()
    rings = [(p, h) for p, h in _keyrings(config)
             if image_name is None or p is None or covers(p, image_name)]
    untrusted = None
    good: list[str | None] = []
    fingerprint = ""
    for prefix, home in rings:
        data.seek(start)
        verified = _verify(home, data, sig_path)
        if verified.valid:
            fingerprint = str(verified.fingerprint)
            good.append(prefix)
            if image_name is not None:
                break
            continue
        status = (verified.status or "").lower()
        if "bad signature" in status or verified.status == "signature bad":
            raise TrustError(f"the signature of {shown_as} does not match it "
                             f"(key {verified.key_id}): the image was altered or the "
                             "signature is for another file")
        untrusted = verified.key_id or untrusted
    data.seek(start)
    if good:
        return Verified(fingerprint, tuple(good))
    if untrusted is None and not rings:
        untrusted = _signer(sig_path, data, shown_as)
        data.seek(start)
    wanted = image_name or "any name"
    raise TrustError(
        f"{shown_as} is signed by a key not trusted for {wanted}"
        + (f" (key {untrusted})" if untrusted else ""),
        hint=f"'jetpack trust --prefix {image_name or 'NAME'} KEY' trusts a key for it",
    )


def _verify(home: Path, data: BinaryIO, sig_path: Path) -> Any:
    """gpg's verdict on ``sig_path`` over ``data``, piped to ``gpg --verify SIG -``. gpg stops
    reading at a signature it cannot parse: that broken pipe is an unverified result."""
    try:
        return _gpg(home).verify_file(data, extra_args=[str(sig_path), "-"], close_file=False)
    except BrokenPipeError:
        return _Unverified()


class _Unverified:
    valid = False
    status = "no valid OpenPGP signature"
    key_id = None
    fingerprint = None


def _signer(sig_path: Path, data: BinaryIO, shown_as: str) -> str | None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jetpack-gpg-") as scratch:
        verified = _verify(Path(scratch), data, sig_path)
        if "bad signature" in (verified.status or "").lower():
            raise TrustError(f"the signature of {shown_as} does not match it")
        return str(verified.key_id) if verified.key_id else None
