"""The chat request as OpenAI clients send it, read from its JSON body, and the model names
(``tmo-<policy>[-<threshold>]``) it may ask for."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tmo_graph.sections import POLICIES
from tmo_graph.server.errors import ApiError, bad, invalid
from tmo_graph.server.limits import TOKEN_FIELDS

MODEL_PREFIX = "tmo-"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    private: bool = False  # this server's extension: the message never leaves the device
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls (OpenAI's shape)
    tool_call_id: str | None = None  # a tool message: the call it answers

    @field_validator("private", mode="before")
    @classmethod
    def _real_boolean(cls, value: Any) -> Any:
        if not isinstance(value, bool):  # "yes" or "false" must not pass for a flag
            raise ValueError(
                f"must be true or false, a JSON boolean without quotes (got {value!r:.40})"
            )
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's request; fields not listed (temperature, max_tokens ...) are accepted and
    ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI's function tools
    tool_choice: str | dict[str, Any] | None = None

    def answer_tokens(self) -> int | None:
        """The answer length the request asks for (checked by
        :func:`tmo_graph.server.limits.check_request` before)."""
        extra = self.model_extra or {}
        asked = [extra.get(name) for name in TOKEN_FIELDS]
        return min((n for n in asked if isinstance(n, int)), default=None)


def parse_chat_request(raw: bytes) -> ChatRequest:
    """The body as a chat request, or a 400 naming what is wrong with it."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise bad("the body is nested too deeply; send the chat API's JSON shape") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = getattr(exc, "pos", getattr(exc, "start", 0))
        raise bad(
            f"the body is not JSON (error at byte {where}); send a JSON object as the "
            "OpenAI chat API takes it"
        ) from None
    if not isinstance(data, dict):
        raise bad(
            f"the body is JSON {type(data).__name__}, not an object; send "
            '{"model": ..., "messages": [...]}'
        )
    if problem := _unstorable_text(data):
        raise bad(f"the body holds {problem}, which no thread can store; send plain Unicode text")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc.errors()) from None


def _unstorable_text(data: Any) -> str | None:
    """What in a parsed JSON body no store takes ('\\u0000' in PostgreSQL, a lone UTF-16
    surrogate such as '\\ud800' in any UTF-8 store), or None. Walked without recursion."""
    stack = [data]
    while stack:
        value = stack.pop()
        texts: list[str] = []
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            texts = [k for k in value if isinstance(k, str)]
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        for text in texts:
            if "\x00" in text:
                return "a NUL character (\\u0000)"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone UTF-16 surrogate (an escape such as \\ud800 without its pair)"
    return None


def model_id(policy: str) -> str:
    """The model name that asks for ``policy``."""
    return f"{MODEL_PREFIX}{policy}"


def parse_model(model: str) -> tuple[str, float | None]:
    """``tmo-<policy>[-<threshold>]`` -> (policy, confidence threshold or None)."""
    name = model.strip()
    if name.startswith(MODEL_PREFIX):
        rest = name[len(MODEL_PREFIX) :]
        if rest in POLICIES:
            return rest, None
        policy, _, tail = rest.rpartition("-")
        if policy in POLICIES:
            try:
                threshold = float(tail)
            except ValueError:
                threshold = None
            if threshold is not None:
                if not 0.0 <= threshold <= 1.0:  # also refuses NaN
                    raise bad(
                        f"the threshold in model {model!r} must be in [0, 1]; "
                        f"use e.g. {model_id(policy)}-0.5",
                        "model",
                    )
                return policy, threshold
    names = ", ".join(model_id(p) for p in POLICIES)
    raise ApiError(
        404,
        f"The model {model!r} does not exist. Use one of: {names}, optionally with a "
        f"confidence threshold, e.g. {MODEL_PREFIX}cascade-0.35 (GET /v1/models lists them)",
        param="model",
        code="model_not_found",
    )
