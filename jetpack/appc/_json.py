"""Reading untrusted JSON with the reference implementation's leniency and exact error paths.

Object keys match case-insensitively (as Go's encoding/json does) and unknown keys are ignored;
every rejection is a ``ValidationError`` naming the JSON path of the offending value.
"""

from __future__ import annotations

import json
from typing import Any

from jetpack.errors import ValidationError


def load_json(data: bytes | str) -> Any:
    """Parse a document; anything that is not JSON becomes a ValidationError."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValidationError("", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError("", f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                                  f"{exc.colno}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, huge numbers
        raise ValidationError("", f"not acceptable JSON: {exc}") from None


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Obj:
    """A JSON object read with case-insensitive keys."""

    def __init__(self, value: Any, path: str, what: str = "an object") -> None:
        if not isinstance(value, dict):
            raise ValidationError(path, f"must be {what}, not {type_name(value)}")
        self.path = path
        self._items: dict[str, tuple[str, Any]] = {}
        for key, item in value.items():
            # Go keeps the last of keys differing only in case; so do we.
            self._items[key.lower()] = (key, item)

    def has(self, key: str) -> bool:
        item = self._items.get(key.lower())
        return item is not None and item[1] is not None

    def raw(self, key: str) -> Any:
        item = self._items.get(key.lower())
        return None if item is None else item[1]

    def at(self, key: str) -> str:
        return join(self.path, key)

    def text(self, key: str, *, required: bool = False, default: str = "") -> str:
        value = self.raw(key)
        if value is None:
            if required:
                raise ValidationError(self.at(key), "is required")
            return default
        return string(value, self.at(key))

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValidationError(self.at(key), f"must be true or false, not {type_name(value)}")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValidationError(self.at(key), f"must be a list, not {type_name(value)}")
        return value

    def number(self, key: str, *, low: int, high: int, default: int | None = None
            ) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        return integer(value, self.at(key), low, high)


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(path, f"must be a string, not {type_name(value)}")
    return value


def integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValidationError(path, f"must be an integer, not {type_name(value)}")
    if not low <= value <= high:
        raise ValidationError(path, f"must be between {low} and {high}, not {value}")
    return int(value)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
