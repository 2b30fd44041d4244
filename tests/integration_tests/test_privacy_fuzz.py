"""Acceptance: nothing private reaches the cloud, fuzzed over generated dialogues.

Hypothesis writes dialogues of 1-4 turns that plant personal data of every kind
(``tmo_graph.guards.privacy.KINDS``) in the turns' text and sometimes in the persona, with private
camera views (a real image file each) next to shared ones, under policies that send turns to
the cloud. They run through the real graph (SQLite threads, Chroma memory that turns older
than the last one go to and come back from) whose cloud model is a real ``ChatOpenAI``
against an OpenAI-compatible server on 127.0.0.1 that records every request body. The
server's answers repeat every placeholder of the request, so restored values come back
into the history that later requests carry; the device model repeats the user's words.

Every captured request must hold no personal value as typed (nor a number without its
separators) and nothing of a private view: not its name, description, path, SHA-256, file
bytes (base64) nor the image the cloud node would make of it. The audit log must have
exactly one line per request, naming the views that request carried, and hold none of the
private values either; nor may the server's Prometheus metrics or the OpenTelemetry spans
of every turn and node (the graph runs with the server's observer on it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import re
import sqlite3
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.checkpoint.sqlite import SqliteSaver
from PIL import Image

from tests.integration_tests.test_faults import FaultServer
from tests.unit_tests.fakes import FakeLocal, FixedScorer
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import AuditLog, read_audit
from tmo_graph.guards.faults import reset_breakers
from tmo_graph.guards.privacy import KINDS
from tmo_graph.media.images import cloud_image
from tmo_graph.models.cloud import free_port, make_cloud_chat_model
from tmo_graph.observe.graph_events import GraphObserver
from tmo_graph.observe.metrics import TurnMetrics
from tmo_graph.services import Services
from tmo_graph.settings import Settings

pytestmark = pytest.mark.integration

DIALOGUES = 200
API_KEY = "sk-fuzz-never-sent-in-clear-0123456789"
PLACEHOLDER = re.compile(r"\[[A-Z]+_\d+\]")
DATA_URL = re.compile(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")

# --- the cloud: an OpenAI-compatible endpoint that keeps every request ----------------------


class CaptureServer(FaultServer):
    """The fault server's start and stop; every request body is kept, and each answer repeats
    the request's placeholders ("Noted: [EMAIL_1], [SECRET_1].") with usage reported, as one
    JSON body or streamed in 4-character pieces (a placeholder split across chunks)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                with server.lock:
                    server.bodies.append(raw)
                    server.requests.append({"step": "ok", "stream": bool(body.get("stream"))})
                said = sorted(set(PLACEHOLDER.findall(DATA_URL.sub("", raw.decode()))))
                answer = f"Noted: {', '.join(said)}." if said else "Noted."
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if body.get("stream"):
                        _stream(self, answer)
                    else:
                        server._json(self, 200, _completion(answer))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


USAGE = {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}


def _completion(answer: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer}
    return {
        "id": "chatcmpl-fuzz",
        "object": "chat.completion",
        "created": 0,
        "model": "fuzz-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": USAGE,
    }


def _stream(h: BaseHTTPRequestHandler, answer: str) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()

    def event(choices: list[dict[str, Any]], **extra: Any) -> None:
        chunk = {"id": "chatcmpl-fuzz", "object": "chat.completion.chunk", "created": 0}
        payload = json.dumps({**chunk, "model": "fuzz-model", "choices": choices, **extra})
        data = f"data: {payload}\n\n".encode()
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    for i in range(0, len(answer), 4):
        event([{"index": 0, "delta": {"content": answer[i : i + 4]}, "finish_reason": None}])
    event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    event([], usage=USAGE)
    done = b"data: [DONE]\n\n"
    h.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
    h.wfile.flush()


# --- the device: repeats what the user said (so personal data is in its answers too) ------


@dataclass
class EchoLocal(FakeLocal):
    answers: list[str] = field(default_factory=lambda: [""])

    def reply(self, messages: list[dict[str, str]]) -> str:
        return f"You said: {messages[-1]['content']}"


