"""The README's table of settings agrees with the settings themselves.

The source of truth is :func:`pytest_simscope.settings.settings_table`;
``python scripts/settings_table.py --write README.md`` regenerates the table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_simscope.settings import SPECS, Spec, settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = ["Flag", "ini key", "Environment", "Default", "Meaning"]
EMPTY = {"", "-", "\u2013", "\u2014"}  # a dash may stand for an empty cell


def split_row(line: str) -> list[str]:
    """The cells of a markdown table row; ``\\|`` is a pipe inside a cell."""
    inner = line.strip()
    inner = inner.removeprefix("|").removesuffix("|")
    cells = re.split(r"(?<!\\)\|", inner)
    return [cell.strip().replace("\\|", "|") for cell in cells]


def plain(cell: str) -> str:
    """A cell without code formatting; the empty-cell dashes count as empty."""
    text = cell.strip()
    if len(text) >= 2 and text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    return "" if text in EMPTY else text


def settings_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in *text* whose header is HEADER, as rows of cells."""
    tables: list[list[list[str]]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("|") or split_row(line) != HEADER:
            continue
        rows = []
        for row in lines[index + 2 :]:
            if not row.lstrip().startswith("|"):
                break
            rows.append(split_row(row))
        tables.append(rows)
    return tables


def readme_table() -> list[list[str]]:
    """The README's one settings table (the test fails when there is not exactly one)."""
    assert README.is_file(), f"{README} is missing"
    tables = settings_tables(README.read_text(encoding="utf-8"))
    assert len(tables) == 1, (
        f"README.md must hold exactly one table with the columns {' | '.join(HEADER)}; "
        f"found {len(tables)}.  Generate it with: python scripts/settings_table.py"
    )
    return tables[0]


def test_table_separator_row() -> None:
    assert README.is_file(), f"{README} is missing"
    lines = README.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.lstrip().startswith("|") and split_row(line) == HEADER:
            separator = split_row(lines[index + 1])
            assert len(separator) == len(HEADER)
            assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in separator), separator


def test_every_row_has_five_cells() -> None:
    for row in readme_table():
        assert len(row) == len(HEADER), row


def test_one_row_per_setting_and_no_other() -> None:
    envs = [plain(row[2]) for row in readme_table()]
    expected = [env for _, _, env, _, _ in settings_table()]
    assert sorted(envs) == sorted(expected)
    assert len(envs) == len(set(envs)), "a setting appears twice"


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_row_matches_setting(spec: Spec) -> None:
    rows = {plain(row[2]): row for row in readme_table() if len(row) == len(HEADER)}
    truth = {env: (flag, ini, default) for flag, ini, env, default, _ in settings_table()}
    env = spec.env
    assert env in rows, f"{env} has no row in the README's settings table"
    flag, ini, default = truth[env]
    row = rows[env]
    assert plain(row[0]) == flag, f"{env}: flag"
    assert plain(row[1]) == ini, f"{env}: ini key"
    assert plain(row[3]) == default, f"{env}: default"
    assert plain(row[4]), f"{env}: no meaning given"


def test_generator_output_satisfies_this_test() -> None:
    """scripts/settings_table.py prints a table that the checks above accept."""
    import importlib.util

    path = README.parent / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (rows,) = settings_tables(module.markdown_table())
    assert [[plain(cell) for cell in row[:4]] for row in rows] == [
        list(row[:4]) for row in settings_table()
    ]
