"""What a command runs with: the merged configuration, the state database, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from jetpack.config import Config, load_config

if TYPE_CHECKING:
    from jetpack.state import StateDB


class Context:
    """Lazily loads configuration and state so that ``config`` never touches the database."""

    def __init__(self, config_path: str | None = None, overrides: Sequence[str] = (), *,
                 configure_logging: bool = True) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.configure_logging = configure_logging  # False: the command logs nothing

    @cached_property
    def config(self) -> Config:
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

    def print_table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Columns padded to their widest cell; the last column is not padded."""
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                                 for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            line = "  ".join(
                cell if i == len(row) - 1 else cell.ljust(widths[i]) for i, cell in enumerate(row)
            )
            print(line.rstrip())
