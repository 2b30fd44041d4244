"""The cloud role: any OpenAI-compatible endpoint, or a loopback ``transformers serve``.

Without an API key or network the "cloud" is a ``transformers serve`` subprocess on
127.0.0.1 serving a converted model folder, so the graph exercises a real HTTP chat API
(usage, timeouts, image parts) end to end. The package never leaves such a server running:
it is stopped at exit, and it exits by itself when its parent dies (it watches its stdin).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import Decoding

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

LOOPBACK_HOST = "127.0.0.1"
UNREACHABLE_FIX = (
    "start the server, fix `cloud.base_url` in your config, "
    "or use configs/default.yaml which starts a loopback server"
)
# Runs `transformers serve` in-process after starting a thread that ends the process when
# stdin reaches EOF, i.e. when the parent is gone, even after a SIGKILL that skips atexit.
_LAUNCHER = """\
import os, sys, threading

def _exit_with_parent():
    while os.read(0, 4096):  # raw fd: a blocked sys.stdin read would abort at shutdown
        pass
    os._exit(0)

threading.Thread(target=_exit_with_parent, daemon=True).start()
from transformers.cli.transformers import app
app(args=sys.argv[1:], prog_name="transformers")
"""


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A port nobody listens on right now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LoopbackServer:
    """``transformers serve FOLDER --host 127.0.0.1 --port P --device cpu`` as a subprocess.

    ``start()`` returns once ``GET /v1/models`` answers. The server is pinned to ``folder``
    and only accepts requests whose ``model`` is :attr:`model_name` (the folder path).
    """

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        device: str = "cpu",
    ) -> None:
        self.folder = Path(folder).resolve()
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.device = device
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.start_seconds: float | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The ``model`` field the server expects: the folder exactly as it was given."""
        return str(self.folder)

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the loopback server has not been started")
        return f"http://{LOOPBACK_HOST}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, port: int) -> list[str]:
        """The ``transformers serve`` arguments (run through :data:`_LAUNCHER`)."""
        return [
            "serve",
            self.model_name,
            "--host",
            LOOPBACK_HOST,
            "--port",
            str(port),
            "--device",
            self.device,
        ]

    def start(self) -> LoopbackServer:
        with self._lock:
            if self.running:
                return self
            if not (self.folder / "config.json").is_file():
                raise TmoGraphError(
                    f"cannot serve {self.folder}: not a Hugging Face model folder",
                    "pass a folder from resolve_local_model() (a GGUF must be converted first)",
                )
            begin = time.perf_counter()
            chosen = self.port
            for attempt in range(3):  # a free port can be taken between choosing and binding
                port = chosen or free_port()
                try:
                    self._launch(port)
                    break
                except TmoGraphError as exc:
                    if chosen or attempt == 2 or "address already in use" not in str(exc).lower():
                        raise
            self.start_seconds = time.perf_counter() - begin
            _live.add(self)
            return self

    def _launch(self, port: int) -> None:
        log_dir = Path(tempfile.mkdtemp(prefix="tmo-graph-serve-"))
        self.log_path = log_dir / "server.log"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI otherwise asks PyPI for updates
            "TOKENIZERS_PARALLELISM": "false",
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *self.command(port)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only us; our atexit hook stops it
            )
        self.port = port
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.base_url}/models"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    code = self.process.returncode if self.process else None
                    raise TmoGraphError(
                        f"loopback server for {self.folder} exited with status {code}: "
                        f"{self.log_tail()}",
                        f"see {self.log_path}; check the folder loads with transformers",
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.25)
        self._terminate()
        raise TmoGraphError(
            f"loopback server for {self.folder} was not ready after {self.startup_timeout_s:.0f} s",
            f"see {self.log_path}; on a busy machine raise the startup timeout",
        )

    def log_tail(self, lines: int = 3) -> str:
        """The server's last error line (a traceback ends with it), else its last lines."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines()]
        text = [ln for ln in text if ln and not ln.startswith("^")]
        errors = [ln for ln in text if "Error" in ln or "error" in ln]
        return errors[-1] if errors else " | ".join(text[-lines:])

    def _terminate(self, timeout_s: float = 10.0) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (kill it after ``timeout_s``); a clean stop drops its log."""
        with self._lock:
            self._terminate(timeout_s)
            _live.discard(self)
            if self.process is not None and self.log_path is not None:
                shutil.rmtree(self.log_path.parent, ignore_errors=True)
                self.log_path = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_live: set[LoopbackServer] = set()
