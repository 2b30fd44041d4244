"""Which folders the fast embedding backend runs, and its settings (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.embeddings import fast_backend_problem, local_embeddings
from tmo_graph.settings import Settings, load_settings

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]
POOLING = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}
CONFIG = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}


def _folder(
    tmp_path: Path, modules: object = MODULES, pooling: object = POOLING, config: object = CONFIG
) -> Path:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def test_a_bert_mean_pooling_folder_runs_fast(tmp_path: Path) -> None:
    assert fast_backend_problem(_folder(tmp_path)) is None


@pytest.mark.parametrize(
    "change,problem",
    [
        ({"pooling": {"pooling_mode_cls_token": True}}, "pooling"),
        ({"config": {**CONFIG, "model_type": "xlm-roberta"}}, "model type"),
        ({"config": {**CONFIG, "hidden_act": "gelu_new"}}, "model type"),
        ({"config": {**CONFIG, "position_embedding_type": "relative_key"}}, "absolute"),
        ({"modules": MODULES[:1]}, "modules"),
    ],
)
def test_other_folders_are_named_with_the_reason(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    found = fast_backend_problem(_folder(tmp_path, **change))
    assert found is not None and problem in found


def test_no_modules_json_means_sentence_transformers(tmp_path: Path) -> None:
    assert fast_backend_problem(tmp_path) == "no modules.json"


def test_embedding_settings_are_checked(tmp_path: Path) -> None:
    defaults = Settings().embeddings
    assert (defaults.backend, defaults.dtype, defaults.threads) == ("fast", "auto", 1)
    for bad in ("backend: onnx", "dtype: int8", "threads: -1"):
        config = tmp_path / "c.yaml"
        config.write_text(f"embeddings: {{{bad}}}")
        with pytest.raises(TmoGraphError, match="embeddings"):
            load_settings(config)
    with pytest.raises(TmoGraphError, match="embeddings.backend 'onnx' is unknown"):
        local_embeddings(backend="onnx")  # type: ignore[arg-type]
