"""The kitchen demo (examples/kitchen.jsonl) through `tmo-graph serve`, as an OpenAI client
sends it: each turn a chat request with the whole dialogue so far, the banana photo as a data
URL, the policy as the model name (``tmo-rules``). Then open the console to see each answer's
route, what left the device, its cost and the budget left.

The OpenAI API carries messages only, so the demo's camera views (first_person, overhead,
side) stay out: ``tmo-graph run examples/kitchen.jsonl`` is the way to route with views.

    tmo-graph keys add --user alice --file keys.yaml      # prints the key
    tmo-graph serve --keys keys.yaml &
    python examples/serve_demo.py --key sk-...            # then http://127.0.0.1:8000/console
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _content(turn: str | dict[str, Any]) -> str | list[dict[str, Any]]:
    """A JSONL turn as an OpenAI message's content (images as data URLs)."""
    if isinstance(turn, str):
        return turn
    parts: list[dict[str, Any]] = [{"type": "text", "text": turn["text"]}]
    for image in turn.get("images", []):
        data = base64.b64encode((HERE / image).read_bytes()).decode()
        parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--key", required=True, help="an API key `tmo-graph keys add` printed")
    parser.add_argument("--dialogues", type=Path, default=HERE / "kitchen.jsonl")
    args = parser.parse_args()
    from openai import APIError, OpenAI

    client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=600)
    for line in args.dialogues.read_text().splitlines():
        if not line.strip():
            continue
        dialogue = json.loads(line)
        model = f"tmo-{dialogue.get('context', {}).get('policy', 'cascade')}"
        messages: list[dict[str, Any]] = []
        for number, turn in enumerate(dialogue["turns"]):
            messages.append({"role": "user", "content": _content(turn)})
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                )
            except APIError as exc:
                sys.exit(f"turn {number}: the server refused it: {exc}")
            reply = raw.parse()
            answer = reply.choices[0].message.content or ""
            record = getattr(reply, "tmo", None) or (reply.model_extra or {}).get("tmo", {})
            messages.append({"role": "assistant", "content": answer})
            sent = ", ".join(record.get("views_sent", [])) or "text"
            where = "device" if record.get("route") == "local" else f"cloud ({sent})"
            print(
                f"turn {number}: {where}, {record.get('latency_s', 0):.1f} s, "
                f"${record.get('cost_usd', 0):.6f}: {answer[:70]!r}",
                flush=True,
            )
        print(
            f"thread {raw.headers.get('x-tmo-thread-id')}: open "
            f"{args.base_url.removesuffix('/v1')}/console"
        )


if __name__ == "__main__":
    main()
