"""What training reports: per-step numbers sent to Dagster's log as they happen, and the loss curve."""

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

    def __init__(self, log):
        self.log = log
        self.timings: dict[int, dict] = {}
        self.training_seconds = 0.0
        self.session_tokens = 0
        self._started = self._last_time = 0.0
        self._start_tokens = self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._last_time = time.perf_counter()
        self._start_tokens = self._last_tokens = state.num_input_tokens_seen
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

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
                f"grad_norm {logs.get('grad_norm', float('nan')):.3g}, {tokens} tokens seen, "
                f"{timing['tokens_per_second']:.0f} tokens/s"
            )
        if "eval_loss" in logs:
            self.log.info(f"{step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.training_seconds = time.perf_counter() - self._started
        self.session_tokens = state.num_input_tokens_seen - self._start_tokens

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.session_tokens / self.training_seconds, 1) if self.training_seconds else None


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
