"""The import rules of DESIGN.md, as checked by import-linter (pyproject's contracts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sim_and_policy_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True).stdout
    lines = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in out.splitlines()
             if line.endswith((" KEPT", " BROKEN"))}  # fmt: skip
    sim = next(name for name in lines if name.startswith("sim never"))
    policy = next(name for name in lines if name.startswith("policy never"))
    assert lines[sim] == "KEPT", out
    assert lines[policy] == "KEPT", out
