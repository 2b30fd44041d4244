"""The quality-gap predictor the route node runs: cloud score minus local score, from the prompt.

As Hybrid LLM (Ding et al., ICLR 2024) does, a router can look at the prompt alone and predict
the *quality gap*. Per side (local answers, cloud answers) the predicted score is the task's
mean score plus a linear function of the prompt's sentence embedding (optionally with the
previous user question's embedding beside it); the gap is their difference. Scores are in
M4A1's units, so a gap of 0.5 means the cloud answer is expected to score half a point more.

Only the prediction and the file live here; the fit is :mod:`tmo_graph.eval.gap_fit`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from tmo_graph.errors import TmoGraphError

FORMAT = "tmo-graph/quality-gap"
VERSION = 1
REFIT = "refit: tmo-graph eval gap --data ../shared/data/M4A1.json -o FILE"


class SideFile(BaseModel):
    """One side's model in the file (``local`` or ``cloud``)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    task_means: dict[str, float]
    mean: float  # for a task the fit never saw
    coef: list[float]  # dim numbers, or 2 * dim with the previous question
    intercept: float
    alpha: float
    previous: StrictBool
    # Not read by the prediction: NaN (no cross-validation) is allowed.
    cv_mse: float = Field(default=math.nan, allow_inf_nan=True)
    n: int = 0


class GapFile(BaseModel):
    """The predictor's JSON file, as :meth:`QualityGapPredictor.save` writes it."""

    model_config = ConfigDict(strict=True, extra="ignore")

    format: str
    version: int
    dim: int = Field(gt=0, strict=True)
    embedding: str | None = None
    target: str = "score"
    local: SideFile
    cloud: SideFile

    @model_validator(mode="after")
    def _coef_width(self) -> GapFile:
        for name in ("local", "cloud"):
            side: SideFile = getattr(self, name)
            width = 2 * self.dim if side.previous else self.dim
            if len(side.coef) != width:
                raise ValueError(
                    f"`{name}.coef` must list {width} numbers (dim {self.dim}"
                    f"{', twice with the previous question' if side.previous else ''}), "
                    f"got {len(side.coef)}"
                )
        return self


def _where(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"`{loc}`: {message}" if loc else message


@dataclass(frozen=True)
class SideModel:
    """The score of one side's answers: task mean + a linear map of the prompt embedding."""

    task_means: dict[str, float]
    mean: float  # for a task the training data never saw
    coef: tuple[float, ...]  # dim numbers, or 2 * dim with the previous question
    intercept: float
    alpha: float  # the ridge strength it was fit with (for the reader)
    previous: bool  # whether the previous user question's embedding is a feature
    cv_mse: float  # mean squared error of the chosen setting over the CV folds
    n: int  # training turns

    def predict(
        self, vector: np.ndarray, task: str, previous_vector: np.ndarray | None = None
    ) -> float:
        base = self.task_means.get(task, self.mean)
        if self.previous:
            before = previous_vector if previous_vector is not None else np.zeros_like(vector)
            vector = np.concatenate([vector, before])
        return float(base + self.intercept + np.dot(np.asarray(self.coef), vector))

    def to_json(self) -> dict[str, Any]:
        return {
            "task_means": self.task_means,
            "mean": self.mean,
            "coef": list(self.coef),
            "intercept": self.intercept,
            "alpha": self.alpha,
            "previous": self.previous,
            "cv_mse": self.cv_mse,
            "n": self.n,
        }

    @classmethod
    def from_file(cls, side: SideFile) -> SideModel:
        return cls(
            task_means=dict(side.task_means),
            mean=side.mean,
            coef=tuple(side.coef),
            intercept=side.intercept,
            alpha=side.alpha,
            previous=side.previous,
            cv_mse=side.cv_mse,
            n=side.n,
        )


def _vector(values: Sequence[float] | np.ndarray, dim: int, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.shape[0] != dim:
        raise TmoGraphError(
            f"{what} has {vector.shape[0]} numbers but the quality-gap predictor was fit on "
            f"{dim}-dimensional embeddings",
            f"use the embedding model it was fit with, or {REFIT}",
        )
    return vector


@dataclass(frozen=True)
class QualityGapPredictor:
    """Predicted score of the local and of the cloud answer to a prompt, and their gap."""

    dim: int
    local: SideModel
    cloud: SideModel
    embedding: str | None = None  # the embedding model it was fit with, for the reader

    def predict_scores(
        self,
        prompt_vector: Sequence[float] | np.ndarray,
        task: str,
        previous_vector: Sequence[float] | np.ndarray | None = None,
    ) -> tuple[float, float]:
        """(predicted local score, predicted cloud score) of the answers to this prompt."""
        vector = _vector(prompt_vector, self.dim, "the prompt vector")
        before = (
            _vector(previous_vector, self.dim, "the previous question's vector")
            if previous_vector is not None
            else None
        )
        return self.local.predict(vector, task, before), self.cloud.predict(vector, task, before)

    def predict_gap(
        self,
        prompt_vector: Sequence[float] | np.ndarray,
        task: str,
        previous_vector: Sequence[float] | np.ndarray | None = None,
    ) -> float:
        """Predicted cloud score minus predicted local score; > 0: the cloud is expected better.

        ``previous_vector``: the embedding of the previous user question, if any (used only by
        a side fit with it; a first turn is the zero vector, as in training).
        """
        local, cloud = self.predict_scores(prompt_vector, task, previous_vector)
        return cloud - local

    def check_dim(self, dim: int, source: str = "the quality-gap predictor") -> None:
        """Fail clearly unless the embedding model in use gives ``dim`` numbers, as at fit."""
        if dim != self.dim:
            raise TmoGraphError(
                f"{source} was fit on {self.dim}-dimensional embeddings "
                f"({self.embedding or 'unknown model'}) but the embedding model gives {dim}",
                f"use the embedding model it was fit with, or {REFIT}",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "embedding": self.embedding,
            "target": "score",
            "local": self.local.to_json(),
            "cloud": self.cloud.to_json(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the predictor as JSON (``embeddings.gap_predictor`` reads it)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_json(), indent=1))
        except OSError as exc:
            raise TmoGraphError(
                f"cannot write the quality-gap predictor to {path} ({exc.strerror})",
                "pass a writable path",
            ) from None
        return path

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> QualityGapPredictor:
        """Read a saved predictor; ``dim``: the embedding size it must match, if known."""
        path = Path(path)
        if not path.is_file():
            raise TmoGraphError(f"quality-gap predictor {path} does not exist", REFIT)
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise TmoGraphError(
                f"quality-gap predictor {path} is not JSON", f"pass a file written by {REFIT}"
            ) from None
        # Format and version first: a file of another kind should not list twenty field errors.
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise TmoGraphError(f"{path} is not a {FORMAT} file", f"pass a file written by {REFIT}")
        if raw.get("version") != VERSION:
            raise TmoGraphError(
                f"quality-gap predictor {path} has version {raw.get('version')!r}, "
                f"this tmo-graph reads {VERSION}",
                REFIT,
            )
        try:
            parsed = GapFile.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(_where(error) for error in exc.errors())
            raise TmoGraphError(
                f"quality-gap predictor {path} is malformed: {problems}", REFIT
            ) from None
        predictor = cls(
            dim=parsed.dim,
            local=SideModel.from_file(parsed.local),
            cloud=SideModel.from_file(parsed.cloud),
            embedding=parsed.embedding,
        )
        if dim is not None:
            predictor.check_dim(dim, str(path))
        return predictor
