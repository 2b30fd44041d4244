"""A capturing OpenAI-compatible backend: records every request a real client sends.

It answers ``GET /v1/models`` with one model and ``POST /v1/chat/completions`` with a fixed
short answer, plain or streamed (server-sent events when ``stream`` is true), and appends each
request (method, path, headers, JSON body, the answer's status) as one line to a JSONL file.
Given an upstream origin (``tmo-graph serve``, say) it forwards every request there instead,
streamed answers chunk by chunk, and records the same lines. Standard library only, so both
the project's interpreter and Open WebUI's own virtual environment can run it.

``trim`` turns a captured request into the small record the fixture keeps: the headers that
matter, the body's shape, image data URLs replaced by their length and sha256, and the kind of
request (chat or one of Open WebUI's chores).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL_ID = "tmo"
ANSWER = "A fixed answer from the capturing backend."

# Words from the task lines of Open WebUI's chore prompts (its default templates, 0.12.4 and the
# older follow-up wording): a request whose last user message starts with "### Task:" and holds
# one of these is a chore, not a chat turn.
CHORE_MARKERS = {
    "title": ("Generate a concise title", "Generate a concise, 3-5 word title"),
    "tags": ("Generate 1-3 broad tags",),
    "follow_ups": (
        "Predict 3-5 useful messages this user might naturally send next",
        "Suggest 3-5 relevant follow-up questions",
    ),
    "query": ("determine the necessity of generating search queries",),
    "autocomplete": ("You are an autocompletion system",),
    "image_prompt": ("Generate a detailed prompt for am image generation task",),
}
_DATA_URL = re.compile(r"^data:([^;,]+)(;base64)?,(.*)$", re.DOTALL)
# Hop-by-hop headers (and the ones urllib sets itself) are not forwarded.
_HOP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
# Loopback only: never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Headers worth keeping in the fixture: the key's shape and everything Open WebUI names itself.
_KEPT_HEADERS = ("authorization", "content-type", "user-agent")


class _Handler(BaseHTTPRequestHandler):
    server: CaptureServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the JSONL file is the log."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server hook's name)
        self._handle(None, b"")

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = {"unparsed": raw.decode(errors="replace")}
        self._handle(body, raw)

    def _handle(self, body: Any, raw: bytes) -> None:
        """Answer (or forward) first, then record: the line carries the answer's status; it is
        written when the answer is complete, so a quiet log means nothing is in flight."""
        received, action = time.time(), self.server.action
        upstream = self.server.upstream
        status = self._forward(upstream, raw) if upstream else self._stand_in(body)
        entry = {
            "received": received,
            "time": time.time(),
            "action": action,
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body,
            "status": status,
        }
        with self.server.lock, self.server.log_path.open("a") as log:
            log.write(json.dumps(entry) + "\n")

    def _forward(self, upstream: str, raw: bytes) -> int:
        """Pass the request to the upstream server unchanged and its answer back as it comes
        (streamed answers chunk by chunk)."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        request = urllib.request.Request(
            upstream + self.path,
            data=raw if self.command == "POST" else None,
            headers=headers,
            method=self.command,
        )
        try:
            response = _DIRECT.open(request, timeout=600)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            status: int = response.status or 502
            self.send_response(status)
            self.send_header("Content-Type", response.headers.get("Content-Type", "text/plain"))
            self.end_headers()
            read = getattr(response, "read1", response.read)
            while chunk := read(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
        return status

    def _send_json(self, status: int, payload: Any) -> int:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return status

    def _stand_in(self, body: Any) -> int:
        """The fixed answers: one model, a short reply plain or streamed, 404 elsewhere."""
        path = self.path.rstrip("/")
        if self.command == "GET" and path.endswith("/models"):
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "capture"}
            return self._send_json(200, {"object": "list", "data": [model]})
        if self.command != "POST" or not path.endswith("/chat/completions"):
            return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
        created = int(time.time())
        if isinstance(body, dict) and body.get("stream"):
            self._stream(created)
            return 200
        message = {"role": "assistant", "content": ANSWER}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return self._send_json(
            200,
            {
                "id": "chatcmpl-capture",
                "object": "chat.completion",
                "created": created,
                "model": MODEL_ID,
                "choices": [choice],
                "usage": usage,
            },
        )

    def _stream(self, created: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": word} for word in re.findall(r"\S+\s*", ANSWER)]
        for index, delta in enumerate(deltas + [{}]):
            last = index == len(deltas)
            chunk = {
                "id": "chatcmpl-capture",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL_ID,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class CaptureServer(ThreadingHTTPServer):
    """The capturing backend on 127.0.0.1 (a stand-in, or a recording proxy in front of an
    upstream server); ``start`` serves it from a daemon thread."""

    daemon_threads = True

    def __init__(self, log_path: Path, port: int = 0, upstream: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.log_path = log_path
        # With an upstream (an origin such as http://127.0.0.1:8000, for example
        # ``tmo-graph serve``) every request is forwarded there and recorded with its status.
        self.upstream = upstream.rstrip("/") if upstream else None
        self.lock = threading.Lock()
        # The scenario step now running, recorded with each request (set by the driver).
        self.action = ""

    @property
    def url(self) -> str:
        """The OpenAI base URL to give a client (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> CaptureServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def requests(self) -> list[dict[str, Any]]:
        """Every request recorded so far, oldest first."""
        return read_jsonl(self.log_path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chore_kind(body: Any) -> str | None:
    """Which of Open WebUI's chores a chat-completions body is, or None for a chat turn."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not messages:
        return None
    last = messages[-1]
    text = last.get("content") if isinstance(last.get("content"), str) else ""
    if last.get("role") != "user" or not text.lstrip().startswith("### Task:"):
        return None
    for kind, markers in CHORE_MARKERS.items():
        if any(marker.lower() in text.lower() for marker in markers):
            return kind
    return "other"


def _blank_media(value: Any) -> Any:
    """Replace each data URL by ``data:<type>;<length> chars;sha256=<hex>``: the fixture
    stays small and still tells whether the same image is resent."""
    if isinstance(value, str):
        match = _DATA_URL.match(value)
        if match:
            digest = hashlib.sha256(value.encode()).hexdigest()[:16]
            return f"<data:{match.group(1)} len={len(value)} sha256={digest}>"
        return value
    if isinstance(value, list):
        return [_blank_media(item) for item in value]
    if isinstance(value, dict):
        return {key: _blank_media(item) for key, item in value.items()}
    return value


def _content_shape(content: Any) -> Any:
    """A message's content as it matters for the fixture: text kept (short), parts typed."""
    if isinstance(content, str):
        return content if len(content) <= 200 else content[:200] + f"...<{len(content)} chars>"
    return _blank_media(content)


def trim(entry: dict[str, Any]) -> dict[str, Any]:
    """The fixture's record of one captured request."""
    headers = {key.lower(): value for key, value in entry["headers"].items()}
    kept = {key: headers[key] for key in _KEPT_HEADERS if key in headers}
    if "authorization" in kept:
        scheme, _, secret = kept["authorization"].partition(" ")
        kept["authorization"] = f"{scheme} <{len(secret)} chars>"
    kept |= {key: value for key, value in headers.items() if key.startswith("x-openwebui")}
    record: dict[str, Any] = {"method": entry["method"], "path": entry["path"], "headers": kept}
    body = entry["body"]
    if not isinstance(body, dict):
        return record
    record["kind"] = chore_kind(body) or "chat"
    messages = [
        {**message, "content": _content_shape(message.get("content"))}
        for message in body.get("messages", [])
    ]
    tools = body.get("tools") or []
    summary = {key: value for key, value in body.items() if key not in ("messages", "tools")}
    summary["messages"] = messages
    summary["tools"] = [tool.get("function", {}).get("name") for tool in tools]
    record["body"] = _blank_media(summary)
    return record


def fixture_records(captured: Path) -> list[dict[str, Any]]:
    """The fixture's lines for a capture: every POST, trimmed, with the scenario step that
    caused it, in the order the backend received them (``GET /v1/models`` left out)."""
    entries = sorted(read_jsonl(captured), key=lambda entry: entry["received"])
    return [
        {"action": entry["action"], "status": entry["status"], **trim(entry)}
        for entry in entries
        if entry["method"] == "POST"
    ]
