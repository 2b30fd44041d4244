"""The on-device model: load its weights once, answer and score answers.

``LocalModel`` holds the tokenizer and the decoder (:mod:`tmo_graph.models.local.engine`) and
gives a LangChain chat model (:mod:`tmo_graph.models.local.chat`), teacher-forced token scores
for any answer, and plain decoding without scores as a baseline; ``get_local_model`` keeps one
per weights folder and precision in the process. Where the weights come from is
:mod:`tmo_graph.models.local.weights`; the logits processors that run while it decodes are
:mod:`tmo_graph.models.local.decoding`.

Precision (``local.precision``): the converted folder always holds float32 weights; a model
is loaded from it as float32, as bfloat16, or (the default) with its linear layers back on
the GGUF's 4-bit grid (:mod:`tmo_graph.models.local.quantize`), which decodes several times
faster than float32 on a 2-core CPU.
"""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.models.local.decoding import (
    AnswerRepetitionGuard,
    DeadlineGuard,
    GreedyStepRecorder,
    TokenScores,
)
from tmo_graph.models.local.weights import (
    DEFAULT_SOURCE,
    missing_dependency,
    resolve_local_model,
)
from tmo_graph.sections import Decoding, LocalModelSettings, LocalPrecision
from tmo_graph.settings import Settings, default_cache_dir

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

# Context length when neither the tokenizer nor the model config gives one; a tokenizer's
# model_max_length at or above UNSET_MAX_LENGTH is transformers' "not set" sentinel.
DEFAULT_CONTEXT_TOKENS = 2048
UNSET_MAX_LENGTH = 10**9
CUT_MARKER = " [...] "  # where the middle of an over-long message was cut out
PRECISIONS: tuple[LocalPrecision, ...] = ("int4", "bfloat16", "float32")
DEFAULT_PRECISION: LocalPrecision = LocalModelSettings().precision
DEFAULT_DECODING: Decoding = LocalModelSettings().decoding()


