"""What training reports: a start summary and per-step numbers with elapsed and remaining time, sent to
Dagster's log as they happen, and nothing else: the trainer's own printouts would repeat each step as a raw dict.
(The loss curve is drawn in presentation/charts.py, from the training summary.)"""

from __future__ import annotations

import sys
import time

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from medcot_pipeline.presentation.text import clock


def quiet_progress_bars() -> None:
    """No tqdm bars (loading weights, tokenizing the dataset) where stderr is a log file rather than a terminal."""
    if not sys.stderr.isatty():
        import datasets
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def leave_reporting_to(trainer) -> None:
    """TrainingProgress reports each step; the trainer's own callbacks would print it again as a raw dict."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


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
    parts.append(
        f"{state.max_steps} steps of {global_batch} rows ({args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {max(args.world_size, 1)} processes)"
    )
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
