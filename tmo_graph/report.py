"""Turn records as the terminal table `tmo-graph run` and `chat` print."""

from __future__ import annotations

import textwrap

from tmo_graph.state import TurnRecord

HEADER = (
    f"{'turn':>4}  {'task':<17} {'route':<30} {'conf':>5} {'esc':>3} "
    f"{'latency s':>9} {'cost USD':>10} {'left s':>7} {'left USD':>9}"
)


def route_label(record: TurnRecord) -> str:
    if record["route"] == "local":
        return "local" + (" (cloud failed)" if record["fallback"] else "")
    views = record["views_sent"]
    return "cloud+" + ",".join(views) if views else "cloud text"


def format_turn(record: TurnRecord, answer_width: int = 100) -> str:
    conf = "-" if record["confidence"] is None else f"{record['confidence']:.2f}"
    left = record["budget_left"]
    line = (
        f"{record['turn']:>4}  {record['task']:<17} {route_label(record):<30} {conf:>5} "
        f"{'yes' if record['escalated'] else 'no':>3} {record['latency_s']:>9.2f} "
        f"{record['cost_usd']:>10.6f} {left['latency_s']:>7.1f} {left['cost_usd']:>9.5f}"
    )
    answer = " ".join(record["answer"].split()) or "(empty)"
    wrapped = textwrap.shorten(answer, width=answer_width, placeholder=" ...")
    extra = f"\n      fallback: {record['fallback']}" if record["fallback"] else ""
    if record.get("local_answer") is not None:
        draft = " ".join(str(record["local_answer"]).split()) or "(empty)"
        short = textwrap.shorten(draft, width=answer_width, placeholder=" ...")
        extra += f"\n      escalated local draft: {short}"
    return f"{line}\n      > {wrapped}{extra}"