class LocalModel:
    """Tokenizer and decoder (:mod:`.engine`) on the CPU, loaded once, in one ``precision``."""

    def __init__(
        self,
        tokenizer: Any,
        decoder: Any,
        folder: Path,
        load_seconds: float,
        max_new_tokens: int = 64,
        precision: LocalPrecision = "float32",
        decoding: Decoding = DEFAULT_DECODING,
    ) -> None:
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.folder = folder
        self.load_seconds = load_seconds
        self.max_new_tokens = max_new_tokens
        self.precision = precision
        self.decoding = decoding
        self._chat_models: dict[int, BaseChatModel] = {}
        self._lock = threading.Lock()
        # The last prompt rendered, (messages, ids): answer() renders it to fit the context,
        # then its chat model renders the same messages again.
        self._last_prompt: tuple[tuple[tuple[str, str], ...], tuple[int, ...]] | None = None

    @classmethod
    def load(
        cls,
        folder: Path,
        max_new_tokens: int = 64,
        precision: LocalPrecision = DEFAULT_PRECISION,
        decoding: Decoding = DEFAULT_DECODING,
    ) -> LocalModel:
        """Load ``folder`` (from :func:`resolve_local_model`) in ``precision`` and warm it up."""
        folder = Path(folder)
        if precision not in PRECISIONS:
            raise TmoGraphError(
                f"local model precision {precision!r} is not one of {', '.join(PRECISIONS)}",
                f"set local.precision to {DEFAULT_PRECISION} (the fastest) or float32",
            )
        if not (folder / "config.json").is_file():
            raise TmoGraphError(
                f"{folder} is not a Hugging Face model folder (no config.json)",
                "pass the folder returned by resolve_local_model()",
            )
        start = time.perf_counter()
        try:
            from tmo_graph.models.local.engine import load_decoder
            from tmo_graph.models.local.tokenizer import ChatTokenizer
        except ImportError as exc:
            raise missing_dependency(exc) from None
        tokenizer = ChatTokenizer(folder)
        cache = default_cache_dir()
        decoder = load_decoder(folder, precision, cache / "native", cache / "decoders")
        self = cls(tokenizer, decoder, folder, 0.0, max_new_tokens, precision, decoding)
        # The first answer of a cold process is several times slower: pay it here, not
        # inside the first turn's deadline. In a context of its own: the warm-up is no part
        # of the run that loads the model (a chat UI streaming that run would show it).
        contextvars.Context().run(
            self.answer, [{"role": "user", "content": "Hi"}], max_new_tokens=2
        )
        self.load_seconds = time.perf_counter() - start
        return self

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decoding step reads (the KV cache, small for short dialogues,
        not counted): see :meth:`.engine.Decoder.weight_bytes_per_token`."""
        return int(self.decoder.weight_bytes_per_token())

    def with_max_new_tokens(
        self, max_new_tokens: int, decoding: Decoding | None = None
    ) -> LocalModel:
        """The same weights with another default answer length (and decoding settings):
        nothing is reloaded."""
        other = LocalModel(
            self.tokenizer,
            self.decoder,
            self.folder,
            self.load_seconds,
            max_new_tokens,
            self.precision,
            self.decoding if decoding is None else decoding,
        )
        other._chat_models = self._chat_models
        other._lock = self._lock
        return other

    def chat_model(self, max_new_tokens: int | None = None) -> BaseChatModel:
        """A greedy LangChain chat model over this model (one per answer length, cached)."""
        n = max_new_tokens or self.max_new_tokens
        with self._lock:
            if n not in self._chat_models:
                self._chat_models[n] = self._build_chat_model(n)
            return self._chat_models[n]

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, TokenScores]:
        """Greedy answer through the LangChain chat model, with its token scores.

        The scores are recorded during generation, streamed or not. ``tags`` mark the model
        call's run (streamed tokens carry them). ``max_time_s`` stops generating once that
        many seconds have passed (prompt reading included).
        """
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        messages, warnings = self.fit_to_context(messages, max_new_tokens)
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        chat = [kinds[m["role"]](content=m["content"]) for m in messages]
        recorder = GreedyStepRecorder()
        processors: list[Any] = []
        if self.decoding.repetition_penalty != 1.0 or self.decoding.no_repeat_ngram_size:
            processors.append(
                AnswerRepetitionGuard(
                    self.decoding.repetition_penalty, self.decoding.no_repeat_ngram_size
                )
            )
        if max_time_s is not None and self.tokenizer.eos_token_id is not None:
            processors.append(DeadlineGuard(max_time_s, int(self.tokenizer.eos_token_id)))
        processors.append(recorder)  # last: it keeps the scores the token was chosen from
        read = [0]  # prompt tokens read (the rest came from the dialogue's cache)
        start = time.perf_counter()
        reply = self.chat_model().invoke(
            chat,
            config={"tags": tags or []},
            processors=processors,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            max_time_s=max_time_s,
            on_prompt_read=lambda n: read.__setitem__(0, n),
        )
        text = str(reply.content).strip()
        n = len(recorder.chosen)
        if n and recorder.chosen[-1] == self.tokenizer.eos_token_id:  # the end is no answer
            n -= 1
        times = recorder.times
        return text, TokenScores(
            recorder.logprobs[:n],
            recorder.entropies[:n],
            n,
            reply.id,
            warnings,
            prompt_tokens=read[0],
            prefill_s=times[0] - start if times else None,
            decode_tokens=max(len(times) - 1, 0),
            decode_s=times[-1] - times[0] if times else None,
        )

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens the model reads for ``messages`` (at most its context: longer is cut)."""
        return min(len(self._prompt_ids(messages)), self.context_tokens())

    def context_tokens(self) -> int:
        """Tokens the model reads at most: the tokenizer's ``model_max_length`` or the
        model config's ``max_position_embeddings``, whichever is smaller and set."""
        limits = []
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < UNSET_MAX_LENGTH:
            limits.append(tokenizer_max)
        positions = getattr(self.decoder, "positions", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        return min(limits, default=DEFAULT_CONTEXT_TOKENS)

    def fit_to_context(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None
    ) -> tuple[list[dict[str, str]], list[str]]:
        """``messages`` cut to fit the context with room for the answer, and what was cut.

        The oldest history goes first (the system message and the current message stay);
        then the middle of the current message, whose start and end are kept around
        :data:`CUT_MARKER`. Without this, a 200,000-character message runs for minutes.
        """
        limit = self.context_tokens() - (max_new_tokens or self.max_new_tokens)
        n = len(self._prompt_ids(messages))
        if n <= limit:
            return messages, []
        out, warnings = list(messages), []
        first = 1 if out and out[0]["role"] == "system" else 0
        dropped = 0
        while n > limit and len(out) > first + 1:
            del out[first]
            dropped += 1
            n = len(self._prompt_ids(out))
        if dropped:
            warnings.append(
                f"the {dropped} oldest message(s) were left out of the local model's prompt "
                f"to fit its context of {limit} tokens"
            )
        if n <= limit:
            return out, warnings
        last = out[-1]
        ids = self.tokenizer.encode(last["content"], add_special_tokens=False)
        marker = len(self.tokenizer.encode(CUT_MARKER, add_special_tokens=False))
        keep = len(ids) - (n - limit) - marker
        text = last["content"]
        for _ in range(8):  # re-tokenising the cut text may merge a token or two differently
            keep = max(keep, 0)
            head, tail = (keep + 1) // 2, keep // 2
            text = (
                self.tokenizer.decode(ids[:head])
                + CUT_MARKER
                + (self.tokenizer.decode(ids[-tail:]) if tail else "")
            )
            out[-1] = {**last, "content": text}
            n = len(self._prompt_ids(out))
            if n <= limit or keep == 0:
                break
            keep -= n - limit
        after = len(self.tokenizer.encode(text, add_special_tokens=False))
        warnings.append(
            f"the message was cut from {len(ids)} to {after} tokens for the local model"
        )
        return out, warnings

    def _build_chat_model(self, max_new_tokens: int) -> BaseChatModel:
        from tmo_graph.models.local.chat import LocalChatModel

        return LocalChatModel(local=self, max_new_tokens=max_new_tokens)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        key = tuple((m["role"], m["content"]) for m in messages)
        last = self._last_prompt  # read once: another thread may replace it
        if last is not None and last[0] == key:
            return list(last[1])
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        rendered = tuple(int(i) for i in ids)
        self._last_prompt = (key, rendered)
        return list(rendered)

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> TokenScores:
        """Teacher-forced scores of ``answer`` as the assistant's reply to ``messages``.

        One forward pass over prompt + answer tokens; position ``i`` of the answer is scored
        with the distribution predicted from everything before it, as during generation.
        """
        import torch

        answer_ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if not answer_ids:
            return TokenScores([], [], 0)
        logp = self.decoder.score(self._prompt_ids(messages), answer_ids)
        token_lp = logp.gather(-1, torch.tensor(answer_ids).unsqueeze(-1)).squeeze(-1)
        entropy = torch.special.entr(logp.exp()).sum(-1)
        return TokenScores(token_lp.tolist(), entropy.tolist(), len(answer_ids))

    def generate_raw(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None
    ) -> tuple[str, int]:
        """Greedy decoding of the chat prompt with no scores, guards or LangChain around it:
        (answer text, new token count, the end token included)."""
        tokens = list(
            self.decoder.generate(
                self._prompt_ids(messages),
                max_new_tokens or self.max_new_tokens,
                end_token=self.tokenizer.eos_token_id,
            )
        )
        return self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        temperature: float = 0.8,
        seed: int = 0,
        max_new_tokens: int = 48,
    ) -> list[str]:
        """``n`` answers drawn at ``temperature`` (reproducible per ``seed``), one after
        another (the prompt is read once: the later ones find it in the cache)."""
        import torch

        if n < 1 or temperature <= 0:
            raise TmoGraphError(
                f"cannot sample {n} answers at temperature {temperature}",
                "use n >= 1 and a temperature > 0, e.g. 0.8",
            )
        draw = torch.Generator().manual_seed(seed)

        def choose(scores: torch.Tensor) -> int:
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            return int(torch.multinomial(probs, 1, generator=draw))

        prompt = self._prompt_ids(messages)
        answers = []
        for _ in range(n):
            tokens = self.decoder.generate(
                prompt, max_new_tokens, end_token=self.tokenizer.eos_token_id, choose=choose
            )
            answers.append(self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip())
        return answers


