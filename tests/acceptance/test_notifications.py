"""Notifications of `backfill run` through Apprise: a local JSON webhook and a local SMTP
server get the run's end with its top failure categories and the gaps a keep-current run
left, with no secret in them; a notifier that hangs changes nothing of the exit code."""

from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import run_cli
from notify_receivers import smtp, webhook

TOKEN = "tok-9f8e7d6c5b4a3928"
HOOK_TOKEN = "hookA1B2C3D4E5F6G7H8"

JOB = """
from backfill import Job, PermanentError, RetryPolicy, daily

job = Job(
    "racing",
    partitions=daily("2024-03-25", "2024-03-31"),
    tz="Europe/London",
    notify=["mailto://{mail}?from=backfill@example.com&to=ops@example.com"],
)
job.resource("api", rate="100/s", headers={{"Authorization": "Bearer {token}"}})


@job.stage(resource="api", retry=RetryPolicy(attempts=1))
def fetch(ctx, partition):
    if partition.key in ("2024-03-27", "2024-03-29"):
        raise PermanentError(
            f"the source refused {{partition.key}} for Bearer {token}", category="refused"
        )
    return None
"""


def test_a_failed_run_reaches_a_webhook_and_a_mailbox_without_secrets(tmp_path: Path) -> None:
    """The webhook (--notify) and the mailbox (notify= on the job) get 'run failed' with
    the top category and 'gaps remain'; the token of the source and of the webhook URL
    are in neither, nor in what the command printed or the state."""
    with webhook() as (hook, posted), smtp() as (mail, mailed):
        (tmp_path / "job.py").write_text(textwrap.dedent(JOB.format(mail=mail, token=TOKEN)))
        url = f"json://{hook}/notify/{HOOK_TOKEN}"
        result = run_cli(
            "run",
            "job.py",
            "--through",
            "2024-03-31",
            "--progress",
            "none",
            "--notify",
            url,
            cwd=tmp_path,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        hooks = posted.wait(2)
        mails = mailed.wait(2)
    assert [m["title"] for m in hooks] == [
        "backfill racing: run failed",
        "backfill racing: gaps remain through 2024-03-31",
    ]
    assert hooks[0]["path"] == f"/notify/{HOOK_TOKEN}"
    body = hooks[0]["message"]
    assert "exit code 1" in body
    assert "selection: 5 done, 0 empty, 2 failed, 0 left" in body
    assert "fetch refused: 2 (e.g. 2024-03-27: the source refused 2024-03-27 for ***)" in body
    assert "fetch: 2 gap(s): 2024-03-27, 2024-03-29" in hooks[1]["message"]
    assert [m["subject"] for m in mails] == [m["title"] for m in hooks]
    assert mails[0]["to"] == "ops@example.com"
    assert "fetch refused: 2" in mails[0]["text"]
    sent = "\n".join([*posted.raw, *mailed.raw])
    assert TOKEN not in sent + result.stdout + result.stderr
    assert HOOK_TOKEN not in "\n".join(m["message"] for m in hooks) + "\n".join(mailed.raw)
    assert HOOK_TOKEN not in result.stdout + result.stderr
    for path in (tmp_path / ".backfill").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data, path
            assert HOOK_TOKEN.encode() not in data, path


OK_JOB = """
from backfill import Job, daily

job = Job("quiet", partitions=daily("2024-01-01", "2024-01-03"))


@job.stage
def fetch(ctx, partition):
    return None
"""


def test_a_notifier_that_hangs_does_not_change_the_exit_code(tmp_path: Path) -> None:
    """A webhook that never answers is given up after --notify-timeout: the run still
    exits 0, says so in one warning, and its summary line is printed."""
    (tmp_path / "job.py").write_text(textwrap.dedent(OK_JOB))
    with webhook(hang=True) as (hook, posted):
        result = run_cli(
            "run",
            "job.py",
            "--progress",
            "none",
            "--notify",
            f"json://{hook}/x?rto=60",
            "--notify-timeout",
            "1",
            cwd=tmp_path,
        )
        got = posted.wait(1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [m["title"] for m in got] == ["backfill quiet: run done"]
    assert "no answer within 1s" in result.stderr
    assert "3 done" in result.stdout


def test_a_notifier_that_fails_is_logged_and_the_run_exits_0(tmp_path: Path) -> None:
    """A webhook nobody listens on: one warning naming it (masked), exit 0."""
    (tmp_path / "job.py").write_text(textwrap.dedent(OK_JOB))
    with webhook() as (hook, _):
        pass  # the port is closed again
    result = run_cli(
        "run",
        "job.py",
        "--progress",
        "none",
        "--notify",
        f"json://{hook}/{HOOK_TOKEN}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "was not delivered" in result.stderr
    assert HOOK_TOKEN not in result.stdout + result.stderr


def test_a_notify_url_apprise_does_not_know_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    """A bad URL stops the command before it touches the state."""
    (tmp_path / "job.py").write_text(textwrap.dedent(OK_JOB))
    result = run_cli("run", "job.py", "--notify", "nosuch://x", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not one Apprise knows" in result.stderr
    assert not (tmp_path / ".backfill").exists()


def test_the_interval_holds_across_runs_of_a_flapping_job(tmp_path: Path) -> None:
    """Three failing runs in a row within the interval send one 'run failed'; with the
    interval at 0 the next run sends again, saying how many were held back."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB.format(mail="127.0.0.1:9", token=TOKEN)))
    # The job's own mailto target is unreachable here: only the webhook is counted.
    with webhook() as (hook, posted):
        args = ("run", "job.py", "--progress", "none", "--notify", f"json://{hook}/")
        for _ in range(3):
            run = run_cli(*args, "--notify-timeout", "5", cwd=tmp_path)
            assert run.returncode == 1, run.stdout + run.stderr
        assert [m["title"] for m in posted.wait(1)] == ["backfill racing: run failed"]
        last = run_cli(*args, "--notify-interval", "0", cwd=tmp_path)
        assert last.returncode == 1
        messages = posted.wait(2)
    assert len(messages) == 2
    assert "2 more like this held back" in messages[1]["message"]
