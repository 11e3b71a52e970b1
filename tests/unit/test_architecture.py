"""Layering contracts (pyproject.toml): the core imports no broker library and no adapter;
adapters never touch the store; the store knows nothing above it; the CLI, web and client
use the store's roles; the adapter registry and config models load no broker library."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobwire.store.queries import parse_named_queries

REPO = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run(
        [exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 6 kept, 0 broken" in proc.stdout


def test_every_sql_statement_is_named_in_the_sql_file() -> None:
    daemon = REPO / "daemon" / "jobwire"
    offenders = []
    for path in daemon.rglob("*.py"):
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE ", "INSERT INTO", "DELETE FROM"):
            if keyword in text:
                offenders.append(f"{path.relative_to(REPO)}: {keyword.strip()}")
    assert offenders == []


def test_a_statement_name_used_twice_in_the_sql_file_is_refused() -> None:
    text = "-- name: a\nSELECT 1;\n\n-- name: a\nSELECT 2;\n"
    with pytest.raises(ValueError, match="names 'a' twice"):
        parse_named_queries(text)
