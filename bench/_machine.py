"""Machine facts printed under every benchmark table."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def load_span(before: float | None, after: float | None) -> str:
    """The load before and after a case, as the tables show it."""
    if before is None or after is None:
        return "n/a"
    return f"{before:.1f} → {after:.1f}"


def facts(*extra: str) -> list[str]:
    """CPU count and model, Python and OS, then ``extra`` on the Python line."""
    tail = "".join(f", {e}" for e in extra)
    return [
        f"- CPUs: {os.cpu_count()} ({cpu_name()})",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}{tail}",
    ]
