"""The on-device model: load its weights once, answer and score answers.

``LocalModel`` holds the tokenizer and model and gives a LangChain chat model, teacher-forced
token scores for any answer, and a plain ``generate`` baseline; ``get_local_model`` keeps one
per weights folder and precision in the process. Where the weights come from is
:mod:`tmo_graph.models.local.weights`; the logits processors that run while it decodes are
:mod:`tmo_graph.models.local.decoding`.

Precision (``local.precision``): the converted folder always holds float32 weights; a model
is loaded from it as float32, as bfloat16, or (the default) with its linear layers back on
the GGUF's 4-bit grid (:mod:`tmo_graph.models.local.quantize`), which decodes about 3x faster than
float32 on a 2-core CPU.
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
from tmo_graph.settings import Settings

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
    """Tokenizer and causal LM on the CPU in eval mode, loaded once, in one ``precision``."""

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        folder: Path,
        load_seconds: float,
        max_new_tokens: int = 64,
        precision: LocalPrecision = "float32",
        compiled: bool = False,
        decoding: Decoding = DEFAULT_DECODING,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.folder = folder
        self.load_seconds = load_seconds
        self.max_new_tokens = max_new_tokens
        self.precision = precision
        self.compiled = compiled
        self.decoding = decoding
        self._chat_models: dict[int, BaseChatModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        folder: Path,
        max_new_tokens: int = 64,
        precision: LocalPrecision = DEFAULT_PRECISION,
        compile: bool = False,
        decoding: Decoding = DEFAULT_DECODING,
    ) -> LocalModel:
        """Load ``folder`` (from :func:`resolve_local_model`) in ``precision`` and warm it up.

        ``compile``: decode with a static KV cache through ``torch.compile`` (the warm-up
        compiles: 20-50 s on 2 cores, for about 5 % more tokens/s).
        """
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
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise missing_dependency(exc) from None
        tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.eval()
        if precision == "int4":
            from tmo_graph.models.local.quantize import quantize_int4

            quantize_int4(model)
        gen = model.generation_config
        if gen.pad_token_id is None:  # silences a warning on every generate
            gen.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        if compile:
            from transformers import CompileConfig

            # dynamic: one compilation serves every prompt length (static shapes recompile
            # for each, 20 s apiece); transformers compiles on CPU only when asked to.
            config = CompileConfig(dynamic=True, mode="default")
            config._compile_all_devices = True  # type: ignore[assignment]
            gen.cache_implementation = "static"
            gen.compile_config = config
        self = cls(tokenizer, model, folder, 0.0, max_new_tokens, precision, compile, decoding)
        # The first answer of a cold process is several times slower (and the chat pipeline
        # is built on first use): pay it here, not inside the first turn's deadline.
        # In a context of its own: the warm-up is no part of the run that loads the model
        # (a chat UI streaming that run would show its "Hello!").
        contextvars.Context().run(
            self.answer, [{"role": "user", "content": "Hi"}], max_new_tokens=2
        )
        self.load_seconds = time.perf_counter() - start
        return self

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decoding step reads: every parameter and buffer once (tied
        ones once), except that of an input embedding not shared with the output layer only
        the token's row is read. The KV cache (small for short dialogues) is not counted."""
        seen: set[int] = set()
        total = 0
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.nbytes
        embed = self.model.get_input_embeddings().weight
        head = getattr(self.model.get_output_embeddings(), "weight", None)
        tied = head is not None and (
            head.untyped_storage().data_ptr() == embed.untyped_storage().data_ptr()
        )
        if not tied:
            total -= embed.nbytes - embed[0].nbytes
        return int(total)

    def with_max_new_tokens(
        self, max_new_tokens: int, decoding: Decoding | None = None
    ) -> LocalModel:
        """The same weights with another default answer length (and decoding settings):
        nothing is reloaded."""
        other = LocalModel(
            self.tokenizer,
            self.model,
            self.folder,
            self.load_seconds,
            max_new_tokens,
            self.precision,
            self.compiled,
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

        The scores are recorded during generation; if the pipeline path did not run the
        recorder (e.g. a streaming call), the answer is scored by a teacher-forced pass.
        ``tags`` mark the model call's run (streamed tokens carry them). ``max_time_s``
        stops generating once that many seconds have passed (prompt reading included).
        """
        import torch
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
        from transformers import LogitsProcessorList

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
        # The recorder runs last: it keeps the scores the token was chosen from.
        generation: dict[str, Any] = {
            "logits_processor": LogitsProcessorList([*processors, recorder])
        }
        if max_new_tokens is not None:  # one pipeline serves every length asked for
            generation["max_new_tokens"] = max_new_tokens
        if max_time_s is not None:
            generation["max_time"] = max_time_s  # the backstop: stops once it is passed
        # The pipeline decodes under no_grad; inference mode also skips autograd's per-op
        # bookkeeping, about 8 % of a step once the matrix products are int4.
        start = time.perf_counter()
        with torch.inference_mode():
            reply = self.chat_model().invoke(
                chat, config={"tags": tags or []}, pipeline_kwargs=generation
            )
        text = str(reply.content).strip()
        if not recorder.chosen:
            scores = self.score_answer(messages, text)
            scores.message_id = reply.id
            scores.warnings = warnings
            return text, scores
        n = len(recorder.chosen)
        if recorder.chosen[-1] == self.tokenizer.eos_token_id:  # the end token is no answer
            n -= 1
        times = recorder.times
        return text, TokenScores(
            recorder.logprobs[:n],
            recorder.entropies[:n],
            n,
            reply.id,
            warnings,
            prompt_tokens=recorder.prompt_tokens,
            prefill_s=times[0] - start,
            decode_tokens=len(times) - 1,
            decode_s=times[-1] - times[0],
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
        positions = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
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
        try:
            from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
            from transformers import pipeline
        except ImportError as exc:
            raise missing_dependency(exc) from None
        pipe = pipeline(
            "text-generation",
            model=self.model,
            tokenizer=self.tokenizer,
            return_full_text=False,  # else the answer starts with the whole prompt
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
        }
        llm = HuggingFacePipeline(pipeline=pipe, pipeline_kwargs=kwargs)
        # Passing the tokenizer stops ChatHuggingFace from fetching one by model id.
        return ChatHuggingFace(llm=llm, tokenizer=self.tokenizer)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> TokenScores:
        """Teacher-forced scores of ``answer`` as the assistant's reply to ``messages``.

        One forward pass over prompt + answer tokens; position ``i`` of the answer is scored
        with the distribution predicted from everything before it, as during generation.
        """
        import torch

        answer_ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if not answer_ids:
            return TokenScores([], [], 0)
        prompt_ids = self._prompt_ids(messages)
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.inference_mode():
            # Only the positions predicting the answer need the output layer (and the last).
            logits = self.model(input_ids=ids, logits_to_keep=len(answer_ids) + 1).logits[0]
        logp = torch.log_softmax(logits[:-1].float(), dim=-1)
        target = torch.tensor(answer_ids).unsqueeze(-1)
        token_lp = logp.gather(-1, target).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return TokenScores(token_lp.tolist(), entropy.tolist(), len(answer_ids))

    def generate_raw(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None
    ) -> tuple[str, int]:
        """Greedy ``model.generate`` on the chat prompt: (answer text, new token count)."""
        import torch

        prompt = torch.tensor([self._prompt_ids(messages)])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
            )
        new = out[0, prompt.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(new.shape[0])

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        temperature: float = 0.8,
        seed: int = 0,
        max_new_tokens: int = 48,
    ) -> list[str]:
        """``n`` answers drawn at ``temperature`` (reproducible per ``seed``), in one batch."""
        import torch

        if n < 1 or temperature <= 0:
            raise TmoGraphError(
                f"cannot sample {n} answers at temperature {temperature}",
                "use n >= 1 and a temperature > 0, e.g. 0.8",
            )
        prompt = torch.tensor([self._prompt_ids(messages)] * n)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
            )
        return [
            self.tokenizer.decode(row[prompt.shape[1] :], skip_special_tokens=True).strip()
            for row in out
        ]


_models: dict[tuple[Path, LocalPrecision, bool, int, Decoding], LocalModel] = {}
_models_lock = threading.Lock()


def get_local_model(
    source: str | Path = DEFAULT_SOURCE,
    max_new_tokens: int = 64,
    cache_dir: Path | None = None,
    precision: LocalPrecision = DEFAULT_PRECISION,
    compile: bool = False,
    decoding: Decoding = DEFAULT_DECODING,
) -> LocalModel:
    """The process-wide :class:`LocalModel` for ``source``: the weights load once per folder
    and precision (and compile setting); other answer lengths and decoding settings share
    them."""
    folder = resolve_local_model(str(source), cache_dir).resolve()
    with _models_lock:  # held while loading, so two threads never load the same weights
        variant = (folder, precision, compile)
        key = (*variant, max_new_tokens, decoding)
        if key not in _models:
            same = next((m for k, m in _models.items() if k[:3] == variant), None)
            _models[key] = (
                same.with_max_new_tokens(max_new_tokens, decoding)
                if same
                else LocalModel.load(folder, max_new_tokens, precision, compile, decoding)
            )
        return _models[key]


def configured_local_model(settings: Settings, source: str | Path | None = None) -> LocalModel:
    """The process-wide local model as ``settings.local`` configures it: its source (or
    ``source``), answer length, precision, compilation and decoding."""
    local = settings.local
    return get_local_model(
        local.source if source is None else source,
        local.max_new_tokens,
        settings.model_cache_dir(),
        precision=local.precision,
        compile=local.compile,
        decoding=local.decoding(),
    )
