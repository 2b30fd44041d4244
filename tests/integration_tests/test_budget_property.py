"""No overspend, whatever the endpoint and the device do.

Thousands of simulated dialogues run through the real graph with random budgets, prompts
(multi-byte text included), policies, latencies, token usages (up to the most a request can
be billed: far above the graph's estimate), and faults (500, 429 with Retry-After, timeouts,
refused connections, cut streams), for users sharing a daily cap. The models are simulated
on a simulated clock, but they obey the limits the graph gives them as the real ones do:
the cloud is cut at its request timeout and writes at most ``max_tokens``; the device
stops at ``max_time_s`` and ``max_new_tokens`` and is at least as fast as configured.

Checked for every dialogue: the seconds and dollars its turn records add up to never exceed
its budgets; for every user: the day's cloud spend (ledger and audit log) never exceeds the
cap. ``TMO_BUDGET_DIALOGUES`` sets how many dialogues run (default 10,000).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import Stats, fake_services
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import AuditLog
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.policy.budget import CostModel
from tmo_graph.prompts import message_text
from tmo_graph.settings import Settings

DIALOGUES = int(os.environ.get("TMO_BUDGET_DIALOGUES", "10000"))
USERS = 25
# Users reach the cap about two thirds of the way through (a cap never reached tests nothing).
DAILY_CAP_USD = 2e-6 * DIALOGUES
# Records carry seconds to 4 decimals and dollars to 8: what rounding may add, no more.
SECONDS_ROUNDING = 1e-4 * 8
USD_ROUNDING = 1e-8 * 8

WORDS = ["kettle", "boiling", "door", "open", "café", "naïve", "déjà", "vu", "über", "日本", "🙂"]


class SimClock:
    """Seconds that pass only when a simulated model works or the graph waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


class SimDevice:
    """The on-device model: reads the prompt, then writes tokens, at or above the configured
    speeds; stops at ``max_new_tokens``, at ``max_time_s`` or when it is done."""

    def __init__(self, clock: SimClock, rng: random.Random, costs: CostModel) -> None:
        self.clock, self.rng, self.costs = clock, rng, costs

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].encode()) // 3 + 4 for m in messages)

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        assert max_new_tokens is not None and max_new_tokens >= 1
        speedup = self.rng.uniform(1.0, 3.0)  # never slower than configured
        elapsed = self.prompt_tokens(messages) / (self.costs.local_prefill_tokens_per_s * speedup)
        wanted, n = self.rng.randint(1, max_new_tokens), 0
        while n < wanted:
            elapsed += 1.0 / (self.costs.local_tokens_per_s * speedup)
            n += 1
            if max_time_s is not None and elapsed >= max_time_s:
                break
        self.clock.sleep(elapsed)
        logprob = self.rng.uniform(-3.0, -0.01)
        return " ".join(["word"] * n), Stats([logprob] * n, [0.5 - 2 * logprob] * n)

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> Stats:
        return Stats([-0.5], [1.5])


class HttpFault(Exception):
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
        self.response = SimpleNamespace(headers=headers)


class RemoteProtocolError(Exception):
    """What httpx raises when a stream is cut (the graph classifies by the name)."""


class SimCloud(ChatOpenAI):
    """An OpenAI-compatible endpoint on the simulated clock: random latency, cut at the
    request's timeout; random faults; usage anywhere up to the most the request can hold."""

    sim: Any = None  # (clock, rng, costs, counters)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        clock, rng, costs, counters = self.sim
        timeout, max_tokens = kwargs["timeout"], kwargs["max_tokens"]
        counters["requests"] += 1
        fault = rng.choices(["ok", "500", "429", "refused", "cut", "slow"], [60, 8, 8, 8, 8, 8])[0]
        counters[fault] += 1
        if fault == "refused":
            raise ConnectionError("connection refused")
        if fault in ("500", "429"):
            clock.sleep(min(rng.uniform(0.01, 0.3), timeout))
            raise HttpFault(int(fault), rng.choice([None, 0.2, 1.0, 30.0]))
        if fault == "cut":
            clock.sleep(rng.uniform(0.0, timeout))
            raise RemoteProtocolError("peer closed connection mid-stream")
        latency = rng.uniform(0.05, 2.0) * (5 if fault == "slow" else 1)
        if latency > timeout:  # the client gives up at its timeout
            clock.sleep(timeout)
            raise TimeoutError("request timed out")
        clock.sleep(latency)
        texts = [message_text(m) for m in messages]
        most = costs.cloud_input_tokens_at_most(texts)
        estimate = sum(len(t) for t in texts) // 4
        input_tokens = rng.choice([estimate, most, rng.randint(estimate, most)])
        output_tokens = rng.randint(1, max_tokens)
        counters["usage above estimate"] += input_tokens > estimate
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        reply = AIMessage(content="cloud " * output_tokens, usage_metadata=usage)  # type: ignore[arg-type]
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _prompt(rng: random.Random) -> str:
    n = rng.choice([3, 20, 80, 400])
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, n)))


