"""graphs/tmo.py is what LangGraph Studio loads: importable offline, no checkpointer, real edges."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_points_at_the_exported_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = json.loads((ROOT / "langgraph.json").read_text())
    module_path, _, attr = spec["graphs"]["tmo"].partition(":")
    assert (ROOT / module_path).is_file() and attr == "graph"
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("graphs.tmo", None)
    graph = importlib.import_module("graphs.tmo").graph
    # Compiled without a checkpointer (langgraph dev refuses one); no model loaded at import.
    assert graph.checkpointer is None
    drawn = graph.get_graph()
    edges = {(e.source, e.target, e.conditional) for e in drawn.edges}
    assert ("route", "answer_local", True) in edges
    assert ("route", "answer_cloud", True) in edges
    assert ("check_confidence", "answer_cloud", True) in edges
    assert ("check_confidence", "account", True) in edges
    assert ("answer_cloud", "account", True) in edges
    assert ("answer_cloud", "answer_local", True) in edges  # the fallback is an edge too
    assert set(drawn.nodes) >= {
        "detect_modality",
        "recall_memory",
        "route",
        "answer_local",
        "check_confidence",
        "answer_cloud",
        "account",
    }


def test_importing_the_package_loads_no_model_library() -> None:
    import subprocess

    code = (
        "import sys, tmo_graph, graphs.tmo; "
        "heavy = [m for m in ('torch', 'transformers', 'chromadb') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("page", ["README.md", "docs/graph.md"])
def test_the_pictures_of_the_graph_are_the_graph(page: str) -> None:
    from tmo_graph.graph import mermaid

    text = (ROOT / page).read_text()
    start = text.index("```mermaid\n") + len("```mermaid\n")
    drawn = text[start : text.index("```", start)].strip()
    assert drawn == mermaid().strip(), (
        f"{page}'s graph is stale: paste the output of "
        "`python -c 'from tmo_graph.graph import mermaid; print(mermaid())'`"
    )


def test_the_installed_package_exports_the_studio_graph() -> None:
    from tmo_graph.studio import graph

    assert graph.checkpointer is None
    assert "check_confidence" in graph.get_graph().nodes
