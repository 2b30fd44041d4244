"""The on-device model as a LangChain chat model, decoding with :mod:`.engine`.

Greedy. Streaming yields the answer's text as it is decoded (a chat UI streaming a LangGraph
run's ``messages`` gets these chunks); invoking returns it whole. Both run the same decoding
loop, so the logits processors given as ``processors=`` (the token scores of the confidence
check, the deadline, the loop guard) run either way. Call options: ``max_new_tokens``,
``processors``, ``max_time_s`` and ``on_prompt_read`` (told how many prompt tokens were read
rather than found in the dialogue's key/value cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from tmo_graph.errors import TmoGraphError

ROLES = {"system": "system", "human": "user", "ai": "assistant"}
UNFINISHED = "\ufffd"  # a token that ends inside a UTF-8 character decodes to this


def chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the chat template's role/content dicts (text parts only)."""
    out = []
    for message in messages:
        role = ROLES.get(message.type)
        if role is None:
            raise TmoGraphError(
                f"the local model cannot read a {message.type!r} message",
                "pass system, human and AI messages (tool calls go to the cloud model)",
            )
        out.append({"role": role, "content": message.text})
    return out


class LocalChatModel(BaseChatModel):
    """Greedy answers of the on-device model (:class:`~.model.LocalModel`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    local: Any  # LocalModel (Any: pydantic need not know its type)
    max_new_tokens: int = 64

    @property
    def _llm_type(self) -> str:
        return "tmo-graph-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": str(self.local.folder.name), "max_new_tokens": self.max_new_tokens}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(chunk.text for chunk in self._stream(messages, stop, None, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        local = self.local  # a LocalModel
        tokenizer = local.tokenizer
        prompt = local._prompt_ids(chat_messages(messages))
        tokens = local.decoder.generate(
            prompt,
            int(kwargs.get("max_new_tokens") or self.max_new_tokens),
            processors=kwargs.get("processors") or (),
            end_token=tokenizer.eos_token_id,
            max_time_s=kwargs.get("max_time_s"),
            on_prompt_read=kwargs.get("on_prompt_read"),
        )
        answer: list[int] = []
        shown = ""  # the text given out so far
        try:
            for token in tokens:
                if token == tokenizer.eos_token_id:
                    break
                answer.append(token)
                text = tokenizer.decode(answer, skip_special_tokens=True)
                if text.endswith(UNFINISHED):
                    continue  # the next token completes the character
                cut = _stop_at(text, stop)
                new = (text if cut is None else text[:cut])[len(shown) :]
                if new:
                    shown += new
                    yield ChatGenerationChunk(message=AIMessageChunk(content=new))
                if cut is not None:
                    break
        finally:
            tokens.close()  # hands the key/value cache back at once


def _stop_at(text: str, stop: list[str] | None) -> int | None:
    """Where the first stop sequence in ``text`` begins, if any."""
    found = [text.find(s) for s in stop or () if s and s in text]
    return min(found) if found else None
