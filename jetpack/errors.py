"""The one exception hierarchy every layer translates its failures into.

A user sees ``str(error)`` (and ``error.hint`` when set) as one or two plain lines; nothing below
the CLI lets a ``CalledProcessError``, a raw ``OSError`` or a traceback escape for bad input.

    JetpackError
     ├── UsageError            bad command-line usage (exit 2)
     ├── ConfigError           a bad config line or value (names file:line)
     ├── ValidationError       an appc document broke a rule (names the JSON path)
     ├── NotFoundError         an unknown image, pod, app, key or tag
     ├── AmbiguousError        a reference matching several things (lists them)
     ├── ConflictError         an operation refused by current state (image in use, name taken)
     ├── ImageError            an image or archive that cannot be imported or rendered
     ├── StorageError          a storage driver (zfs, dir) failed
     ├── IsolationError        a stage1 driver (linux, jail) failed
     ├── NetworkError          pod networking or firewall failed
     ├── StateError            the state database failed or holds something impossible
     ├── TrustError            a signature is missing, untrusted or does not verify
     ├── FetchError            discovery or download failed (names the URL)
     ├── SupervisorError       the supervisor cannot be reached or refused a request
     └── PodStartError         a pod could not start (the reason its pod.failed event records)
"""

from __future__ import annotations


class JetpackError(Exception):
    """Base of every error jetpack reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(JetpackError):
    """The command line itself is wrong."""

    exit_code = 2


class ConfigError(JetpackError):
    """A configuration file line or value is wrong."""


class ValidationError(JetpackError):
    """An appc document (manifest, name, label, isolator) breaks a rule of the spec.

    ``path`` is the JSON path of the offending value (``app.exec[0]``), ``rule`` the rule broken.
    """

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}" if path else rule)
        self.path = path
        self.rule = rule


class NotFoundError(JetpackError):
    """A named thing (image, pod, app, key, tag) does not exist."""


class AmbiguousError(JetpackError):
    """A reference matches more than one thing; ``candidates`` lists them."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        listing = "\n".join(f"  {c}" for c in candidates)
        super().__init__(f"{message}; candidates:\n{listing}")
        self.candidates = candidates


class ConflictError(JetpackError):
    """The current state refuses the operation (image in use, name taken, pod running)."""


class ImageError(JetpackError):
    """An archive or image cannot be imported, exported or rendered."""


class StorageError(JetpackError):
    """A storage driver operation failed."""


class IsolationError(JetpackError):
    """A stage1 isolation driver operation failed."""


class NetworkError(JetpackError):
    """Pod networking or firewall configuration failed."""


class StateError(JetpackError):
    """The state database failed or holds an impossible value."""


class TrustError(JetpackError):
    """A signature is missing, made by an untrusted key, or does not verify."""


class FetchError(JetpackError):
    """Discovery or a download failed; the message names the URL and the cause."""


class SupervisorError(JetpackError):
    """The supervisor cannot be reached, or refused a request."""


class PodStartError(JetpackError):
    """A pod could not start (its sandbox, a volume, an app); the message names the pod and
    carries the reason its ``pod.failed`` event records."""


class PermissionDeniedError(JetpackError):
    """The peer may use the control socket but not ask this of it (HTTP 403): preparing a
    pod through the supervisor is root's."""
