"""The ``zfs`` storage driver: a dataset per image sealed with ``@seal``, clones per pod app.

Uses py-libzfs when it imports (FreeBSD's port), else the ``zfs(8)`` command; command failures
are translated into ``StorageError`` naming the dataset and zfs's own message.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from jetpack.config import Config
from jetpack.errors import StorageError
from jetpack.storage.base import StorageCapabilities

# zfs-fuse reports a just-unmounted dataset as busy for a moment; destroy retries this long.
BUSY_RETRY_SECONDS = 5.0


class ZfsCommand:
    """A thin wrapper over ``zfs(8)``: argv in, stdout out, errors translated."""

    def __init__(self, executable: str = "zfs") -> None:
        self.executable = executable

    def run(self, *args: str) -> str:
        try:
            proc = subprocess.run(
                [self.executable, *args], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            raise StorageError(
                f"{self.executable}: command not found",
                hint="install ZFS, or set storage.driver = dir",
            ) from None
        if proc.returncode != 0:
            message = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
            raise StorageError(f"zfs {' '.join(args)}: {message}")
        return proc.stdout

    def exists(self, dataset: str) -> bool:
        try:
            self.run("list", "-H", "-o", "name", dataset)
        except StorageError:
            return False
        return True

    def get(self, dataset: str, prop: str) -> str:
        return self.run("get", "-H", "-p", "-o", "value", prop, dataset).strip()

    def destroy(self, dataset: str, *, recursive: bool = False) -> None:
        args = ["destroy", *(["-r"] if recursive else []), dataset]
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        while True:
            try:
                self.run(*args)
                return
            except StorageError as exc:
                if not self.exists(dataset):
                    return
                if "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@dataclass
class ZfsStorage:
    root: Path
    dataset: str
    zfs: ZfsCommand = field(default_factory=ZfsCommand)
    image_props: dict[str, str] = field(default_factory=dict)
    pod_props: dict[str, str] = field(default_factory=dict)
    name: str = "zfs"
    capabilities: ClassVar[StorageCapabilities] = StorageCapabilities(
        cow_clones=True, snapshots=True
    )

    @classmethod
    def from_config(cls, config: Config) -> ZfsStorage:
        return cls(
            root=config.root,
            dataset=config["root.zfs"],
            image_props=config.prefixed("images.zfs."),
            pod_props=config.prefixed("pods.zfs."),
        )

    def init(self) -> None:
        """Create ``<root.zfs>`` (mounted at the state root), ``/images`` and ``/pods``."""
        if not self.zfs.exists(self.dataset):
            self.zfs.run("create", "-p", "-o", f"mountpoint={self.root}", self.dataset)
        elif self.zfs.get(self.dataset, "mountpoint") != str(self.root):
            self.zfs.run("set", f"mountpoint={self.root}", self.dataset)
        if self.zfs.get(self.dataset, "mounted") != "yes":
            self.zfs.run("mount", self.dataset)
        for sub, props in (("images", self.image_props), ("pods", self.pod_props)):
            child = f"{self.dataset}/{sub}"
            if not self.zfs.exists(child):
                opts = [arg for k, v in sorted(props.items()) for arg in ("-o", f"{k}={v}")]
                self.zfs.run("create", *opts, child)
        try:
            (self.root / "tmp").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {self.root / 'tmp'}: {exc}") from None