# --- personal data of every kind, as people type it -------------------------------------------


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length, groups = draw(
        st.sampled_from(
            [
                ("4", 16, (4, 4, 4, 4)),  # Visa
                ("5", 16, (4, 4, 4, 4)),  # Mastercard 51-55
                ("2221", 16, (4, 4, 4, 4)),  # Mastercard 2-series
                ("37", 15, (4, 6, 5)),  # Amex
                ("6011", 16, (4, 4, 4, 4)),  # Discover
                ("4", 13, (4, 4, 5)),  # old Visa
            ]
        )
    )
    if prefix == "5":
        prefix += str(draw(st.integers(1, 5)))
    body = prefix + _digits(draw, length - 1 - len(prefix))
    digits = body + _luhn_digit(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    out, i = [], 0
    for size in groups:
        out.append(digits[i : i + size])
        i += size
    return sep.join(out)


IBAN_FORMATS = {  # country: BBAN made of (alphabet, count) runs
    "DE": [(string.digits, 18)],
    "GB": [(string.ascii_uppercase, 4), (string.digits, 14)],
    "NL": [(string.ascii_uppercase, 4), (string.digits, 10)],
    "FR": [(string.digits, 23)],
    "ES": [(string.digits, 20)],
    "IT": [(string.ascii_uppercase, 1), (string.digits, 22)],
    "CH": [(string.digits, 17)],
}


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(IBAN_FORMATS)))
    bban = "".join(
        draw(st.text(alphabet, min_size=n, max_size=n)) for alphabet, n in IBAN_FORMATS[country]
    )
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    code = f"{country}{98 - number % 97:02d}{bban}"
    if draw(st.booleans()):
        return code
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


def _digits(draw: st.DrawFn, n: int) -> str:
    return draw(st.text(string.digits, min_size=n, max_size=n))


@st.composite
def phones(draw: st.DrawFn) -> str:
    d = lambda n: _digits(draw, n)  # noqa: E731
    return draw(
        st.sampled_from(
            [
                f"+44 20 {d(4)} {d(4)}",
                f"+1 ({d(3)}) {d(3)}-{d(4)}",
                f"({d(3)}) {d(3)}-{d(4)}",
                f"+49 151 {d(4)} {d(4)}",
                f"+49{d(11)}",
                f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
                f"0{d(3)} {d(3)} {d(4)}",
                f"0{d(2)}-{d(8)}",
                f"(0{d(2)}) {d(4)} {d(4)}",
                f"{d(3)}-{d(3)}-{d(4)}",
                f"{d(3)}.{d(3)}.{d(4)}",
            ]
        )
    )


@st.composite
def emails(draw: st.DrawFn) -> str:
    word = st.text(string.ascii_lowercase, min_size=2, max_size=8)
    local = draw(word) + draw(st.sampled_from(["", ".", "_", "+", "-"]))
    local = local + draw(word) if local[-1] in "._+-" else local
    local = local + _digits(draw, draw(st.integers(0, 3)))
    domain = draw(word) + draw(st.sampled_from([".com", ".org", ".co.uk", ".de", ".io"]))
    value = f"{local}@{domain}"
    return value.capitalize() if draw(st.booleans()) else value


SECRET_ALPHABET = string.ascii_letters + string.digits + "!#$%&*_-+=?"


@st.composite
def secrets(draw: st.DrawFn) -> tuple[str, str]:
    """(how it is said, the secret): after "password is", "PIN:", "api key=" and the like."""
    trigger = draw(
        st.sampled_from(
            [
                "my password is ",
                "the wifi password is ",
                "Password: ",
                "PIN: ",
                "my pin is ",
                "pin code: ",
                "api key=",
                "API key: ",
                "api_key=",
                "the passcode is ",
                "token: ",
            ]
        )
    )
    if "pin" in trigger.lower():
        value = _digits(draw, draw(st.integers(5, 8)))
    else:
        core = draw(st.text(SECRET_ALPHABET, min_size=6, max_size=14))
        # a letter and a digit: never a word or number the rest of the text could hold
        value = draw(st.sampled_from("abcdefghkmnpqrstuvwxyz")) + core + _digits(draw, 2)
    return trigger, value


