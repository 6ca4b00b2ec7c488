"""Start the W&B run online when the W&B server answers, and offline, with a warning, when it does not.

With a key set, `wandb.init` retries an unreachable server for its whole `init_timeout` (90 s by default) and then
raises, which ended the training process before it trained a step. Tracking is not worth a training run: a
server that refuses the connection or cannot be resolved is known within seconds (one TCP connect), and one that
accepts but does not answer gets ONLINE_INIT_TIMEOUT; either way the run is logged offline under the W&B
directory, to be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

# Seconds for the TCP connect that tells whether the server is there at all, and for wandb.init once it is.
CONNECT_TIMEOUT = 5.0
ONLINE_INIT_TIMEOUT = 30.0
DEFAULT_BASE_URL = "https://api.wandb.ai"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def unreachable_reason(url: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why the W&B server at `url` cannot be reached (name not resolved, connection refused, timed out), or None."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return f"WANDB_BASE_URL {url!r} names no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port}: {err.strerror or type(err).__name__}"


def init_run(log, **init_kwargs):
    """`wandb.init(**init_kwargs)`; in online mode, offline instead (with a warning naming the server and why) when the
    server cannot be reached or the online start fails."""
    import wandb

    if init_kwargs.get("mode") != "online":
        return wandb.init(**init_kwargs)
    url = base_url()
    reason = unreachable_reason(url)
    if reason is None:
        try:
            return wandb.init(**init_kwargs, settings=wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT))
        except wandb.errors.Error as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    log.warning(
        f"W&B at {url} cannot be reached ({reason}): logging this run offline under {init_kwargs.get('dir')}; "
        "upload it later with `wandb sync`"
    )
    os.environ["WANDB_MODE"] = "offline"  # the Trainer's WandbCallback reads it too
    return wandb.init(**{**init_kwargs, "mode": "offline"})
