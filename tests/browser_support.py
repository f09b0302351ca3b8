"""Debian's chromium for the tests that drive a real browser (the dashboard's, the
browser sources'): installed with apt-get when missing, once for all test workers."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (we run as root in CI)."""
    if CHROMIUM.exists():
        return CHROMIUM
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    reason = "apt-get is not available"
    # Test workers run in parallel: one installs while the others wait for it.
    # (Opened without truncating and never through a symbolic link: the temp directory
    # is shared, and a link planted there under this name would truncate its target.)
    path = Path(tempfile.gettempdir()) / f"backfill-tests-{os.getuid()}-chromium.lock"
    with open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if CHROMIUM.exists():
            return CHROMIUM
        if shutil.which("apt-get"):
            for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
                reason = f"{' '.join(command)} exited {done.returncode}: {done.stderr[-300:]}"
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot install chromium for the browser test: {reason}")
    pytest.skip(f"chromium is missing and could not be installed: {reason}")
