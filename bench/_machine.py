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


def facts(*extra: str) -> list[str]:
    """CPU count and model, Python and OS, then ``extra`` on the Python line."""
    tail = "".join(f", {e}" for e in extra)
    return [
        f"- CPUs: {os.cpu_count()} ({cpu_name()})",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}{tail}",
    ]
