"""The import rules of docs/architecture.md ("Layers and import rules"), as checked by
import-linter (pyproject's contracts): every contract is kept, and the ones the layout rests
on are there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    out = " ".join(run.stdout.split())  # long contract names are wrapped
    assert "0 broken" in out and run.returncode == 0, run.stdout
    for name in (
        "sim never needs",
        "policy never needs",
        "nodes never import each other",
        "layers: surfaces > conversation",
        "only server/",
        "surfaces never import a node",
        "observe reads records only",
        "no part needs observe",
    ):
        assert f"{name}" in out, f"contract {name!r} is missing from pyproject.toml"
