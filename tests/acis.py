"""Building ACIs for tests: from a directory with plain tar + gzip (as a user would), or
entry by entry with tarfile (for hostile archives)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetpack.hostinfo import appc_arch, appc_os


def manifest(name: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
            "labels": [{"name": "version", "value": version},
                       {"name": "os", "value": appc_os()},
                       {"name": "arch", "value": appc_arch()}], **extra}


def aci_from_dir(tmp: Path, rootfs: Path, data: dict[str, Any], out: Path,
                 compress: str = "gzip") -> Path:
    """``tar`` the layout (manifest + rootfs) and compress it with the real command."""
    build = tmp / f"build-{out.stem}"
    build.mkdir()
    (build / "manifest").write_text(json.dumps(data))
    tar_path = out.with_suffix(".tar")
    rename = [] if rootfs.name == "rootfs" else [f"--transform=s,^{rootfs.name},rootfs,"]
    subprocess.run(["tar", "--numeric-owner", *rename, "-cf", str(tar_path),
                    "-C", str(build), "manifest", "-C", str(rootfs.parent), rootfs.name],
                   check=True)
    if compress == "none":
        tar_path.rename(out)
    else:
        tool = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz"}[compress]
        with out.open("wb") as f:
            subprocess.run([tool, "-c", str(tar_path)], stdout=f, check=True)
        tar_path.unlink()
    return out


def sha512_of_tar(aci: Path) -> str:
    """``sha512-`` + sha512sum of the decompressed tar, computed by the real tools."""
    cmd = f"(gzip -dc {aci} 2>/dev/null || bzip2 -dc {aci} 2>/dev/null || xz -dc {aci} " \
          f"2>/dev/null || cat {aci}) | sha512sum"
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    return "sha512-" + out.split()[0]


Entry = Callable[[tarfile.TarFile], None]


def file_entry(name: str, data: bytes = b"x", mode: int = 0o644) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return add


def dir_entry(name: str, mode: int = 0o755) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        tar.addfile(info)
    return add


def link_entry(name: str, target: str, *, hard: bool = False) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    return add


def manifest_entry(data: dict[str, Any] | bytes) -> Entry:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return file_entry("manifest", raw)


def aci_from_entries(out: Path, entries: list[Entry], mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode, format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            entry(tar)
    return out
