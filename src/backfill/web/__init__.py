"""The live dashboard (``backfill serve``): progress over Server-Sent Events, coverage,
failures, workers, runs, and ``/metrics`` for Prometheus. Needs ``backfill[web]``."""

from __future__ import annotations

import importlib.util

from backfill.errors import ConfigError

__all__ = ["require_web_extras"]


def require_web_extras() -> None:
    """Raise a one-line :class:`ConfigError` when the dashboard's dependencies are missing."""
    missing = [
        name
        for name in ("starlette", "sse_starlette", "uvicorn", "prometheus_client")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(
            f"the dashboard needs {', '.join(missing)}; install them with: "
            "pip install 'backfill[web]'"
        )
