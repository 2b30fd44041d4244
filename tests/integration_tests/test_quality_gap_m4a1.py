"""The quality-gap predictor on the real M4A1 file with the real MiniLM embeddings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tmo_graph.eval.gap_fit import evaluate_gap_predictor, fit_dataset, format_report
from tmo_graph.models.embeddings import DEFAULT_SOURCE, local_embeddings
from tmo_graph.models.gap import QualityGapPredictor
from tmo_graph.sim.data import load_m4a1

pytestmark = pytest.mark.integration

M4A1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "M4A1.json"


@pytest.mark.skipif(
    not M4A1.is_file(), reason=f"the M4A1 sample is not at {M4A1} (see ../shared/data/README.md)"
)
def test_evaluate_on_m4a1(tmp_path: Path) -> None:
    dataset = load_m4a1(M4A1)
    embeddings = local_embeddings()
    report = evaluate_gap_predictor(dataset, embeddings, seed=9139, embedding=DEFAULT_SOURCE)

    assert report["dialogues"]["train"] + report["dialogues"]["test"] == len(dataset.episodes)
    assert report["dim"] == 384
    for side in ("local", "cloud"):
        entry = report["sides"][side]
        assert entry["turns"]["train"] > 0 and entry["turns"]["test"] > 0
        assert entry["chosen"] in entry["models"] and len(entry["models"]) == 3
        for row in entry["models"].values():
            assert set(row) == {"spearman", "r2", "auroc"}
            assert all(math.isfinite(v) for v in row.values()), (side, row)
            assert -1.0 <= row["spearman"] <= 1.0 and 0.0 <= row["auroc"] <= 1.0
    assert set(report["gap"]["by_task"]) == set(dataset.task_names)
    assert all(math.isfinite(v) for v in report["gap"]["quantiles"].values())
    assert "task only" in format_report(report)

    # Fit on the training dialogues, saved and loaded for the graph, predicts a finite gap.
    path = fit_dataset(dataset.episodes[:80], embeddings, embedding=DEFAULT_SOURCE).save(
        tmp_path / "gap.json"
    )
    predictor = QualityGapPredictor.load(path, dim=384)
    gap = predictor.predict_gap(embeddings.embed_query("Who invented the microwave?"), "Query")
    assert math.isfinite(gap)