def test_no_dialogue_overspends_and_no_user_passes_the_daily_cap(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    clock = SimClock()
    settings = Settings.model_validate(
        {
            "cloud": {
                "mode": "remote",
                "max_attempts": 3,
                "breaker_cooldown_s": 2.0,
                "tokens_per_s": 60.0,  # a data-centre model, not the loopback stand-in
            },
            "spending": {"daily_cost_cap_usd": DAILY_CAP_USD, "ledger": str(tmp_path / "l.db")},
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
    )
    counters: dict[str, int] = defaultdict(int)
    costs = CostModel.from_settings(settings)
    cloud = SimCloud(
        base_url="http://127.0.0.1:9/v1",
        api_key="sim",
        model="sim",
        max_retries=0,
        disable_streaming=True,  # _generate is the simulation; never the real _stream
    )
    cloud.sim = (clock, rng, costs, counters)
    services = fake_services(tmp_path, cloud=cloud, settings=settings)
    services.local = SimDevice(clock, rng, services.costs)
    services.clock, services.sleep = clock, clock.sleep
    assert isinstance(services.audit, AuditLog) and services.ledger is not None
    graph = build_graph(services=services, checkpointer=InMemorySaver())
    reset_breakers()

    overspends: list[str] = []
    turns = budget_answers = 0
    started = time.perf_counter()
    for number in range(DIALOGUES):
        context = Context(
            user_id=f"user-{rng.randrange(USERS)}",
            policy=rng.choice(["always-cloud", "always-local", "rules", "cascade", "random"]),
            latency_budget_s=10 ** rng.uniform(-0.3, 1.7),  # 0.5 s .. 50 s
            cost_budget_usd=10 ** rng.uniform(-4.5, -1.5),  # 3e-5 .. 0.03 USD
            recent_turns=2,
            seed=number,
        )
        config = {"configurable": {"thread_id": f"d{number}"}}
        for _ in range(rng.randint(1, 4)):
            out = graph.invoke(
                {"messages": [HumanMessage(content=_prompt(rng))]},
                config,
                context=context,
                durability="exit",  # one checkpoint a turn: the records are what is checked
            )
            turns += 1
        records = out["turns"]
        budget_answers += sum("budget reached" in r.get("warnings", []) for r in records)
        seconds = sum(r["latency_s"] for r in records)
        usd = sum(r["cost_usd"] for r in records)
        if seconds > context.latency_budget_s + SECONDS_ROUNDING:
            overspends.append(f"d{number}: {seconds} s of {context.latency_budget_s} s")
        if usd > context.cost_budget_usd + USD_ROUNDING:
            overspends.append(f"d{number}: {usd} USD of {context.cost_budget_usd} USD")
    elapsed = time.perf_counter() - started

    per_user: dict[str, float] = defaultdict(float)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    for line in lines:
        entry = json.loads(line)
        per_user[entry["user_id"]] += entry["cost_usd"]
    for user, usd in sorted(per_user.items()):
        if usd > DAILY_CAP_USD + 1e-12 or services.ledger.spent(user) > DAILY_CAP_USD + 1e-12:
            overspends.append(f"{user}: {usd} USD today, cap {DAILY_CAP_USD}")
    capped = sum(1 for usd in per_user.values() if usd > 0.9 * DAILY_CAP_USD)
    print(
        f"\n{DIALOGUES} dialogues, {turns} turns in {elapsed:.0f} s; {counters['requests']} "
        f"cloud requests ({', '.join(f'{k} {v}' for k, v in sorted(counters.items()))}); "
        f"{capped} of {len(per_user)} users within 10 % of the daily cap; "
        f"{budget_answers} turns answered 'budget reached' with no model call; "
        f"overspends: {len(overspends)}"
    )
    assert counters["requests"] == len(lines)  # the audit log saw every request
    assert counters["ok"] > DIALOGUES // 10 and counters["500"] > 0 and counters["cut"] > 0
    assert counters["usage above estimate"] > DIALOGUES // 20
    assert capped > 0 and budget_answers > 0  # the limits were reached, not just approached
    assert overspends == []
