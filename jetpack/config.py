"""jetpack.conf: the ``key = value`` properties file, its keys, defaults and lookup order.

Lookup order: built-in defaults < file (``-c``, else ``$JETPACK_CONF``, else the platform's path)
< ``-o KEY=VALUE`` overrides. A malformed line is an error naming file:line; an unknown key warns.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Callable, Iterable, Mapping

from jetpack.errors import ConfigError
from jetpack.hostinfo import platform_kind

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path

ENV_VAR = "JETPACK_CONF"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# datetime.timedelta.max in seconds (not imported: datetime is start-up time for every command)
_MAX_DURATION = 999_999_999 * 86_400 + 86_399.999999
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE = {"on", "yes", "true", "1"}
_FALSE = {"off", "no", "false", "0", ""}


def parse_duration(text: str) -> float:
    """Seconds in ``10s``, ``100ms``, ``30m``, ``2h``, ``30d`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 100ms, 10s, 30m, 30d)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    # 400 nines make inf, which timedelta (events.retention.age) refuses (found by fuzzing)
    if not seconds < _MAX_DURATION:
        raise ValueError(f"duration {text[:40]!r} is too long (at most 999999999d)")
    return seconds


def parse_size(text: str) -> int:
    """Bytes in ``512``, ``64K``, ``100M``, ``16G``, ``1T`` (binary units; ``GiB``/``GB`` too)."""
    match = _SIZE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"not a size: {text!r} (examples: 512M, 16G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_bool(text: str) -> bool:
    """``on``/``off`` (also yes/no, true/false, 1/0)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not on/off: {text!r}")


def _check_choice(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")

    return check


def _check_duration(value: str) -> None:
    parse_duration(value)


def _check_size(value: str) -> None:
    parse_size(value)


def _check_bool(value: str) -> None:
    parse_bool(value)


def _check_int(value: str) -> None:
    if not value.strip().isdigit() or int(value) <= 0:
        raise ValueError(f"must be a positive integer, not {value!r}")


def _check_port(value: str) -> None:
    if not value.strip().isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"must be a TCP port (1-65535), not {value!r}")


_IPV4_WITH_PREFIX = re.compile(r"(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\."
                               r"(0|[1-9]\d{0,2})/([1-9]|[12]\d|30)")


def _check_network(value: str) -> None:
    # The common well-formed value passes here; anything else gets ipaddress's full check and
    # its explanation (not imported for every CLI command: start-up time).
    match = _IPV4_WITH_PREFIX.fullmatch(value)
    if match and all(int(octet) <= 255 for octet in match.groups()[:4]):
        address = 0
        for octet in match.groups()[:4]:
            address = address << 8 | int(octet)
        host_bits = (1 << (32 - int(match.group(5)))) - 1
        if address & host_bits not in (0, host_bits):
            return
    import ipaddress

    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise ValueError(f"must be an IPv4 address with prefix (172.23.0.1/16): {exc}") from None
    if iface.network.prefixlen > 30:
        raise ValueError(f"network {value} is too small for pods (prefix at most /30)")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise ValueError(f"{value}: the host address must not be the network or broadcast address")


def _check_hex(value: str) -> None:
    if value and not re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,}", value):
        raise ValueError("must be hex, at least 16 bytes (32 hex digits)")


def _check_listen(value: str) -> None:
    if not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be host:port, not {value!r}")
    if port.strip() != "0":  # 0: a free port, picked at start (the URL says which)
        _check_port(port)


def _no_check(value: str) -> None:
    del value


class Key:
    """One known configuration key: its default (per platform) and how to check a value.

    Plain classes here and in ``Config``: every CLI command loads this module, and
    ``dataclasses`` costs more start-up time than ``jetpack list`` may spend in all."""

    __slots__ = ("check", "default_freebsd", "default_linux", "doc", "name")

    def __init__(self, name: str, default_linux: str, default_freebsd: str,
                 check: Callable[[str], None] = _no_check, doc: str = "") -> None:
        self.name = name
        self.default_linux = default_linux
        self.default_freebsd = default_freebsd
        self.check = check
        self.doc = doc

    def __repr__(self) -> str:
        return f"Key({self.name!r})"

    def default(self) -> str:
        return self.default_freebsd if platform_kind() == "freebsd" else self.default_linux


def _key(
    name: str,
    default: str,
    check: Callable[[str], None] = _no_check,
    *,
    freebsd: str | None = None,
    doc: str = "",
) -> Key:
    return Key(name, default, default if freebsd is None else freebsd, check, doc)


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        _key("root.path", "/var/jetpack", doc="state root"),
        _key("storage.driver", "dir", _check_choice("zfs", "dir"), freebsd="zfs"),
        _key("root.zfs", "zroot/jetpack", doc="ZFS dataset holding images and pods"),
        _key("isolation.driver", "linux", _check_choice("linux", "jail"), freebsd="jail"),
        _key("jail.namePrefix", "jetpack/"),
        _key("jail.interface", "jetpack0", freebsd="lo1"),
        _key("jail.network", "172.23.0.1/16", _check_network),
        _key("jail.nat", "off", _check_bool),
        _key("ace.dns-servers", "", doc="comma or space separated; empty: the host's resolv.conf"),
        _key("supervisor.socket", "/var/run/jetpack/jetpack.sock"),
        _key("supervisor.group", ""),
        _key("pod.stop-timeout", "10s", _check_duration),
        _key("restart.delay", "100ms", _check_duration),
        _key("restart.max-delay", "1m", _check_duration),
        _key("restart.reset-after", "10s", _check_duration),
        _key("boot.parallel", "4", _check_int),
        _key("events.retention.count", "100000", _check_int),
        _key("events.retention.age", "30d", _check_duration),
        _key("http.listen", "", _check_listen,
             doc="host:port of the HTTP listener (API, events, dashboard); empty: off"),
        _key("http.token", "", doc="bearer token of the HTTP listener"),
        _key("http.tls-cert", "", doc="PEM certificate chain: the listener speaks HTTPS"),
        _key("http.tls-key", "", doc="PEM private key of http.tls-cert"),
        _key("images.insecure", "none", _check_choice("none", "http", "image", "all")),
        _key("images.max-size", "16G", _check_size, doc="largest uncompressed ACI accepted"),
        _key("images.max-entries", "1000000", _check_int, doc="most entries in an ACI"),
        _key("mds.port", "1104", _check_port),
        _key("mds.signing-key", "", _check_hex),
        _key("mds.token-key", "", _check_hex),
        _key("debug", "off", _check_bool),
    )
}

ALIASES = {
    "root.zfs.mountpoint": "root.path",
    # The listener served only /v1/events when it was introduced.
    "events.listen": "http.listen",
    "events.token": "http.token",
}

# Prefixes whose keys are free-form (dataset properties passed through to zfs create -o).
FREEFORM_PREFIXES = ("images.zfs.", "pods.zfs.", "jail.param.")


def default_path() -> Path:
    """The configuration file used when neither ``-c`` nor ``$JETPACK_CONF`` names one."""
    from pathlib import Path  # here: pathlib is start-up time every CLI command would pay

    return Path(_default_path())


def _default_path() -> str:
    return "/usr/local/etc/jetpack.conf" if platform_kind() == "freebsd" else "/etc/jetpack.conf"


class Config:
    """The merged configuration: typed accessors over validated string values."""

    def __init__(self, values: dict[str, str], source: str | os.PathLike[str] | None = None,
                 warnings: list[str] | None = None) -> None:
        self.values = values
        self._source = None if source is None else os.fspath(source)
        self.warnings = [] if warnings is None else warnings

    @property
    def source(self) -> Path | None:
        """The file the values came from (None: defaults and overrides only)."""
        if self._source is None:
            return None
        from pathlib import Path

        return Path(self._source)

    def __repr__(self) -> str:
        return f"Config(source={self.source!r})"

    def __eq__(self, other: object) -> builtins.bool:
        if not isinstance(other, Config):
            return NotImplemented
        return (self.values, self._source) == (other.values, other._source)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __getitem__(self, key: str) -> str:
        key = ALIASES.get(key, key)
        try:
            return self.values[key]
        except KeyError:
            raise ConfigError(f"unknown configuration key {key!r}") from None

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(ALIASES.get(key, key), default)

    def bool(self, key: str) -> builtins.bool:
        return parse_bool(self[key])

    def duration(self, key: str) -> float:
        return parse_duration(self[key])

    def int(self, key: str) -> builtins.int:
        return builtins.int(self[key])

    def size(self, key: str) -> builtins.int:
        return parse_size(self[key])

    def path(self, key: str) -> Path:
        from pathlib import Path

        return Path(self[key])

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Keys under ``prefix`` with the prefix cut off (``images.zfs.compression`` →
        ``compression``)."""
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    @property
    def root(self) -> Path:
        return self.path("root.path")

    @property
    def debug(self) -> builtins.bool:
        return self.bool("debug")


def parse_properties(text: str, origin: str) -> list[tuple[int, str, str]]:
    """``(line number, key, value)`` for each setting; comments and blank lines are skipped."""
    settings = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
            raise ConfigError(
                f"{origin}:{number}: malformed line {raw.strip()!r}: expected 'key = value'"
            )
        settings.append((number, key, value.strip()))
    return settings


def _apply(
    values: dict[str, str], key: str, value: str, where: str, warnings: list[str]
) -> None:
    key = ALIASES.get(key, key)
    known = KEYS.get(key)
    if known is None and not key.startswith(FREEFORM_PREFIXES):
        warnings.append(f"{where}: unknown configuration key {key!r} (ignored)")
        return
    if known is not None:
        try:
            known.check(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    values[key] = value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, the configuration file and ``-o KEY=VALUE`` overrides.

    An explicitly named file (argument or ``$JETPACK_CONF``) must exist; the platform default
    file is optional.
    """
    env = os.environ if environ is None else environ
    values = {name: key.default() for name, key in KEYS.items()}
    warnings: list[str] = []
    explicit = path is not None or bool(env.get(ENV_VAR))
    conf_path = os.fspath(path) if path is not None else \
        (env.get(ENV_VAR) or _default_path())
    source: str | None = None
    try:
        with open(conf_path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{conf_path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{conf_path}: cannot read configuration: {exc}") from None
    else:
        source = conf_path
        for number, key, value in parse_properties(text, str(conf_path)):
            _apply(values, key, value, f"{conf_path}:{number}", warnings)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-o {override!r}: expected KEY=VALUE")
        _apply(values, key.strip(), value.strip(), f"-o {key.strip()}", warnings)
    return Config(values, source, warnings)


def render(config: Config) -> str:
    """The merged configuration as a properties file (what ``jetpack config`` prints)."""
    return "".join(f"{key} = {config.values[key]}\n" for key in sorted(config.values))
