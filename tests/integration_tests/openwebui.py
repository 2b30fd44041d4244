"""Drive the real Open WebUI in headless Chromium and record what it sends to its backend.

How the fixture ``data/openwebui_requests.jsonl`` was recorded: Open WebUI 0.12.4 from PyPI
(with torch 2.13.0+cpu, playwright 1.65.3), Debian's Chromium 156, Python 3.11, on a 2-core
machine without network::

    python3 -m venv .cache/openwebui/venv            # ``ensure_venv`` does these three
    .cache/openwebui/venv/bin/pip install torch==2.13.0
    .cache/openwebui/venv/bin/pip install open-webui==0.12.4 playwright
    apt-get install -y chromium                      # no ``playwright install``: not reachable
    .cache/openwebui/venv/bin/python -m tests.integration_tests.openwebui \\
        --out .cache/openwebui/run --fixture tests/integration_tests/data/openwebui_requests.jsonl

The venv took 142 s to install here (torch 29 s, the rest 113 s) and holds 3.1 GB; it lives
under ``.cache/openwebui`` (ignored by git) and is reused while it holds the pinned version.
Open WebUI answers ``/health`` about 20 s after it starts; the scenario takes about 75 s.

``record`` starts the capturing backend (``openwebui_capture.py``) on 127.0.0.1, starts Open
WebUI offline against it (auth on, user-info headers forwarded, no embedding model, no Ollama,
the backend's model visible to every user),
signs up two users through Open WebUI's HTTP API (``POST /api/v1/auths/signup``: the first is
the admin; ``POST /api/v1/auths/add``: the admin adds the second), and then drives the browser
as a person would: sign-in form, chat input, file input for the image, the Regenerate button
(its Try Again entry), the Edit button of a question with its Send button, New Chat (by opening
``/``, where its link points). Scenario:

- user 1: a 4-turn chat with a PNG attached in turn 2, a regenerate of the last answer, an
  edit of turn 3's question (sent), then a second chat of 2 turns;
- user 2: a 2-turn chat.

Each captured request carries the scenario step that caused it (``action``); the fixture keeps
every chat-completions request, trimmed (``openwebui_capture.trim``: the key's shape, the
``X-OpenWebUI-*`` headers, the body with long prompts cut, tools by name, image data URLs by
length and sha256, the answer's status). Screenshots land in ``<out>/screenshots`` (ignored by
git). ``data/openwebui_requests_legacy.jsonl`` is the same scenario with ``--function-calling
legacy`` (each user's Function Calling setting set to Legacy): no tools attached, all else the
same. ``--upstream http://127.0.0.1:P --api-key KEY --model tmo-...`` runs the same scenario
against a real server (``tmo-graph serve``) through the recording proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from tests.integration_tests.openwebui_capture import (
    MODEL_ID,
    CaptureServer,
    chore_kind,
    fixture_records,
)

OPENWEBUI_VERSION = "0.12.4"
TORCH_VERSION = "2.13.0"
PLAYWRIGHT_VERSION = "1.65.3"
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "openwebui"
CHROMIUM = Path("/usr/bin/chromium")
FIXTURE = Path(__file__).parent / "data" / "openwebui_requests.jsonl"
USERS = (
    {"name": "Ada Admin", "email": "ada@example.com", "password": "ada-password-1"},
    {"name": "Bo User", "email": "bo@example.com", "password": "bo-password-1"},
)
# After an action, Open WebUI's chores (title, tags, follow-ups) arrive after the answer: the
# action is over once the backend has seen nothing for this long.
QUIET_S = 4.0


def ensure_venv(cache: Path = CACHE) -> Path:
    """Open WebUI's own virtual environment (torch first, CPU build from the local wheels), made
    once and reused while it holds the pinned Open WebUI and playwright; returns its python."""
    python = cache / "venv" / "bin" / "python"
    check = "import importlib.metadata as m, playwright; print(m.version('open-webui'))"
    if python.exists():
        print(f"checking Open WebUI's venv in {cache}", flush=True)
        found = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == OPENWEBUI_VERSION:
            return python
    print(
        f"installing Open WebUI {OPENWEBUI_VERSION} into {cache / 'venv'} (about 3 GB)", flush=True
    )
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(cache / "venv")], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run(
        [*pip, f"open-webui=={OPENWEBUI_VERSION}", f"playwright=={PLAYWRIGHT_VERSION}"], check=True
    )
    return python


def small_png(width: int = 48, height: int = 48) -> bytes:
    """A small red-and-blue checkerboard PNG (8-pixel squares) made here: no image files in
    the repository."""
    rows = b"".join(
        b"\x00"
        + b"".join(
            b"\xff\x00\x00" if (x // 8 + y // 8) % 2 else b"\x00\x00\xff" for x in range(width)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def openwebui_env(backend_url: str, data_dir: Path, api_key: str, model: str) -> dict[str, str]:
    """Open WebUI's settings for an offline run against one OpenAI-compatible backend."""
    return {
        **os.environ,
        "OFFLINE_MODE": "True",
        "HF_HUB_OFFLINE": "1",
        "RAG_EMBEDDING_MODEL": "",  # empty: no embedding model is loaded at boot
        "ENABLE_OLLAMA_API": "False",
        "OPENAI_API_BASE_URL": backend_url,
        "OPENAI_API_KEY": api_key,
        "DATA_DIR": str(data_dir),
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",
        "DEFAULT_MODELS": model,
        # A connection's models are the admin's alone by default; users need to see it too.
        "BYPASS_MODEL_ACCESS_CONTROL": "true",
        "WEBUI_SECRET_KEY": "openwebui-capture-secret",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ANONYMIZED_TELEMETRY": "False",
    }