STREETS = ["Baker", "High", "Old Kent", "Oak", "Maple Leaf", "King", "Church", "Mill"]
SUFFIXES = ["Street", "St", "Road", "Rd", "Avenue", "Ave", "Lane", "Drive", "Way", "Court"]


@st.composite
def addresses(draw: st.DrawFn) -> str:
    number = str(draw(st.integers(1, 9999)))
    return f"{number} {draw(st.sampled_from(STREETS))} {draw(st.sampled_from(SUFFIXES))}"


# (the personal value as typed, the sentence that carries it)
CARRIERS = {
    "email": ["Mail me at {v} please.", "My email is {v} by the way.", "Write to {v} soon."],
    "phone": ["Call me on {v} tonight.", "My number is {v} if needed.", "Text {v} when done."],
    "card": ["Pay with my card {v} please.", "The card number is {v} for the order."],
    "iban": ["Send the refund to IBAN {v} today.", "My account is {v} for transfers."],
    "address": ["I live at {v} near the park.", "Deliver it to {v} tomorrow."],
}
FILLERS = [
    "Is the pot boiling yet?",
    "What should I cook tonight?",
    "Thanks a lot.",
    "What about the one on the left?",
    "Can you check the oven?",
    "Remind me to buy milk.",
    "How long do eggs take?",
    "Is anyone at the door?",
    "And the fridge?",
]


@dataclass
class Planted:
    kind: str
    value: str


@st.composite
def personal(draw: st.DrawFn, kind: str) -> tuple[str, Planted]:
    """A sentence carrying one value of ``kind``."""
    if kind == "secret":
        trigger, value = draw(secrets())
        return f"Remember that {trigger}{value} for later.", Planted(kind, value)
    value = draw(
        {"email": emails, "phone": phones, "card": cards, "iban": ibans}.get(kind, addresses)()
    )
    return draw(st.sampled_from(CARRIERS[kind])).format(v=value), Planted(kind, value)


@dataclass
class ViewPlan:
    name: str
    description: str
    private: bool
    fmt: str  # PNG or JPEG
    seed: int
    score: float


@dataclass
class DialoguePlan:
    policy: str
    unsure: bool  # the device model is unsure: rules and cascade escalate
    turns: list[str]
    persona: str | None
    planted: list[Planted]
    views: list[ViewPlan]
    recall_k: int


@st.composite
def dialogues(draw: st.DrawFn) -> DialoguePlan:
    n_turns = draw(st.integers(1, 4))
    sentences: list[list[str]] = [[draw(st.sampled_from(FILLERS))] for _ in range(n_turns)]
    planted: list[Planted] = []
    for kind in KINDS:  # every kind in every dialogue, in a random turn; some twice
        for _ in range(draw(st.integers(1, 2))):
            sentence, value = draw(personal(kind))
            sentences[draw(st.integers(0, n_turns - 1))].append(sentence)
            planted.append(value)
    turns = [" ".join(draw(st.permutations(s))) for s in sentences]
    persona = None
    if draw(st.booleans()):
        (email_text, email), (phone_text, phone) = draw(personal("email")), draw(personal("phone"))
        persona = f"You are a kitchen assistant. {email_text} {phone_text}"
        planted += [email, phone]
    token = lambda: draw(st.text(string.ascii_lowercase, min_size=6, max_size=6))  # noqa: E731
    views = [
        ViewPlan(
            name=f"{room}{i}_{token()}",  # unique in the dialogue
            description=f"{room} camera {token()}",
            private=private,
            fmt=draw(st.sampled_from(["PNG", "JPEG"])),
            seed=draw(st.integers(0, 2**31)),
            score=draw(st.floats(0.0, 1.0)),
        )
        for i, (room, private) in enumerate(
            [
                *(("bedroom", True) for _ in range(draw(st.integers(1, 2)))),
                *(("overhead", False) for _ in range(draw(st.integers(0, 2)))),
            ]
        )
    ]
    return DialoguePlan(
        policy=draw(st.sampled_from(["always-cloud", "rules", "cascade"])),
        unsure=draw(st.booleans()),
        turns=turns,
        persona=persona,
        planted=planted,
        views=views,
        recall_k=draw(st.integers(0, 3)),
    )


