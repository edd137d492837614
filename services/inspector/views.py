"""What the inspector's templates draw, computed in Python: the funnel's bars, the loss curve's
points, token shading and tooltips, number formats. No web framework here either."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

FUNNEL_W, LABEL_W, BAR_W, ROW_H = 640, 190, 360, 26
PLOT_W, PLOT_H, MARGIN = 640, 220, 48
# Token shading: a background whose alpha grows as the teacher's (or the student's) certainty
# falls, so the positions worth a look stand out in a long answer.
SHADE_RGB = "214, 96, 20"
LEGEND_STEPS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1)
# curation_summary.json's counts shown on the overview (a key an older file lacks shows as –).
SUMMARY_COLUMNS = (("problems in the data", "problems"), ("processed", "processed"), ("already done", "already_done"),
                   ("kept", "kept"), ("rollout tokens", "rollout_tokens"), ("teacher tokens", "teacher_tokens"),
                   ("wall seconds", "wall_seconds"))


def funnel_bars(funnel: dict[str, Any], link: Callable[[str], str]) -> dict[str, Any]:
    """Bars of the funnel's stages, then of each skip reason, each linking to its problems."""
    rows = [(s["stage"], s["count"], s["outcome"], "stage") for s in funnel["stages"]]
    rows += [(s["reason"].replace("_", " "), s["count"], s["reason"], "skip") for s in funnel["skipped"]]
    top = max([n for _, n, _, _ in rows] + [1])
    bars = []
    for i, (label, count, outcome, kind) in enumerate(rows):
        # The skip reasons sit below the stages with a gap, so the two groups read apart.
        y = i * ROW_H + (ROW_H if kind == "skip" else 0)
        bars.append({"label": label, "count": count, "href": link(outcome), "kind": kind, "y": y,
                     "w": round(BAR_W * count / top, 1), "text_x": LABEL_W + round(BAR_W * count / top, 1) + 6})
    height = (len(rows) + (1 if funnel["skipped"] else 0)) * ROW_H
    return {"width": FUNNEL_W, "height": height, "label_w": LABEL_W, "bars": bars, "row_h": ROW_H}


def loss_plot(curve: list[list[float]]) -> dict[str, Any] | None:
    """The loss against the step as an SVG polyline; None without finite points."""
    points = [(float(s), float(v)) for s, v in curve if math.isfinite(float(v))]
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (PLOT_W - 2 * MARGIN) / (x1 - x0 or 1)
    sy = (PLOT_H - 2 * MARGIN) / (y1 - y0 or 1)
    coords = " ".join(f"{MARGIN + (x - x0) * sx:.1f},{PLOT_H - MARGIN - (y - y0) * sy:.1f}" for x, y in points)
    return {"width": PLOT_W, "height": PLOT_H, "margin": MARGIN, "points": coords, "xmin": x0, "xmax": x1,
            "ymin": y0, "ymax": y1, "n": len(points), "last": ys[-1]}


def alpha(certainty: float) -> float:
    """Background alpha for a token shown with `certainty` in [0, 1] (1: no shading)."""
    return round(0.85 * (1.0 - min(1.0, max(0.0, certainty))), 3)


def shade(certainty: float) -> str:
    return f"background: rgba({SHADE_RGB}, {alpha(certainty)})"


def legend() -> list[dict[str, Any]]:
    return [{"p": p, "style": shade(p)} for p in LEGEND_STEPS]


def shown(text: str) -> str:
    """A token's text in a tooltip: whitespace made visible, so a space or newline token shows."""
    return text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·") or "∅"


def token_title(token: dict[str, Any]) -> str:
    lines = [f"{shown(token['text'])}  top-1 p={token['p_top1']:.3f}  entropy={token['entropy']:.3f} nats"]
    lines += [f"{t['p']:.3f}  {shown(t['text'])}  #{t['id']}" for t in token["top"]]
    lines.append(f"{token['p_tail']:.3f}  (every other token)")
    return "\n".join(lines)


def kl_title(token: dict[str, Any]) -> str:
    return f"{shown(token['text'])}  #{token['id']}\nKL={token['kl']:.4f} nats  student p={token['p_student']:.3f}"


def kl_scale(tokens: list[dict[str, Any]]) -> float:
    """The KL that shades fully: the page's largest, at least 1 nat, so small values stay pale."""
    return max([t["kl"] for t in tokens] + [1.0])


def cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ci(interval: list[float] | None) -> str:
    return "–" if not interval else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def verdict_word(verdict: str | None) -> str:
    """✓/✗ and the word: right and wrong tell apart without colour."""
    if not verdict:
        return "– not verified"
    return ("✓ " if verdict == "correct" else "✗ ") + verdict.replace("_", " ")


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: JSON has no such numbers (a diverged loss has)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
