"""The local model's tokenizer and chat template, read without transformers.

The converted folder holds ``tokenizer.json`` (Hugging Face ``tokenizers``), its special
tokens in ``tokenizer_config.json`` and the chat template (``chat_template.jinja``, or a
``chat_template`` entry of the config). transformers would read the same files, but importing
it costs about a second of a server's start; this reads them with ``tokenizers`` and renders
the template with Jinja2 the way transformers does (a sandbox, ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception``), then tokenizes the text with no special tokens added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tmo_graph.errors import TmoGraphError

UNSET_MAX_LENGTH = 10**9  # a model_max_length at or above this is transformers' "not set"


class ChatTokenizer:
    """The methods of a transformers tokenizer that the local model uses."""

    def __init__(self, folder: Path) -> None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        files = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise TmoGraphError(
                f"the local model folder {folder} has no {' or '.join(missing)}",
                "convert the model again (delete the folder; tmo-graph converts it on first use)",
            )
        self._tokenizer = Tokenizer.from_file(str(files[0]))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        config = json.loads(files[1].read_text())
        template_file = folder / "chat_template.jinja"
        template = (
            template_file.read_text() if template_file.is_file() else config.get("chat_template")
        )
        if not isinstance(template, str):
            raise TmoGraphError(
                f"the local model folder {folder} has no chat template",
                "use an instruction-tuned model whose folder has chat_template.jinja",
            )
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(template)
        self._special = {
            key: _token_text(config.get(key))
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self.eos_token = self._special["eos_token"]
        self.eos_token_id = self._id(self.eos_token)
        self.pad_token_id = self._id(self._special["pad_token"])
        limit = config.get("model_max_length")
        self.model_max_length = int(limit) if isinstance(limit, int | float) else UNSET_MAX_LENGTH

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
    ) -> Any:
        """The dialogue rendered by the model's chat template: its token ids (or the text)."""
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self._special
        )
        if not tokenize:
            return text
        ids = self.encode(text)
        return {"input_ids": ids} if return_dict else ids


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _raise(message: str) -> None:
    raise TmoGraphError(
        f"the local model's chat template refused the dialogue: {message}",
        "send the roles the model's template accepts (system first, then user and assistant)",
    )
