"""Run the known-truth traffic (:mod:`tmo_graph.sim.traffic`) through the live graph.

The graph is the real one (route, local answer, confidence check, escalation, cloud,
account; SQLite checkpoints) with fast stand-ins for the models that answer by the truth:

- :class:`TruthEmbeddings`: a prompt's vector is its task's one-hot, so the graph's own
  task classifier (nearest of its labelled examples) finds the true task;
- :class:`TruthLocal`: the device model; its token entropies are chosen so that the shipped
  confidence combination gives the turn's stated confidence;
- :class:`TruthCloud`: the cloud model (the judge's reference answer);
- the judge: scores a local draft ``1 - gap`` (the truth) and writes it to the labels
  table as ``shadow`` (a kept local answer) or ``escalation`` (an escalated draft): what
  shadow judging writes once it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig

from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.models.scoring import TASK_EXAMPLES
from tmo_graph.policy.confidence import COMBINATION
from tmo_graph.services import Services
from tmo_graph.settings import Settings
from tmo_graph.sim import traffic
from tmo_graph.sim.traffic import TruthDialogue, TruthTurn
from tmo_graph.threads.labels import LabelSource, TurnLabel
from tmo_graph.threads.store import open_async_labels, open_checkpointer

_DIM = 8


class TruthEmbeddings(Embeddings):
    """A text's vector: its task's one-hot (examples and generated prompts), else a fixed
    vector no task is near."""

    def __init__(self, prompts: dict[str, str]) -> None:
        self.tasks = {text: task for task, texts in TASK_EXAMPLES.items() for text in texts}
        self.tasks.update(prompts)
        self.order = list(TASK_EXAMPLES)

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * _DIM
        task = self.tasks.get(text)
        vector[self.order.index(task) if task else _DIM - 1] = 1.0
        return vector

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def entropy_for(confidence: float) -> float:
    """The mean token entropy the shipped combination turns into ``confidence`` (no
    refusal marker in the answer)."""
    import math

    (_, mean_r), (scale_e, scale_r), (w_e, w_r) = (
        COMBINATION["means"],
        COMBINATION["scales"],
        COMBINATION["weights"],
    )
    mean_e = COMBINATION["means"][0]
    c = min(max(confidence, 1e-4), 1 - 1e-4)
    z = math.log(c / (1 - c))
    rest = COMBINATION["bias"] + w_r * (0.0 - mean_r) / scale_r
    return max(mean_e + scale_e * (z - rest) / w_e, 0.0)


@dataclass
class _Stats:
    logprobs: list[float]
    entropies: list[float]


@dataclass
class TruthLocal:
    """The device model: a unique answer; token scores by the turn's stated confidence."""

    turns: dict[str, TruthTurn]
    calls: int = 0

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, _Stats]:
        prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        turn = self.turns.get(prompt.split("\n\n")[0])
        self.calls += 1
        words = [f"w{self.calls}x{k}" for k in range(12)]
        text = " ".join(words)
        entropy = entropy_for(turn.confidence if turn else 0.5)
        return text, _Stats([-0.2] * len(words), [entropy] * len(words))

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> _Stats:
        """Any other answer scores as an unsure one (the graph does not ask here)."""
        n = max(len(answer.split()), 1)
        return _Stats([-0.2] * n, [entropy_for(0.5)] * n)


class TruthCloud(BaseChatModel):
    """The cloud model: a unique answer, a fixed token usage."""

    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "truth-cloud"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        usage = {"input_tokens": 40, "output_tokens": 40, "total_tokens": 80}
        text = " ".join(f"c{self.calls}y{k}" for k in range(12))
        message = AIMessage(content=text, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])


def deployment_settings() -> Settings:
    """The deployment's settings: its device and network (traffic.DEVICE / NETWORK)."""
    return Settings.model_validate(
        {
            "device": {"profile": traffic.DEVICE, "live": False},
            "cloud": {"network": traffic.NETWORK, "mode": "off"},
        }
    )


@dataclass
class Outcome:
    """What the graph did on one turn, with the truth."""

    thread_id: str
    turn: int
    task: str
    route: str
    escalated: bool
    confidence: float | None
    gap: float
    over_budget: bool

    @property
    def quality(self) -> float:
        """The kept answer's true quality (the cloud's answer is the reference)."""
        return 1.0 if self.route == "cloud" else 1.0 - self.gap


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def run_traffic(
    dialogues: Sequence[TruthDialogue],
    db: Path | None,
    policy: str = "rules",
    policy_file: Path | None = None,
    judge: bool = True,
    tmp: Path | None = None,
    settings: Settings | None = None,
) -> Run:
    """Every dialogue through the live graph into the SQLite file ``db`` (or the PostgreSQL
    at ``settings.threads.url``, with ``db`` None); with ``judge``, each local draft's truth
    label is written beside the threads."""
    turns = {t.prompt: t for d in dialogues for t in d.turns}
    settings = settings or deployment_settings()
    media = (tmp or (db.parent if db is not None else Path.cwd())) / "media"
    services = Services(
        settings=settings,
        local=TruthLocal(turns),
        cloud=TruthCloud(),
        embeddings=TruthEmbeddings({p: t.task for p, t in turns.items()}),
        media_dir=media,
    )
    context = Context(
        policy=policy,  # type: ignore[arg-type]
        policy_file=str(policy_file) if policy_file else None,
    )
    run = Run()
    labels: list[TurnLabel] = []
    start = time.perf_counter()
    with open_checkpointer(settings, db) as saver:
        graph = build_graph(services, checkpointer=saver)
        for dialogue in dialogues:
            config: RunnableConfig = {"configurable": {"thread_id": dialogue.thread_id}}
            for truth in dialogue.turns:
                state = graph.invoke(
                    {"messages": [("user", truth.prompt)]}, config, context=context
                )
                record = state["turns"][-1]
                left = record["budget_left"]
                outcome = Outcome(
                    dialogue.thread_id,
                    record["turn"],
                    record["task"],
                    record["route"],
                    record["escalated"],
                    record["confidence"],
                    truth.gap,
                    left["latency_s"] < 0 or left["cost_usd"] < 0,
                )
                run.outcomes.append(outcome)
                drafted = record["route"] == "local" or record["escalated"]
                if judge and drafted:
                    source: LabelSource = "escalation" if record["escalated"] else "shadow"
                    labels.append(
                        TurnLabel(
                            dialogue.thread_id, record["turn"], "default", source, truth.judged
                        )
                    )
    run.seconds = time.perf_counter() - start
    if labels:
        asyncio.run(_write(settings, db, labels))
    return run


async def _write(settings: Settings, db: Path | None, labels: list[TurnLabel]) -> None:
    async with open_async_labels(settings, db) as table:
        for label in labels:
            await table.add(label)
