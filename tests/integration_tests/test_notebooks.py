"""The notebooks run end to end and show what they say they show.

Each notebook is copied to a temporary folder and executed there by nbclient, with the
working directory set to the checkout's ``notebooks/`` folder (where a reader starts
Jupyter), so the committed file is never written to. The kernel is ``python3``: the venv's
own kernel spec (``.venv/share/jupyter/kernels/python3``, installed with ipykernel), whose
``python`` jupyter_client replaces with the running interpreter; a cell appended to each
run checks that the kernel's ``sys.prefix`` is this test's, i.e. the venv with the package
installed. Another appended cell prints what the notebook computed as JSON, for the checks.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
M4A1 = REPO.parent / "shared" / "data" / "M4A1.json"
CELL_TIMEOUT_S = 300  # the slowest cell (three real turns, models loading) takes about 50 s
MARK = "NOTEBOOK-TEST "
ANSI = re.compile(r"\x1b\[[0-9;]*m")

KERNEL_CHECK = f"""
import json as _json, sys as _sys, tmo_graph as _pkg
print({MARK!r} + _json.dumps({{"prefix": _sys.prefix, "package": _pkg.__file__}}))
"""

QUICKSTART_SUMMARY = f"""
import json

print({MARK!r} + json.dumps({{
    "private": PRIVATE,
    "records": [
        {{"route": r["route"], "views_sent": r["views_sent"], "association": r["association"]}}
        for r in records
    ],
    "stored_views": {{n: v.get("private", False) for n, v in state["views"].items()}},
    "streamed": {{k: streamed[k] for k in ("answer", "escalated", "local_answer")}},
    "streamed_by": sorted(set(nodes)),
    "kept": {{k: kept[k] for k in ("answer", "route", "escalated")}},
    "lcel": {{"content": reply.content, "route": lcel["route"], "views_sent": lcel["views_sent"]}},
}}))
"""

BENCH_SUMMARY = f"""
import json

print({MARK!r} + json.dumps({{
    name: {{"reward": row["mean"]["reward"], "usage": row["mean"]["usage_usd"],
            "actions": row["mean"]["actions"]}}
    for name, row in result["methods"].items()
}}))
"""


@pytest.fixture(autouse=True)
def _no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's TMO_* settings variables must not change what the kernel builds."""
    for name in os.environ:
        if name.startswith("TMO_") and "__" in name:
            monkeypatch.delenv(name)
    monkeypatch.delenv("TMO_GRAPH_M4A1", raising=False)


def _execute(name: str, tmp_path: Path, *extra: str) -> NotebookNode:
    """Run a temporary copy of notebooks/``name`` (plus ``extra`` cells); it keeps the outputs."""
    copy = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, copy)
    nb = nbformat.read(copy, as_version=4)
    nb.cells.extend(new_code_cell(code) for code in extra)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, copy)  # the executed copy, outputs included, to read after a failure
    return nb


def _stdout(cell: NotebookNode) -> str:
    return "".join(
        o["text"] for o in cell["outputs"] if o["output_type"] == "stream" and o["name"] == "stdout"
    )


def _shown(cell: NotebookNode) -> str:
    """All the text a cell shows: its stdout and its displays' plain text (colours removed).

    Under Jupyter, rich displays a table even when its console writes to a buffer
    (``format_table`` does), so the benchmark table is a display, not printed text.
    """
    shown = [_stdout(cell)]
    for output in cell["outputs"]:
        if output["output_type"] in {"display_data", "execute_result"}:
            shown.append(output["data"].get("text/plain", ""))
    return ANSI.sub("", "\n".join(shown))


def _before(text: str, line_start: str) -> str:
    """``text`` up to the last line that starts with ``line_start``."""
    at = text.rfind("\n" + line_start)
    assert at >= 0, f"no line starting with {line_start!r} in {text!r}"
    return text[:at]


def _marked(nb: NotebookNode) -> list[dict[str, Any]]:
    """The JSON printed by the appended cells, in order."""
    return [
        json.loads(line.removeprefix(MARK))
        for cell in nb.cells
        if cell.cell_type == "code"
        for line in _stdout(cell).splitlines()
        if line.startswith(MARK)
    ]


def _cell(nb: NotebookNode, needle: str) -> NotebookNode:
    """The one code cell whose source contains ``needle``."""
    found = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(found) == 1, f"{len(found)} cells contain {needle!r}"
    return found[0]


