"""What a command runs with: the merged configuration, the state database, output helpers."""

from __future__ import annotations

import json
import os
import sys
from functools import cached_property

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from jetpack.config import Config
    from jetpack.state import StateDB

# SGR codes of the few colours the tables use (a pod's state).
COLOURS = {"green": "32", "yellow": "33", "red": "31", "dim": "2", "bold": "1"}


def use_colour(stream: Any = None) -> bool:
    """Colour only on a terminal, never with ``NO_COLOR`` set (https://no-color.org) or
    ``TERM=dumb``."""
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Context:
    """Lazily loads configuration and state so that ``config`` never touches the database."""

    def __init__(self, config_path: str | None = None, overrides: Sequence[str] = (), *,
                 configure_logging: bool = True) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.configure_logging = configure_logging  # False: the command logs nothing

    @cached_property
    def colour(self) -> bool:
        return use_colour()

    def paint(self, text: str, colour: str | None) -> str:
        """``text`` in ``colour`` when stdout is a terminal (see ``use_colour``)."""
        if colour is None or not self.colour:
            return text
        return f"\x1b[{COLOURS[colour]}m{text}\x1b[0m"

    @cached_property
    def config(self) -> Config:
        from jetpack.config import load_config

        config = load_config(self.config_path, self.overrides)
        for warning in config.warnings:
            print(f"jetpack: warning: {warning}", file=sys.stderr)
        if self.configure_logging:
            from jetpack.log import configure_logging

            configure_logging(debug=config.debug)
        return config

    @cached_property
    def state(self) -> StateDB:
        from jetpack.state import StateDB

        return StateDB.for_root(self.config.root)

    def print_json(self, value: Any) -> None:
        json.dump(value, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")

    def print_table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                    colours: Sequence[Sequence[str | None]] | None = None) -> None:
        """Columns padded to their widest cell; the last column is not padded. ``colours``
        (one per cell, or None) paints cells on a terminal; the header is bold there."""
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                                 for r in rows]
        paints: list[Sequence[str | None]] = [["bold"] * len(headers)]
        paints += colours if colours is not None else [[None] * len(headers)] * len(rows)
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row, paint in zip(cells, paints, strict=True):
            last = len(row) - 1
            line = "  ".join(
                self.paint(cell if i == last else cell.ljust(widths[i]), paint[i])
                for i, cell in enumerate(row)
            )
            print(line.rstrip())