def start_openwebui(
    venv_python: Path, backend_url: str, folder: Path, port: int, api_key: str, model: str
) -> subprocess.Popen[bytes]:
    """Start ``open-webui serve`` on 127.0.0.1:port and wait for ``/health`` (about 17 s)."""
    log = (folder / "openwebui.log").open("wb")
    process = subprocess.Popen(
        [
            str(venv_python.parent / "open-webui"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=openwebui_env(backend_url, folder / "data", api_key, model),
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Open WebUI exited: see {folder / 'openwebui.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"Open WebUI did not answer /health within 180 s: {folder}/openwebui.log")


def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.load(response)
        return result


def sign_up_users(base: str, function_calling: str | None = None) -> None:
    """The first signup is Open WebUI's admin; the admin adds the second user (role user).
    ``function_calling="legacy"`` sets each user's Function Calling setting (Settings >
    General > Advanced Parameters) as a person would in the UI; None keeps the default
    (native, with the built-in tools attached)."""
    admin = _post(f"{base}/api/v1/auths/signup", USERS[0])
    user = _post(f"{base}/api/v1/auths/add", {**USERS[1], "role": "user"}, admin["token"])
    if function_calling:
        settings = {"ui": {"params": {"function_calling": function_calling}}}
        for token in (admin["token"], user["token"]):
            _post(f"{base}/api/v1/users/user/settings/update", settings, token)


class Scenario:
    """The browser side: one page per user, each step labelled on the capturing server."""

    def __init__(self, base: str, capture: CaptureServer, shots: Path, png: Path) -> None:
        self.base, self.capture, self.shots, self.png = base, capture, shots, png
        self.page: Any = None
        self.shot = 0

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            for number, user in enumerate(USERS, start=1):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                self.page = context.new_page()
                self.sign_in(number, user)
                if number == 1:
                    self.first_user(number)
                else:
                    self.second_user(number)
                context.close()
            browser.close()

    def first_user(self, number: int) -> None:
        who = f"user{number}"
        self.say(f"{who} chat1 turn1", "Chat one, question one: what is a heat pump?")
        self.say(
            f"{who} chat1 turn2 image", "Question two: what colours are in this picture?", True
        )
        self.say(f"{who} chat1 turn3", "Question three: how efficient is it in winter?")
        self.say(f"{who} chat1 turn4", "Question four: what does it cost to run?")
        self.regenerate(f"{who} chat1 regenerate turn4")
        self.edit(
            f"{who} chat1 edit turn3", "Question three", "Question three, edited: and at -10 C?"
        )
        self.new_chat()
        self.say(f"{who} chat2 turn1", "Chat two, question one: name a prime number.")
        self.say(f"{who} chat2 turn2", "Question two: and the next one?")

    def second_user(self, number: int) -> None:
        who = f"user{number}"
        self.say(f"{who} chat1 turn1", "Bo's chat, question one: what is a heat pump?")
        self.say(f"{who} chat1 turn2", "Question two: is it loud?")

    def sign_in(self, number: int, user: dict[str, str]) -> None:
        page = self.page
        self.capture.action = f"user{number} sign-in"
        page.goto(f"{self.base}/auth")
        page.fill("input[type=email]", user["email"])
        page.fill("input[type=password]", user["password"])
        page.keyboard.press("Enter")
        page.wait_for_url(f"{self.base}/")
        page.locator("#chat-input").wait_for()
        # The release notes open once per user on the first visit.
        lets_go = page.get_by_role("button", name="Okay, Let's Go!")
        try:
            lets_go.wait_for(timeout=3000)
            lets_go.click()
        except Exception:  # noqa: BLE001 (playwright's timeout: the notes did not open)
            pass
        self.settle(f"user{number} sign-in", chats=0)

    def say(self, action: str, text: str, image: bool = False) -> None:
        page = self.page
        self.capture.action = action
        if image:
            page.locator("input[type=file]:not(#camera-input)").first.set_input_files(str(self.png))
            page.locator("#chat-input").click()
            page.wait_for_timeout(1500)  # the upload finishes before send is allowed
        page.locator("#chat-input").click()
        page.keyboard.type(text)
        page.keyboard.press("Enter")
        self.settle(action)

    def regenerate(self, action: str) -> None:
        self.capture.action = action
        button = self.page.get_by_role("button", name="Regenerate").last
        button.hover()
        button.click()
        # 0.12 opens a menu (Try Again, Add Details, More Concise, or a suggested change).
        self.page.get_by_text("Try Again", exact=True).click()
        self.settle(action)

    def edit(self, action: str, starts: str, text: str) -> None:
        page = self.page
        self.capture.action = action
        message = page.locator("div.user-message").filter(has_text=starts).first
        message.hover()
        message.get_by_role("button", name="Edit").click()
        box = page.locator("textarea[id^='message-edit-']")
        box.fill(text)
        page.locator("#confirm-edit-message-button").click()
        self.settle(action)

    def new_chat(self) -> None:
        # The New Chat pencil is a link to "/" (its button sits in the collapsed sidebar).
        self.page.goto(f"{self.base}/")
        self.page.locator("#chat-input").wait_for()
        self.page.wait_for_timeout(1000)

    def settle(self, action: str, chats: int = 1) -> None:
        """Wait until ``chats`` chat requests of this action arrived and the backend has been
        quiet for QUIET_S, then take a screenshot."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen = self.capture.requests()
            mine = [entry for entry in seen if entry.get("action") == action]
            turns = [entry for entry in mine if entry["method"] == "POST"]
            turns = [entry for entry in turns if chore_kind(entry["body"]) is None]
            last = seen[-1]["time"] if seen else 0.0
            if len(turns) >= chats and time.time() - last > QUIET_S:
                break
            time.sleep(0.5)
        else:
            self.screenshot(f"{action} TIMEOUT")
            raise RuntimeError(f"{action}: no chat request reached the backend within 90 s")
        self.screenshot(action)

    def screenshot(self, action: str) -> None:
        self.shot += 1
        name = f"{self.shot:02d}-{action.replace(' ', '-')}.png"
        self.page.screenshot(path=str(self.shots / name))


def record(
    out: Path,
    port: int = 18080,
    upstream: str | None = None,
    api_key: str = "sk-openwebui-capture",
    model: str = MODEL_ID,
    function_calling: str | None = None,
) -> Path:
    """Run the whole scenario; returns the JSONL file of every request the backend saw. With
    ``upstream`` (an origin such as ``http://127.0.0.1:8000``) Open WebUI talks to that server
    through the recording proxy, with ``api_key`` and ``model`` as its connection's key and
    default model."""
    if out.exists():
        shutil.rmtree(out)
    (out / "screenshots").mkdir(parents=True)
    png = out / "picture.png"
    png.write_bytes(small_png())
    capture = CaptureServer(out / "captured.jsonl", upstream=upstream).start()
    python = Path(sys.executable)
    started = time.monotonic()
    process = start_openwebui(python, capture.url, out, port, api_key, model)
    timings = {"openwebui_start_s": round(time.monotonic() - started, 1)}
    try:
        base = f"http://127.0.0.1:{port}"
        sign_up_users(base, function_calling)
        started = time.monotonic()
        Scenario(base, capture, out / "screenshots", png).run()
        timings["scenario_s"] = round(time.monotonic() - started, 1)
    finally:
        process.terminate()
        process.wait(timeout=30)
        capture.shutdown()
    (out / "timings.json").write_text(json.dumps(timings))
    return out / "captured.jsonl"


def write_fixture(captured: Path, fixture: Path) -> None:
    """The fixture: every chat-completions request, trimmed, in the order Open WebUI sent it."""
    lines = [json.dumps(record) for record in fixture_records(captured)]
    fixture.parent.mkdir(parents=True, exist_ok=True)
    fixture.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE / "run")
    parser.add_argument("--fixture", type=Path, help="also write the trimmed fixture here")
    parser.add_argument("--port", type=int, default=18080, help="Open WebUI's port")
    parser.add_argument("--upstream", help="forward to this origin, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="sk-openwebui-capture", help="the upstream's key")
    parser.add_argument("--model", default=MODEL_ID, help="the model Open WebUI selects")
    parser.add_argument("--function-calling", choices=["legacy"], help="the users' setting")
    args = parser.parse_args()
    captured = record(
        args.out, args.port, args.upstream, args.api_key, args.model, args.function_calling
    )
    if args.fixture:
        write_fixture(captured, args.fixture)
    print(captured)


if __name__ == "__main__":
    main()