_models: dict[tuple[Path, LocalPrecision, int, Decoding], LocalModel] = {}
_models_lock = threading.Lock()


def get_local_model(
    source: str | Path = DEFAULT_SOURCE,
    max_new_tokens: int = 64,
    cache_dir: Path | None = None,
    precision: LocalPrecision = DEFAULT_PRECISION,
    decoding: Decoding = DEFAULT_DECODING,
) -> LocalModel:
    """The process-wide :class:`LocalModel` for ``source``: the weights load once per folder
    and precision; other answer lengths and decoding settings share them."""
    folder = resolve_local_model(str(source), cache_dir).resolve()
    with _models_lock:  # held while loading, so two threads never load the same weights
        variant = (folder, precision)
        key = (*variant, max_new_tokens, decoding)
        if key not in _models:
            same = next((m for k, m in _models.items() if k[:2] == variant), None)
            _models[key] = (
                same.with_max_new_tokens(max_new_tokens, decoding)
                if same
                else LocalModel.load(folder, max_new_tokens, precision, decoding)
            )
        return _models[key]


def configured_local_model(settings: Settings, source: str | Path | None = None) -> LocalModel:
    """The process-wide local model as ``settings.local`` configures it: its source (or
    ``source``), answer length, precision and decoding."""
    local = settings.local
    return get_local_model(
        local.source if source is None else source,
        local.max_new_tokens,
        settings.model_cache_dir(),
        precision=local.precision,
        decoding=local.decoding(),
    )
