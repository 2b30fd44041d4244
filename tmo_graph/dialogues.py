"""Scripted dialogues from JSONL: one dialogue per line.

```json
{"id": "kitchen-1", "user_id": "alice",
 "views": {"overhead": {"image": "images/overhead.png", "description": "camera above the stove"}},
 "context": {"policy": "rules", "latency_budget_s": 90},
 "turns": ["Turn on the lights.", {"text": "What fruit is this?", "images": ["images/fruit.png"]}]}
```

Relative image paths are resolved against the JSONL file's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.images import is_url, to_data_url
from tmo_graph.state import ViewSpec

_CONTEXT_FIELDS = {f.name for f in fields(Context)}


@dataclass
class Turn:
    text: str
    images: list[str] = field(default_factory=list)  # data URLs

    def content(self) -> str | list[dict[str, Any]]:
        """The human message content: plain text, or text plus ``image_url`` parts."""
        if not self.images:
            return self.text
        return [
            {"type": "text", "text": self.text},
            *({"type": "image_url", "image_url": {"url": url}} for url in self.images),
        ]


@dataclass
class Dialogue:
    id: str
    turns: list[Turn]
    user_id: str = "default"
    views: dict[str, ViewSpec] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def _image_path(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TmoGraphError(f"{where}: an image must be a path or URL string", "fix that entry")
    return value if is_url(value) else str((base / value).resolve())


def parse_dialogue(raw: Any, base: Path, where: str) -> Dialogue:
    """One dialogue from its JSON object; ``where`` names it in error messages."""
    if not isinstance(raw, dict):
        raise TmoGraphError(f"{where}: a dialogue must be a JSON object", "see the README format")
    unknown = set(raw) - {"id", "user_id", "views", "context", "turns"}
    if unknown:
        raise TmoGraphError(
            f"{where}: unknown field(s) {sorted(unknown)}",
            "use id, user_id, views, context, turns",
        )
    turns_raw = raw.get("turns")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise TmoGraphError(f"{where}: `turns` must be a non-empty list", "add the user's messages")
    turns: list[Turn] = []
    for i, item in enumerate(turns_raw):
        spec = {"text": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not str(spec.get("text", "")).strip():
            raise TmoGraphError(
                f"{where}, turn {i}: the message is empty", 'give each turn text: "..."'
            )
        images = [_image_path(p, base, f"{where}, turn {i}") for p in spec.get("images", [])]
        turns.append(Turn(text=str(spec["text"]), images=[to_data_url(p) for p in images]))
    views: dict[str, ViewSpec] = {}
    for name, view in (raw.get("views") or {}).items():
        if not isinstance(view, dict):
            raise TmoGraphError(f"{where}: view {name!r} must be an object", "see the README")
        spec_view = ViewSpec(**{k: v for k, v in view.items() if k in ("description", "private")})
        if view.get("image"):
            spec_view["image"] = to_data_url(_image_path(view["image"], base, f"{where}, {name}"))
        views[name] = spec_view
    context = raw.get("context") or {}
    bad = set(context) - _CONTEXT_FIELDS
    if bad:
        raise TmoGraphError(
            f"{where}: unknown context field(s) {sorted(bad)}",
            f"use any of: {', '.join(sorted(_CONTEXT_FIELDS))}",
        )
    return Dialogue(
        id=str(raw.get("id", where)),
        turns=turns,
        user_id=str(raw.get("user_id", "default")),
        views=views,
        context=dict(context),
    )


def load_dialogues(path: str | Path) -> list[Dialogue]:
    path = Path(path)
    if not path.is_file():
        raise TmoGraphError(f"dialogue file {path} does not exist", "pass a JSONL file")
    dialogues = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TmoGraphError(
                f"{path}:{number} is not valid JSON ({exc.msg})", "one JSON object per line"
            ) from None
        dialogues.append(parse_dialogue(raw, path.parent, f"{path.name}:{number}"))
    if not dialogues:
        raise TmoGraphError(f"{path} holds no dialogue", "add one JSON object per line")
    return dialogues