_servers: dict[Path, LoopbackServer] = {}
_servers_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()


def get_loopback_server(folder: Path, startup_timeout_s: float = 120.0) -> LoopbackServer:
    """The process-wide loopback server for ``folder``, started on first use (or restarted)."""
    key = Path(folder).resolve()
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.running:
            server = LoopbackServer(key, startup_timeout_s=startup_timeout_s).start()
            _servers[key] = server
        return server


def loopback_generation_config(folder: Path, decoding: Decoding) -> dict[str, Any] | None:
    """The request field that gives ``transformers serve`` the device model's guard against
    loops: the served folder's own generation config (it replaces it whole) plus
    ``no_repeat_ngram_size`` / ``repetition_penalty``. transformers counts the prompt's
    tokens too, unlike the device model's answer-only guard. None when the guard is off."""
    if not decoding.no_repeat_ngram_size and decoding.repetition_penalty == 1.0:
        return None
    path = Path(folder) / "generation_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise TmoGraphError(
            f"cannot read {path} ({exc})", "convert the model again (delete its cache folder)"
        ) from None
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if decoding.no_repeat_ngram_size:
        config["no_repeat_ngram_size"] = decoding.no_repeat_ngram_size
    if decoding.repetition_penalty != 1.0:
        config["repetition_penalty"] = decoding.repetition_penalty
    return {"generation_config": json.dumps(config)}


def make_cloud_chat_model(
    base_url: str,
    model: str,
    api_key: str | None,
    timeout_s: float,
    max_tokens: int,
    extra_body: dict[str, Any] | None = None,
) -> ChatOpenAI:
    """A ChatOpenAI for ``base_url``; token usage is reported, also when streaming.

    ``extra_body``: fields sent with every request beside OpenAI's (the loopback stand-in's
    ``generation_config``, :func:`loopback_generation_config`)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        extra_body=extra_body,
        base_url=base_url,
        model=model,
        # An explicit placeholder: a keyless endpoint must not receive $OPENAI_API_KEY.
        api_key=api_key or "not-needed",
        timeout=timeout_s,  # the cloud node passes each attempt a shorter one when due
        # No client retries: the cloud node makes the attempts itself, within the latency
        # left and through the endpoint's circuit breaker (tmo_graph.guards.faults).
        max_retries=0,
        max_tokens=max_tokens,
        stream_usage=True,
    )


def check_endpoint(base_url: str, timeout_s: float = 5.0, api_key: str | None = None) -> None:
    """Raise :class:`TmoGraphError` unless ``GET {base_url}/models`` answers with 2xx."""
    url = f"{base_url.rstrip('/')}/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.ConnectError:
        why = "connection refused"
    except httpx.TimeoutException:
        why = f"no answer within {timeout_s:g} s"
    except (httpx.HTTPError, ValueError) as exc:  # bad URL, protocol errors
        why = f"{type(exc).__name__}: {exc}"
    else:
        if response.is_success:
            return
        why = f"HTTP {response.status_code}"
        if response.status_code in (401, 403):
            raise TmoGraphError(
                f"cloud endpoint {base_url} refused the API key ({why})",
                "check the key in the environment variable named by `cloud.api_key_env`",
            )
    raise TmoGraphError(f"cloud endpoint {base_url} is unreachable ({why})", UNREACHABLE_FIX)
