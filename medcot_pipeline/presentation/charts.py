"""The loss curve: train loss per step, each evaluation as a labelled point (its eval loss and, where answers were
graded, their format compliance), the kept step marked.

Two renderings of the same series: an SVG small enough to show inline on an asset page (Dagster shows markdown
inline only under 1,000 characters, and renders no raw HTML, so the chart is a data-URI image), and a PNG
written beside the adapter for anyone who opens the files.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from medcot_pipeline.presentation.text import percent_text

INLINE_LIMIT = 1000  # Dagster's UI shows markdown inline below this many characters
# Wide enough to read, narrow enough for the value column of an asset page's metadata table (the page's 896 px
# pane less the key and timestamp columns): a wider image pushes the table past the pane's edge.
CHART_WIDTH, CHART_HEIGHT = 400, 170
ALT_TEXT = "loss per step"


@dataclass(frozen=True)
class LossSeries:
    """What the chart draws, from a training summary or a trainer's log history."""

    train: list[tuple[int, float]]  # (step, train loss)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)
    compliance: dict[int, float] = field(default_factory=dict)  # step -> format compliance of the graded answers
    kept_step: int | None = None


def _thin(series: list[tuple], points: int) -> list[tuple]:
    """At most `points` evenly spaced entries, the first and the last always kept."""
    if len(series) <= points:
        return series
    stride = (len(series) - 1) / (points - 1)
    return [series[round(i * stride)] for i in range(points)]


def _eval_label(step: int, loss: float, series: LossSeries, svg: bool = False, short: bool = False) -> str:
    """`12: 75% well-formed, kept` in the SVG (its y axis gives the loss; `short`: `12: 75%, kept`, the legend
    saying what the share is), or with the eval loss too in the PNG."""
    parts = [] if svg else [f"eval loss {loss:.3f}"]
    if step in series.compliance:
        share = series.compliance[step]
        parts.append((f"{share:.0%}" if short else f"{share:.0%} well-formed") if svg else f"{percent_text(share)} well-formed")
    if step == series.kept_step:
        parts.append("kept")
    return f"{step}: " + ", ".join(parts) if parts else str(step)


def loss_svg(series: LossSeries, width: int = CHART_WIDTH, height: int = CHART_HEIGHT, points: int = 60, short: bool = False) -> str:
    """The chart as SVG text: the loss range and the step range on the axes, each evaluation labelled.

    Written tersely (named colours, shared attributes on groups): every character counts against the inline limit.
    """
    train, evals = _thin(series.train, points), series.evals
    everything = train + evals
    losses = [loss for _, loss in everything]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    first = min(step for step, _ in everything)
    last = max(step for step, _ in everything)
    left, right, top, bottom = 40, width - 8, 18, height - 20

    def x(step) -> int:
        return round(left + (right - left) * ((step - first) / (last - first) if last > first else 1))

    def y(loss) -> int:
        return round(top + (bottom - top) * (high - loss) / span)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='12'>",
        f"<path stroke='gray' fill='none' d='M{left},{top}V{bottom}H{right}'/>",
        f"<text y='{top + 4}'>{high:.3f}</text><text y='{bottom}'>{low:.3f}</text>",
        f"<text x='{left}' y='{height - 4}'>step {first}</text>",
        f"<g text-anchor='end'><text x='{right}' y='{height - 4}'>step {last}</text>",
        f"<text x='{right}' y='12' fill='blue'>train loss"
        + (f"<tspan fill='orangered'>, eval loss{' (% well-formed)' if short and series.compliance else ''}</tspan>" if evals else "")
        + "</text></g>",
    ]
    if train:
        # Relative moves ("l5,-3") are shorter than absolute points; a lone step is a dot (a zero-length round stroke).
        coords = [(x(s), y(v)) for s, v in train]
        moves = "".join(f"l{bx - ax},{by - ay}" for (ax, ay), (bx, by) in zip(coords, coords[1:], strict=False)) or "h0"
        cap = "" if len(coords) > 1 else " stroke-linecap='round'"
        parts.append(f"<path fill='none' stroke='blue' stroke-width='2'{cap} d='M{coords[0][0]},{coords[0][1]}{moves}'/>")
    # With many evaluations only the kept and the last are labelled, so labels never pile up.
    labelled = {step for step, _ in evals} if len(evals) <= 5 else {evals[-1][0], series.kept_step}
    dots, labels = [], []
    for step, loss in evals:
        cx, cy = x(step), y(loss)
        dots.append(f"M{cx},{cy}h0")
        if step in labelled:
            # Left of points in the right half, right of the others; below a point at the very top.
            ty = cy - 9 if cy > top + 14 else cy + 18
            anchor = " text-anchor='end'" if cx > (left + right) / 2 else ""
            labels.append(
                f"<text x='{cx - 7 if anchor else cx + 7}' y='{ty}'{anchor}>{_eval_label(step, loss, series, svg=True, short=short)}</text>"
            )
    if evals:
        parts.append(
            f"<g fill='orangered'><path stroke='orangered' stroke-width='10' stroke-linecap='round' d='{''.join(dots)}'/>"
            f"{''.join(labels)}</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _image_destination(svg: str) -> str:
    """The SVG as a markdown image destination, as short as it can be written.

    In angle brackets a destination may hold spaces, so only what would end it or the URI is encoded (%, <, >, #):
    far shorter than base64 or full percent-encoding. The renderer encodes the rest when it writes the src.
    """
    text = svg.replace("%", "%25").replace("<", "%3C").replace(">", "%3E").replace("#", "%23")
    return f"<data:image/svg+xml,{text}>"


def loss_chart_markdown(series: LossSeries, width: int = CHART_WIDTH, height: int = CHART_HEIGHT, limit: int = INLINE_LIMIT) -> str:
    """The chart as a markdown image under `limit` characters: the train curve is thinned, then the labels
    shortened, until it fits."""
    if not series.train and not series.evals:
        return "_no loss was logged_"
    # Whole labels while the curve keeps 24 points or more; then short labels (the legend says what the share is).
    attempts = [(False, p) for p in (60, 48, 36, 30, 24)] + [(True, p) for p in (48, 36, 30, 24, 18, 12, 8)]
    for short, points in attempts:
        text = f"![{ALT_TEXT}]({_image_destination(loss_svg(series, width, height, points, short))})"
        if len(text) < limit:
            return text
    return text


def loss_curve_png(series: LossSeries, path: str | Path) -> Path:
    """The same chart as an 800 x 400 PNG (matplotlib, imported here only: the Dagster process never needs it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Dagster worker
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4), dpi=100)
    if series.train:
        axes.plot([s for s, _ in series.train], [v for _, v in series.train], color="#2563eb", label="train loss")
    if series.evals:
        axes.plot([s for s, _ in series.evals], [v for _, v in series.evals], "o", color="#ea580c", label="eval loss")
        for step, loss in series.evals:
            axes.annotate(
                _eval_label(step, loss, series),
                (step, loss),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color="#c2410c",
            )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def markdown_image(png: Path, title: str = "loss curve") -> str:
    """Markdown that shows a PNG on the page, without a file server (behind "[Show Markdown]": it is long)."""
    encoded = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f"![{title}](data:image/png;base64,{encoded})"
