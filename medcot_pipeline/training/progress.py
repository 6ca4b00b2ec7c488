"""What training reports: a start summary and per-step numbers with elapsed and remaining time, sent to
Dagster's log as they happen, and the loss curve (a full-size PNG and a small inline chart)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


def peak_gpu_memory_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


class TrainingProgress(TrainerCallback):
    """Times this process's share of training and forwards one line per logging step to `log`.

    Losses, learning rates and token counts live in `trainer.state.log_history`, which a resumed run
    restores from its checkpoint; what only this process can know (speed, wall time, GPU memory) is
    kept here, per step.
    """

    def __init__(self, log) -> None:
        self.log = log
        self.timings: dict[int, dict] = {}
        self.training_seconds = 0.0
        self.session_tokens = 0
        self._started = self._last_time = 0.0
        self._start_tokens = self._last_tokens = 0
        self._start_step = 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._started = self._last_time = time.perf_counter()
        self._start_tokens = self._last_tokens = state.num_input_tokens_seen
        self._start_step = state.global_step  # above 0 when resuming from a checkpoint
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.log.info(start_summary(args, state, model, train_dataloader))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            interval = max(now - self._last_time, 1e-9)
            timing = {
                "elapsed_s": round(now - self._started, 3),
                "tokens_per_second": round((tokens - self._last_tokens) / interval, 1),
                "peak_gpu_memory_gib": peak_gpu_memory_gib(),
            }
            self.timings[state.global_step] = timing
            self._last_time, self._last_tokens = now, tokens
            self.log.info(
                f"{step}: loss {logs['loss']:.4f}, lr {logs.get('learning_rate', 0.0):.3g}, "
                f"grad_norm {logs.get('grad_norm', float('nan')):.3g}, {tokens:,} tokens seen, "
                f"{timing['tokens_per_second']:.0f} tokens/s, {self.eta(state.global_step, state.max_steps, now)}"
            )
        if "eval_loss" in logs:
            self.log.info(f"{step}: eval loss {logs['eval_loss']:.4f}")

    def eta(self, step: int, max_steps: int, now: float) -> str:
        """Elapsed time and, from this session's pace so far, the time left to max_steps."""
        elapsed = now - self._started
        done = step - self._start_step
        if done <= 0 or step >= max_steps:
            return f"elapsed {clock(elapsed)}"
        return f"elapsed {clock(elapsed)}, about {clock(elapsed / done * (max_steps - step))} left"

    def on_train_end(self, args, state, control, **kwargs):
        self.training_seconds = time.perf_counter() - self._started
        self.session_tokens = state.num_input_tokens_seen - self._start_tokens

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.session_tokens / self.training_seconds, 1) if self.training_seconds else None


def clock(seconds: float) -> str:
    """1:05:09, 4:07 or 0:09."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def start_summary(args, state, model, train_dataloader) -> str:
    """What is about to happen, in one line: rows, steps, global batch, epochs, trainable parameters."""
    parts = []
    rows = None
    if train_dataloader is not None:
        try:
            rows = len(train_dataloader.dataset)
        except (AttributeError, TypeError):
            rows = None
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    parts.append(f"{state.max_steps} steps of {global_batch} rows ({args.per_device_train_batch_size} per device x "
                 f"{args.gradient_accumulation_steps} accumulation x {max(args.world_size, 1)} processes)")
    if rows:
        parts.append(f"{rows:,} training rows, so {state.max_steps * global_batch / rows:.2g} epochs")
    if model is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        parts.append(f"{trainable:,} trainable parameters of {total:,} ({trainable / max(total, 1):.2%})")
    if state.global_step:
        parts.append(f"resuming at step {state.global_step}")
    return "training: " + "; ".join(parts)


def loss_rows(log_history: list[dict], timings: dict[int, dict] | None = None) -> list[dict]:
    """One row per training logging step, with this process's timings where it ran that step."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        step = entry["step"]
        rows.append(
            {
                "step": step,
                "loss": entry["loss"],
                "learning_rate": entry.get("learning_rate"),
                "grad_norm": entry.get("grad_norm"),
                "tokens_seen": entry.get("num_input_tokens_seen"),
                **(timings or {}).get(step, {}),
            }
        )
    return rows


def eval_rows(log_history: list[dict]) -> list[dict]:
    return [{"step": entry["step"], "eval_loss": entry["eval_loss"]} for entry in log_history if "eval_loss" in entry]


def loss_curve_png(history: list[dict], path: str | Path) -> Path:
    """Train and eval loss against the optimizer step, from `trainer.state.log_history`."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a Dagster worker
    import matplotlib.pyplot as plt

    train, evals = loss_rows(history), eval_rows(history)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=80)
    axes.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        axes.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o--", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def markdown_image(png: Path, title: str = "loss curve") -> str:
    """Markdown that shows the PNG inline in Dagster's UI, without a file server."""
    encoded = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f"![{title}](data:image/png;base64,{encoded})"


def loss_chart_markdown(history: list[dict], width: int = 300, height: int = 100, limit: int = 990) -> str:
    """The loss curve as a small SVG in markdown, under `limit` characters.

    Dagster's UI shows markdown metadata inline only under 1,000 characters (longer behind a click); a PNG
    never fits, this chart of train (blue line) and eval (orange dots) loss per step does.
    """
    train = [(r["step"], r["loss"]) for r in loss_rows(history)]
    evals = [(r["step"], r["eval_loss"]) for r in eval_rows(history)]
    if not train:
        return "_no training loss was logged_"
    points = 48
    while True:
        svg = _loss_svg(_thin(train, points), _thin(evals, max(points // 4, 2)), width, height)
        text = f"![loss per step: train (blue line), eval (orange dots)](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"
        if len(text) < limit or points <= 4:
            return text
        points = points * 3 // 4


def _thin(series: list[tuple], points: int) -> list[tuple]:
    """At most `points` evenly spaced entries, the last one always kept."""
    if len(series) <= points:
        return series
    stride = (len(series) - 1) / (points - 1)
    return [series[round(i * stride)] for i in range(points)]


def _loss_svg(train: list[tuple], evals: list[tuple], width: int, height: int) -> str:
    losses = [loss for _, loss in train + evals]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    last_step = max(step for step, _ in train + evals)
    left, top, bottom = 30, 6, height - 14

    def xy(step, loss, separator=","):
        x = left + (width - left - 4) * (step / last_step if last_step else 1)
        return f"{x:.0f}{separator}{top + (bottom - top) * (high - loss) / span:.0f}"

    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="10">',
        f'<polyline fill="none" stroke="#2563eb" points="{" ".join(xy(*p) for p in train)}"/>',
    ]
    if evals:
        # A dot per evaluation (zero-length strokes with round caps): one evaluation is still visible.
        dots = "".join(f"M{xy(step, loss, ' ')}h0" for step, loss in evals)
        lines.append(f'<path stroke="#ea580c" stroke-width="5" stroke-linecap="round" d="{dots}"/>')
        lines.append(f'<text x="{width - 2}" y="{top + 8}" text-anchor="end" fill="#ea580c">eval</text>')
    lines += [
        f'<text x="{width - 2}" y="{top + 20 if evals else top + 8}" text-anchor="end" fill="#2563eb">train</text>',
        f'<text x="0" y="{top + 8}">{high:.3g}</text><text x="0" y="{bottom}">{low:.3g}</text>',
        f'<text x="{width - 2}" y="{height - 2}" text-anchor="end">step {last_step}</text></svg>',
    ]
    return "".join(lines)
