"""The console's charts as inline SVG drawn here (no script, no library, works offline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from tmo_graph.server.console.dialogue import CLOUD_TEXT, CLOUD_VIEWS, DEVICE

COLOURS = {DEVICE: "#2e7d32", CLOUD_TEXT: "#1565c0", CLOUD_VIEWS: "#8e24aa"}
W, H, PAD = 420, 170, 36


def _svg(body: str, title: str, width: int = W, height: int = H) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def line_chart(points: Sequence[tuple[int, float]], title: str, unit: str, colour: str) -> str:
    """``points`` (turn, value left) as a line from the top value to 0."""
    if not points:
        return _svg(f'<text x="{PAD}" y="{H / 2}">no turns yet</text>', title)
    top = max(max(v for _, v in points), 1e-12)
    n = max(len(points) - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return PAD + i * (W - 2 * PAD) / n, H - PAD - max(v, 0.0) / top * (H - 2 * PAD)

    coords = [xy(i, v) for i, (_, v) in enumerate(points)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>turn {t}: '
        f"{v:.6g} {escape(unit)}</title></circle>"
        for (x, y), (t, v) in zip(coords, points, strict=True)
    )
    labels = "".join(
        f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle">{t}</text>'
        for (x, _), (t, _) in zip(coords, points, strict=True)
    )
    body = (
        f'<text x="{PAD}" y="16" class="title">{escape(title)}</text>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" class="axis"/>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{top:.3g}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end">0</text>'
        f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
        f"{dots}{labels}"
        f'<text x="{W / 2}" y="{H - 4}" text-anchor="middle">turn ({escape(unit)} left)</text>'
    )
    return _svg(body, title)


def stacked_bars(by_day: Mapping[str, Mapping[str, int]], title: str) -> str:
    """Turns per day, stacked by route."""
    if not by_day:
        return _svg(f'<text x="{PAD}" y="{H / 2}">no turns yet</text>', title)
    top = max(sum(mix.values()) for mix in by_day.values()) or 1
    slot = (W - 2 * PAD - 110) / len(by_day)  # the legend on the right
    bars = []
    for i, (day, mix) in enumerate(by_day.items()):
        y: float = H - PAD
        x = PAD + i * slot + slot * 0.15
        for route, colour in COLOURS.items():
            n = mix.get(route, 0)
            h = n / top * (H - 2 * PAD)
            if n:
                bars.append(
                    f'<rect x="{x:.1f}" y="{y - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{escape(day)} {route}: {n}</title></rect>'
                )
            y -= h
        bars.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{H - PAD + 14}" text-anchor="middle">'
            f"{escape(day[5:])}</text>"
        )
    legend = "".join(
        f'<rect x="{W - 130}" y="{8 + 14 * i}" width="10" height="10" fill="{c}"/>'
        f'<text x="{W - 116}" y="{17 + 14 * i}">{r}</text>'
        for i, (r, c) in enumerate(COLOURS.items())
    )
    body = (
        f'<text x="{PAD}" y="16" class="title">{escape(title)}</text>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{top}</text>' + "".join(bars) + legend
    )
    return _svg(body, title)


def spend_bars(rows: Sequence[tuple[str, float, float | None]], title: str) -> str:
    """Horizontal bars: each (label, USD spent, daily cap or None), with the cap marked."""
    if not rows:
        return _svg(f'<text x="{PAD}" y="40">no cloud spend yet</text>', title, height=60)
    height = 30 + 22 * len(rows)
    left, right = 150, W + 60
    top = max(max(u, c or 0.0) for _, u, c in rows) or 1e-12
    parts = [f'<text x="4" y="16" class="title">{escape(title)}</text>']
    for i, (label, usd, cap) in enumerate(rows):
        y = 26 + 22 * i
        w = usd / top * (right - left - 70)
        over = cap is not None and usd > cap
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="15" '
            f'fill="{"#c62828" if over else "#1565c0"}"/>'
        )
        cap_text = "no cap" if cap is None else f"cap {cap:.4g}"
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">${usd:.6f} ({cap_text})</text>')
        if cap is not None:
            cx = left + cap / top * (right - left - 70)
            parts.append(
                f'<line x1="{cx:.1f}" y1="{y - 2}" x2="{cx:.1f}" y2="{y + 17}" class="cap"/>'
            )
    return _svg("".join(parts), title, width=right + 150, height=height)