def _image(path: Path, plan: ViewPlan, salt: str) -> None:
    rng = random.Random(f"{salt}/{plan.seed}")  # noise: no two images of a run alike
    pixels = bytes(rng.randrange(256) for _ in range(16 * 12 * 3))
    Image.frombytes("RGB", (16, 12), pixels).save(path, format=plan.fmt)


# --- the leaks looked for ------------------------------------------------------------------------


def _forms(planted: Planted) -> set[str]:
    """A personal value as typed and, for a number, also without its spaces and separators."""
    forms = {planted.value}
    if planted.kind in ("phone", "card", "iban"):
        forms |= {planted.value.replace(" ", ""), re.sub(r"\W", "", planted.value)}
    return forms


@dataclass
class Totals:
    dialogues: int = 0
    turns: int = 0
    requests: int = 0
    planted: int = 0
    private_views: int = 0
    recalled: int = 0
    leaks: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    reset_breakers()
    with CaptureServer() as s:
        yield s
    reset_breakers()


def test_no_private_item_reaches_the_cloud(tmp_path: Path, server: CaptureServer) -> None:
    started = time.perf_counter()
    settings = Settings(
        cloud={"mode": "remote", "timeout_s": 10.0, "max_attempts": 1, "max_tokens": 32},
        local={"tokens_per_s": 1000.0},
    )
    cloud = make_cloud_chat_model(server.base_url, "fuzz-model", API_KEY, 10.0, 32)
    local = EchoLocal()
    scorer = FixedScorer({})
    audit_path = tmp_path / "audit.jsonl"
    services = Services(
        settings=settings,
        local=local,
        cloud=cloud,
        embeddings=DeterministicFakeEmbedding(size=32),
        association=scorer,
        media_dir=tmp_path / "media",
        audit=AuditLog(audit_path),
    )
    conn = sqlite3.connect(tmp_path / "threads.sqlite", check_same_thread=False)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client import CollectorRegistry

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = TurnMetrics(CollectorRegistry())
    observer = GraphObserver(metrics, provider.get_tracer("privacy-fuzz"))
    graph = build_graph(services, checkpointer=SqliteSaver(conn))
    graph = graph.with_config(callbacks=[observer])  # as the server wires it
    totals = Totals()
    all_secret: set[str] = set()  # everything private of every dialogue, for the audit check
    shared_sha: list[dict[str, str]] = []  # per request: its dialogue's shared views' hashes

    @hypothesis_settings(
        max_examples=DIALOGUES,
        deadline=None,
        database=None,
        derandomize=True,  # the same dialogues every run: a leak it finds, it finds again
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=dialogues())
    def run(plan: DialoguePlan) -> None:
        n = totals.dialogues
        totals.dialogues += 1
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        views: dict[str, dict[str, Any]] = {}
        private: set[str] = set()
        for index, view in enumerate(plan.views):
            path = folder / f"{view.name}.{view.fmt.lower()}"
            _image(path, view, salt=f"{n}/{index}")
            views[view.name] = {
                "image": str(path),
                "description": view.description,
                "private": view.private,
            }
            if view.private:
                data = path.read_bytes()
                sent_as = cloud_image(str(path), settings.cloud.image_max_side).url
                private |= {
                    view.name,
                    view.description,
                    str(path),
                    hashlib.sha256(data).hexdigest(),
                    base64.b64encode(data).decode(),
                    sent_as.split(",", 1)[1],  # what the cloud node would send
                }
                totals.private_views += 1
        shared = {
            name: hashlib.sha256(Path(view["image"]).read_bytes()).hexdigest()
            for name, view in views.items()
            if not view["private"]
        }
        scorer.scores = {v.name: v.score for v in plan.views}
        local.logprob = -3.0 if plan.unsure else -0.1
        values = {form for p in plan.planted for form in _forms(p)}
        totals.planted += len(plan.planted)
        all_secret.update(values | private)
        context = Context(
            policy=plan.policy,
            user_id=f"user-{n}",
            recent_turns=1,  # older turns go to memory ...
            recall_k=plan.recall_k,  # ... and come back from it
            min_recall_score=-1.0,
            latency_budget_s=1e4,
            cost_budget_usd=100.0,
            **({"system_prompt": plan.persona} if plan.persona else {}),
        )
        config = {"configurable": {"thread_id": f"fuzz-{n}"}}
        first = len(server.bodies)
        for i, text in enumerate(plan.turns):
            state_in: dict[str, Any] = {"messages": [("user", text)]}
            if i == 0:
                state_in["views"] = views
            out = graph.invoke(state_in, config, context=context)
            assert out["turns"][-1]["answer"]
            metrics.turn(out["turns"][-1])  # what the server's per-turn hook does
            totals.turns += 1
        for k, raw in enumerate(server.bodies[first:], start=first + 1):
            body = raw.decode()
            shared_sha.append(shared)
            totals.recalled += "Relevant earlier conversation" in body
            text = DATA_URL.sub("", body)  # personal values: looked for outside the images
            for value in sorted(values):
                if value in text:
                    kind = next(p.kind for p in plan.planted if value in _forms(p))
                    totals.leaks.append(f"request {k}: {kind} {value!r} in {_around(text, value)}")
            for item in sorted(private):
                if item in body:
                    totals.leaks.append(f"request {k}: private view item {item!r:.70}")
            labels = re.findall(r"Camera view '([^']*)':", body)
            assert set(labels) <= set(shared), (k, labels)

    run()
    conn.close()

    # One audit line per request, in order, naming the views each request carried.
    entries = read_audit(audit_path)
    totals.requests = len(server.bodies)
    assert len(entries) == totals.requests
    audit_leaks: list[str] = []
    for entry, raw, sha in zip(entries, server.bodies, shared_sha, strict=True):
        labels = re.findall(r"Camera view '([^']*)':", raw.decode())
        assert entry["views"] == [{"name": name, "sha256": sha[name]} for name in labels]
        assert entry["outcome"] == "ok" and entry["endpoint"] == server.base_url.split("/")[2]
        # Its other fields are numbers and a checked ISO time; these are its texts:
        texts = [entry[key] for key in ("thread_id", "user_id", "model", "endpoint", "outcome")]
        texts += [*entry["redactions"], *(v["name"] for v in entry["views"])]
        audit_leaks += [item for item in all_secret | {API_KEY} if item in " ".join(texts)]
    # and the file as a whole (a PIN's digits alone could match inside a hash or a time)
    audit_text = audit_path.read_text()
    audit_leaks += [i for i in all_secret | {API_KEY} if i in audit_text and not i.isdigit()]
    # The metrics and every span (its name and attribute values), the same way.
    finished = spans.get_finished_spans()
    assert finished and metrics.exposition()[0]
    observed = metrics.exposition()[0].decode() + "\n".join(
        f"{span.name} {' '.join(map(str, (span.attributes or {}).values()))}" for span in finished
    )
    observed_leaks = [i for i in all_secret | {API_KEY} if i in observed and not i.isdigit()]
    seconds = time.perf_counter() - started
    print(
        f"\nprivacy fuzz: {totals.dialogues} dialogues fuzzed ({totals.turns} turns), "
        f"{totals.requests} requests captured ({totals.recalled} with recalled memory), "
        f"{totals.planted} personal values planted, {totals.private_views} private views, "
        f"{len(finished)} spans, leaks {len(totals.leaks) + len(audit_leaks)} "
        f"(metrics and spans: {len(observed_leaks)}), {seconds:.1f} s"
    )
    assert totals.dialogues >= DIALOGUES
    kinds = Counter(leak.split(" ")[2] for leak in totals.leaks)
    assert totals.leaks == [], f"leaks by kind {dict(kinds)}:\n" + "\n".join(totals.leaks[:20])
    assert audit_leaks == [], f"in the audit log: {sorted(set(audit_leaks))[:20]}"
    assert observed_leaks == [], f"in the metrics or spans: {sorted(set(observed_leaks))[:20]}"


def _around(text: str, value: str, width: int = 80) -> str:
    i = text.index(value)
    return repr(text[max(i - width, 0) : i + len(value) + width])
