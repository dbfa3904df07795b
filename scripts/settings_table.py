#!/usr/bin/env python3
"""Print the README's settings table, made from ``pytest_simscope.settings.SPECS``.

    python scripts/settings_table.py                 # print the markdown table
    python scripts/settings_table.py --write README.md
        # replace what lies between <!-- settings-table:start --> and
        # <!-- settings-table:end --> with the table

``tests/test_readme_settings.py`` fails when the README's table and the settings disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_simscope.settings import SPECS, settings_table

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
HEADER = ("Flag", "ini key", "Environment", "Default", "Meaning")


def _cell(text: str, *, code: bool = False) -> str:
    if not text:
        return ""
    text = text.replace("|", "\\|")
    return f"`{text}`" if code else text


def markdown_table() -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for spec, (flag, ini, env, default, meaning) in zip(SPECS, settings_table(), strict=True):
        if spec.env_only:
            meaning += " Environment only."
        cells = (
            _cell(flag, code=True),
            _cell(ini, code=True),
            _cell(env, code=True),
            _cell(default, code=True),
            _cell(meaning),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_between_markers(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {START} ... {END} markers")
    head = text[: start + len(START)]
    path.write_text(f"{head}\n{table}{text[end:]}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", type=Path,
                        help="replace the table between the markers in this file")
    args = parser.parse_args(argv)
    table = markdown_table()
    if args.write:
        write_between_markers(args.write, table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
