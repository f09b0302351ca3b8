"""The README's example job is real code that loads."""

from __future__ import annotations

import re
from pathlib import Path

from backfill import load_job

README = Path(__file__).parents[2] / "README.md"


def test_readme_example_job_loads(tmp_path: Path) -> None:
    """The job shown in the README is a valid job file with the stage and partitions it claims."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README shows no Python example"
    job_file = tmp_path / "results.py"
    job_file.write_text(blocks[0])
    job = load_job(str(job_file))
    assert job.name == "results"
    stage = job.stages["matches"]
    assert stage.concurrency == 8
    assert stage.retry.attempts == 6
    assert len(stage.partitions) == 2 * 3653
    assert stage.partitions.get("2020-02-29/tour=wta") is not None


def test_readme_commands_match_ci() -> None:
    """.ci/run runs exactly the README's test command."""
    text = README.read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' "
        "&& .venv/bin/python -m pytest"
    )
    assert command in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci
