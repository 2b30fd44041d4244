"""``TMOChatModel``: the tmo-graph router as a LangChain chat model.

An existing LangChain app swaps its chat model for the router::

    chain = ChatPromptTemplate.from_messages([...]) | TMOChatModel(graph=graph) | StrOutputParser()

Each call is one turn of the graph (:mod:`tmo_graph.conversation`): it streams only the final
answer's tokens (a local draft the cloud replaced never arrives) and returns an ``AIMessage``
whose ``response_metadata`` is the turn record (route, views sent, confidence, cost ...) and
whose ``usage_metadata`` sums the tokens of the turn's model calls.

**Tools.** ``bind_tools(tools, tool_choice=...)`` offers tools to every call (an agent from
``langchain.agents.create_agent`` or ``langgraph.prebuilt.create_react_agent`` binds them).
The device model cannot call tools, so a turn with tools goes to the cloud model with them
whenever the policy and budgets allow a cloud answer; a turn kept on the device answers
without them and its record warns. The cloud's tool calls are the ``AIMessage``'s
``tool_calls`` (streamed: ``tool_call_chunks`` in the last chunk); the next call, ending with
the ``ToolMessage``s, is the thread's next turn.

**Threads.** The turn runs on ``config["configurable"]["thread_id"]``, else the
``thread_id`` field, else a new thread per call. Budgets and history live in the thread
only when the graph has a checkpointer (``build_graph(checkpointer=...)``); the default
graph has none, so each call is a dialogue of its own made of the messages it was given.

**What is sent to the thread.** Only the messages the thread does not hold yet, by the
history rule every surface shares (:func:`tmo_graph.conversation.new_messages`, strict): a
caller may pass the whole history each call (LCEL chains) or only the new question; a
history whose AI answers are not the thread's is refused (use a new ``thread_id``); a
repeated system message is kept once. The call's messages must end with the user's message.

**Learning** (docs/learning.md). ``feedback(turn, score)`` / ``afeedback`` keep a user's
score of a turn of the model's thread in ``labels`` (and a line in the audit log). With a
``judge`` (:class:`tmo_graph.learning.shadow.ShadowJudge`, on with ``learning.shadow_rate``
> 0), each answered turn is handed to it after the answer is returned: it judges sampled
device turns and escalated turns in a thread of its own (with its own event loop, so the
judge's ``labels`` are a ``MemoryLabels`` or ``SqliteLabels``), never delaying or changing
the answer.

**Isolation.** The graph runs as its own run: the caller's run config (callbacks, an outer
LangGraph's checkpointer and namespace) does not leak into it, so an outer app streaming
``stream_mode="messages"`` sees this model's final tokens once and never a draft.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolCallChunk,
    UsageMetadata,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, var_child_runnable_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr, field_validator

from tmo_graph.context import Context
from tmo_graph.conversation import (
    Done,
    Token,
    astream_turn,
    new_messages,
    stream_turn,
    turn_summary,
)
from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.audit import AuditLog
from tmo_graph.learning.feedback import record_feedback, turns_of
from tmo_graph.learning.shadow import AnsweredTurn, ShadowJudge, with_user
from tmo_graph.media.modalities import check_views
from tmo_graph.settings import Settings
from tmo_graph.state import ModalitySpec, TurnRecord
from tmo_graph.threads.labels import TurnLabel, TurnLabels

# LangChain hands `_stream` neither the run config nor the run manager, so the public entry
# points pass the config's thread and user down as these keyword arguments.
THREAD_KWARG, USER_KWARG = "tmo_thread_id", "tmo_user_id"
# Per-call arguments for structured output, which the router cannot do.
STRUCTURED_KWARGS = frozenset({"functions", "function_call", "response_format"})
STRUCTURED_FIX = (
    "bind a tool with the schema instead (bind_tools([Schema], tool_choice=...)) and read "
    "the tool call's args, or use a plain chat model for structured output"
)


class ToolsNotSupported(TmoGraphError, NotImplementedError):
    """The router has no structured output (tools are bound with bind_tools)."""


def _structured_refused() -> ToolsNotSupported:
    return ToolsNotSupported(
        "TMOChatModel does not support structured output or the legacy functions API",
        STRUCTURED_FIX,
    )


def openai_tool_choice(choice: Any) -> str | dict[str, Any] | None:
    """``tool_choice`` as OpenAI takes it, from LangChain's spellings: ``"any"`` or ``True``
    is ``"required"``, a tool's name is that function."""
    if choice is None or isinstance(choice, dict):
        return choice
    if choice is True or choice == "any":
        return "required"
    if choice is False:
        return "none"
    if isinstance(choice, str) and choice.strip():
        if choice in ("auto", "none", "required"):
            return choice
        return {"type": "function", "function": {"name": choice}}
    raise TmoGraphError(
        f"tool_choice {choice!r:.60} is not a choice",
        'pass "auto", "required", "none", a tool\'s name, or leave it out',
    )


def _tool_call_chunks(calls: Sequence[Mapping[str, Any]]) -> list[ToolCallChunk]:
    """The answer's tool calls as one streamed chunk's pieces (each call whole)."""
    return [
        tool_call_chunk(
            name=c["name"], args=json.dumps(c.get("args") or {}), id=c.get("id"), index=i
        )
        for i, c in enumerate(calls)
    ]


def _usage(record: TurnRecord) -> UsageMetadata:
    """Tokens of all the turn's calls (the local model reports its output tokens only)."""
    given, made = int(record.get("input_tokens", 0)), int(record.get("output_tokens", 0))
    return UsageMetadata(input_tokens=given, output_tokens=made, total_tokens=given + made)


def _metadata(record: TurnRecord, thread_id: str) -> dict[str, Any]:
    return {"model_name": "tmo-graph", **turn_summary(record, thread_id)}


def _own_context() -> contextvars.Context:
    """A context without the caller's run config, so the graph is not made a child run."""
    ctx = contextvars.copy_context()
    ctx.run(var_child_runnable_config.set, None)
    return ctx


def _isolated(make: Callable[[], Iterator[Token | Done]]) -> Iterator[Token | Done]:
    ctx = _own_context()
    events = ctx.run(make)
    while True:
        try:
            yield ctx.run(next, events)
        except StopIteration:
            return


async def _aisolated(
    make: Callable[[], AsyncIterator[Token | Done]],
) -> AsyncIterator[Token | Done]:
    ctx = _own_context()
    events = ctx.run(make)
    while True:
        try:
            yield await asyncio.create_task(_anext(events), context=ctx)
        except StopAsyncIteration:
            return


async def _anext(events: AsyncIterator[Token | Done]) -> Token | Done:
    return await events.__anext__()


class TMOChatModel(BaseChatModel):
    """The tmo-graph router as a chat model: each call is one routed turn of a thread.

    See the module docstring for the thread and history rules.
    """

    graph: Any = Field(
        default=None,
        description="A compiled tmo-graph (build_graph(...)); default: built on first use from "
        "`settings`, without a checkpointer.",
    )
    settings: Settings | None = Field(
        default=None, description="Settings for the default graph (configs/default.yaml's)."
    )
    context: Context | None = Field(
        default=None, description="Per-run settings: policy, budgets, persona, models."
    )
    user_id: str | None = Field(
        default=None, description="Owner of the dialogue, unless the run config names one."
    )
    views: dict[str, ModalitySpec] = Field(
        default_factory=dict,
        description="Named device modalities (camera views, audio sources); per call via views=...",
    )
    thread_id: str | None = Field(
        default=None, description="Thread, unless the run config names one; else a new one."
    )
    wait_s: float = Field(default=30.0, description="How long a turn waits for its thread.")
    labels: Any = Field(
        default=None,
        description="A TurnLabels table for feedback() (default: the judge's); "
        "tmo_graph.threads.labels.MemoryLabels() or SqliteLabels(path).",
    )
    judge: Any = Field(
        default=None,
        description="A ShadowJudge(services, labels) that judges answered turns after the "
        "answer (learning.shadow_rate); None: no judging.",
    )

    _built: Any = PrivateAttr(default=None)
    _build_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    # Turns answered per thread by this model (feedback's check on a graph without threads).
    _answered: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: Any) -> Any:
        if labels is not None and not isinstance(labels, TurnLabels):
            raise TmoGraphError(
                f"labels must be a TurnLabels table, got {type(labels).__name__}",
                "pass tmo_graph.threads.labels.MemoryLabels() or SqliteLabels(path)",
            )
        return labels

    @field_validator("judge")
    @classmethod
    def _check_judge(cls, judge: Any) -> Any:
        if judge is not None and not isinstance(judge, ShadowJudge):
            raise TmoGraphError(
                f"judge must be a ShadowJudge, got {type(judge).__name__}",
                "pass tmo_graph.learning.shadow.ShadowJudge(services, labels), or leave it out",
            )
        return judge

    @field_validator("views", mode="before")
    @classmethod
    def _check_views(cls, views: Any) -> Any:
        # Before pydantic, which would drop a misspelt field silently; fails at construction.
        return check_views(views) if isinstance(views, Mapping) else views

    @property
    def _llm_type(self) -> str:
        return "tmo-graph"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        ctx = self.context
        return {"policy": ctx.policy if ctx else None, "views": sorted(self.views)}

    def get_graph_instance(self) -> Any:
        """The graph the turns run on (the default one is built once, on first use)."""
        if self.graph is not None:
            return self.graph
        with self._build_lock:
            if self._built is None:
                from tmo_graph.graph import build_graph

                self._built = build_graph(settings=self.settings)
            return self._built

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` offered every call (LangChain tools, functions, pydantic
        models or OpenAI dicts). A turn with tools goes to the cloud model with them when the
        policy and budgets allow a cloud answer, else it is answered on the device without
        them (the turn record warns); the answer's ``tool_calls`` are the cloud's.
        ``strict`` asks the endpoint to keep to the tools' schemas (OpenAI's ``strict``)."""
        if kwargs:
            raise TmoGraphError(
                f"unknown argument(s) {', '.join(sorted(kwargs))} for bind_tools",
                "pass the tools and, optionally, tool_choice and strict",
            )
        specs = [convert_to_openai_tool(t, strict=strict) for t in tools]
        return self.bind(tools=specs, tool_choice=openai_tool_choice(tool_choice))

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        raise _structured_refused()

    # --- one turn -------------------------------------------------------------------------

    def _prepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> tuple[Any, dict[str, Any], str, Any]:
        """(graph, inputs, thread id, context) for the call, or a TmoGraphError saying why not."""
        if stop:
            raise TmoGraphError(
                "stop sequences are not supported by the router", "leave `stop` out"
            )
        if STRUCTURED_KWARGS & set(kwargs):
            raise _structured_refused()
        views = kwargs.pop("views", None)
        tools = kwargs.pop("tools", None) or []
        tool_choice = openai_tool_choice(kwargs.pop("tool_choice", None))
        # From the run config (see _from_config), else from the run's metadata, where
        # LangChain copies `configurable` values when it is handed a config.
        meta = (run_manager.metadata if run_manager else None) or {}
        thread_id = str(
            kwargs.pop(THREAD_KWARG, None)
            or meta.get("thread_id")
            or self.thread_id
            or uuid.uuid4()
        )
        user_id = kwargs.pop(USER_KWARG, None) or meta.get("user_id") or self.user_id
        if kwargs:
            raise TmoGraphError(
                f"unknown argument(s) {', '.join(sorted(kwargs))}",
                "TMOChatModel takes only views=, tools= and tool_choice=; set the policy and "
                "budgets with context=",
            )
        if user_id is not None and not str(user_id).strip():
            raise TmoGraphError("user_id is empty", "pass the id of the dialogue's owner")
        context: Any = self.context
        if user_id is not None:
            # Without a Context, the graph's own defaults apply with this user.
            context = (
                replace(context, user_id=str(user_id)) if context else {"user_id": str(user_id)}
            )

        graph = self.get_graph_instance()
        stored: list[BaseMessage] = []
        if getattr(graph, "checkpointer", None) is not None:
            snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
            stored = list(snapshot.values.get("messages") or [])
        inputs: dict[str, Any] = {"messages": new_messages(messages, stored)}
        all_views = {**self.views, **check_views(views or {})}
        if all_views:
            inputs["views"] = all_views
        if tools:
            inputs["tools"] = [convert_to_openai_tool(t) for t in tools]
            inputs["tool_choice"] = tool_choice
        return graph, inputs, thread_id, context

    def _turn(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> Iterator[ChatGenerationChunk | ChatResult]:
        graph, inputs, thread_id, context = self._prepare(messages, stop, run_manager, kwargs)
        events = _isolated(
            lambda: stream_turn(graph, inputs, thread_id, context, wait_s=self.wait_s)
        )
        for event in events:
            if isinstance(event, Token):
                # LangChain reports each yielded chunk to the callbacks itself.
                yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))
            else:
                judged = self._answered_turn(event, thread_id, context)
                yield self._result(event, thread_id)
                if judged is not None and self.judge is not None:
                    self.judge.start_thread(judged)  # returns at once

    async def _aturn(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk | ChatResult]:
        # The thread's stored messages are read off the checkpointer: not on the event loop.
        graph, inputs, thread_id, context = await asyncio.to_thread(
            self._prepare, messages, stop, run_manager, kwargs
        )
        events = _aisolated(
            lambda: astream_turn(graph, inputs, thread_id, context, wait_s=self.wait_s)
        )
        async for event in events:
            if isinstance(event, Token):
                yield ChatGenerationChunk(message=AIMessageChunk(content=event.text))
            else:
                judged = self._answered_turn(event, thread_id, context)
                yield self._result(event, thread_id)
                if judged is not None and self.judge is not None:
                    # A thread, not a task: the caller's loop may end with this call.
                    self.judge.start_thread(judged)  # returns at once

    def _answered_turn(self, done: Done, thread_id: str, context: Any) -> AnsweredTurn | None:
        """Note the turn (for feedback) and, with a judge, the turn as it judges it."""
        turn = int(done.record["turn"])
        self._answered[thread_id] = max(self._answered.get(thread_id, 0), turn + 1)
        if self.judge is None:
            return None
        judge: ShadowJudge = self.judge
        run_context = with_user(context, judge.services.default_context, self.user_id)
        return AnsweredTurn.of(done.record, done.state, thread_id, run_context)

    # --- learning ----------------------------------------------------------------------------

    async def afeedback(
        self,
        turn: int,
        score: float,
        comment: str | None = None,
        thread_id: str | None = None,
    ) -> TurnLabel:
        """Keep a user's ``score`` of ``turn`` (the ``turn`` of the answer's
        ``response_metadata``; 1 / -1 for thumbs up / down) of ``thread_id`` (default: the
        model's ``thread_id``) as a ``feedback`` label in ``labels``, and a line in the
        audit log (the judge's services', else ``settings``'), never the comment's words."""
        labels = self.labels if self.labels is not None else getattr(self.judge, "labels", None)
        if labels is None:
            raise TmoGraphError(
                "this TMOChatModel has no labels table to keep feedback in",
                "pass labels=MemoryLabels() (or SqliteLabels(path)) when making it",
            )
        thread = thread_id or self.thread_id
        if not thread:
            raise TmoGraphError(
                "feedback needs the thread the turn was in",
                "pass thread_id= (the response_metadata's thread_id), or set the model's",
            )
        graph = self.get_graph_instance()
        if getattr(graph, "checkpointer", None) is not None:
            done = await asyncio.to_thread(turns_of, graph, thread)
        else:
            done = self._answered.get(thread, 0)
        user = self.user_id or (self.context.user_id if self.context else None)
        return await record_feedback(
            labels,
            thread_id=thread,
            turn=turn,
            score=score,
            user_id=str(user or "default"),
            comment=comment,
            turns_done=done,
            audit=self._audit_log(),
        )

    def feedback(
        self,
        turn: int,
        score: float,
        comment: str | None = None,
        thread_id: str | None = None,
    ) -> TurnLabel:
        """:meth:`afeedback` for a caller without an event loop (inside one, await
        ``afeedback``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.afeedback(turn, score, comment, thread_id))
        raise TmoGraphError(
            "feedback() was called inside a running event loop", "await model.afeedback(...)"
        )

    def _audit_log(self) -> AuditLog | None:
        if self.judge is not None:
            return cast(ShadowJudge, self.judge).services.audit
        settings = self.settings
        if settings is not None and settings.audit.enabled:
            return AuditLog(settings.audit_path())
        return None

    @staticmethod
    def _result(done: Done, thread_id: str) -> ChatResult:
        record = done.record
        replies = [m for m in done.state.get("messages") or [] if isinstance(m, AIMessage)]
        message = AIMessage(
            content=record["answer"],
            tool_calls=record.get("tool_calls") or [],
            # The thread's own id for the reply, so a caller passing it back is matched by id.
            id=replies[-1].id if replies else None,
            usage_metadata=_usage(record),
            response_metadata=_metadata(record, thread_id),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    @staticmethod
    def _last_chunk(result: ChatResult) -> ChatGenerationChunk:
        message = cast(AIMessage, result.generations[0].message)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=_tool_call_chunks(message.tool_calls),
                usage_metadata=message.usage_metadata,
                response_metadata=message.response_metadata,
                chunk_position="last",
            )
        )

    # --- LangChain's entry points ------------------------------------------------------------

    @staticmethod
    def _from_config(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus the thread and user named in the run config (or in the config of
        the run this call is part of, e.g. an outer LangGraph node's)."""
        configurable = ensure_config(config).get("configurable") or {}
        for key, name in (("thread_id", THREAD_KWARG), ("user_id", USER_KWARG)):
            if configurable.get(key) is not None:
                kwargs.setdefault(name, configurable[key])
        return kwargs

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return super().invoke(input, config, stop=stop, **self._from_config(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **self._from_config(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **self._from_config(config, kwargs))

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **self._from_config(config, kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = None
        for event in self._turn(messages, stop, run_manager, kwargs):
            if isinstance(event, ChatResult):
                result = event
        assert result is not None  # stream_turn always ends with Done
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for event in self._turn(messages, stop, run_manager, kwargs):
            yield self._last_chunk(event) if isinstance(event, ChatResult) else event

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = None
        async for event in self._aturn(messages, stop, run_manager, kwargs):
            if isinstance(event, ChatResult):
                result = event
        assert result is not None
        return result

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for event in self._aturn(messages, stop, run_manager, kwargs):
            yield self._last_chunk(event) if isinstance(event, ChatResult) else event