def _check_kernel(seen: dict[str, Any]) -> None:
    assert Path(seen["prefix"]).resolve() == Path(sys.prefix).resolve(), (
        f"the notebook ran in {seen['prefix']}, not in this interpreter's {sys.prefix}"
    )
    assert Path(seen["package"]).resolve().is_relative_to(REPO), seen["package"]


def _check_ran_cleanly(nb: NotebookNode) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, cell.source[:80]
            assert all(o["output_type"] != "error" for o in cell.outputs), cell.source[:80]


def test_quickstart_runs_and_never_sends_the_private_view(tmp_path: Path) -> None:
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    nb = _execute("01_quickstart.ipynb", tmp_path, QUICKSTART_SUMMARY, KERNEL_CHECK)
    _check_ran_cleanly(nb)
    summary, kernel = _marked(nb)
    _check_kernel(kernel)
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before  # it leaves no files here

    # The private view stays on the device, while the other views do get sent.
    assert summary["private"] == ["first_person"]
    assert summary["stored_views"] == {"first_person": True, "overhead": False, "side": False}
    records = summary["records"]
    assert len(records) == 3
    for record in records:
        assert "first_person" not in record["views_sent"]
        assert "first_person" not in record["association"]
        assert set(record["association"]) == {"overhead", "side"}
    assert records[0]["views_sent"] == ["overhead"]  # "Is the pot on the stove boiling yet?"
    assert "first_person" not in summary["lcel"]["views_sent"]

    # The turn records as a markdown table: a header and one row per turn.
    table = _cell(nb, "records_table(records)")
    markdown = [o["data"]["text/markdown"] for o in table.outputs if "data" in o]
    assert len(markdown) == 1
    rows = markdown[0].splitlines()
    assert rows[0].startswith("| turn | task | route | views sent |") and len(rows) == 2 + 3

    # Streaming: the draft was generated and never streamed; what was shown is the answer,
    # once, from the cloud's node alone.
    streamed = summary["streamed"]
    assert streamed["escalated"] and streamed["local_answer"]
    assert summary["streamed_by"] == ["answer_cloud"]
    shown = _before(_stdout(_cell(nb, 'stream_mode="messages"')), "streamed by:")
    assert shown.strip() == streamed["answer"].strip() != ""

    # stream_turn releases a kept draft: the text shown is the kept local answer.
    kept = summary["kept"]
    assert kept["route"] == "local" and not kept["escalated"]
    shown = _before(_stdout(_cell(nb, "stream_turn(")), "route:")
    assert shown.strip() == kept["answer"].strip() != ""

    # The chat model in an LCEL chain answered one routed turn.
    assert summary["lcel"]["content"].strip()
    assert summary["lcel"]["route"] in {"local", "cloud"}


@pytest.mark.skipif(
    not M4A1.is_file(), reason=f"the M4A1 sample is not at {M4A1} (see ../shared/data/README.md)"
)
def test_m4a1_benchmark_runs_and_prints_every_method(tmp_path: Path) -> None:
    nb = _execute("02_m4a1_benchmark.ipynb", tmp_path, BENCH_SUMMARY, KERNEL_CHECK)
    _check_ran_cleanly(nb)
    rows, kernel = _marked(nb)
    _check_kernel(kernel)

    expected = ["Local", "Cloud", "Random", "rules", "cascade", "own", "PPO-4k"]
    assert list(rows) == expected
    assert all(math.isfinite(row["reward"]) for row in rows.values())
    local, cloud = rows["Local"]["actions"], rows["Cloud"]["actions"]
    assert local["cloud_text"] == local["cloud_views"] == 0 and cloud["local"] == 0
    # Local pays only for the device's energy, a millionth of what the cloud costs.
    assert rows["Local"]["usage"] < 1e-5 < 1e-3 < rows["Cloud"]["usage"]
    assert sum(rows["PPO-4k"]["actions"].values()) == sum(local.values())  # every test turn
    assert rows["own"]["reward"] > rows["Local"]["reward"]  # docs/simulator.md, seed 9139

    table = _shown(_cell(nb, "format_table(result)")).splitlines()
    assert any(line.startswith("M4A1, seeds [9139]") for line in table)
    for name in expected:
        assert any(line.split()[:1] == [name] for line in table), name

    plot = _cell(nb, "plot_reward_usage(")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)


def test_m4a1_benchmark_says_where_the_data_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere" / "M4A1.json"
    monkeypatch.setenv("TMO_GRAPH_M4A1", str(missing))
    with pytest.raises(CellExecutionError) as failure:
        _execute("02_m4a1_benchmark.ipynb", tmp_path)
    assert f"M4A1 dataset not found at {missing}" in str(failure.value)
    assert "../shared/data/" in str(failure.value)
