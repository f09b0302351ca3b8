"""The Notifier against a loopback JSON webhook: one notice of a kind per interval (the
ones held back counted in the next), circuits and quotas from the event stream, masking."""

from __future__ import annotations

import pytest

from backfill import ConfigError
from backfill.events import ResourceChanged, Tick
from backfill.notify import Notice, Notifier
from backfill.secrets import Masker, notify_url_secrets
from notify_receivers import webhook


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flapping_kind_is_sent_once_per_interval_and_counted() -> None:
    """Five circuit notices within the interval make one message; the next after it says
    how many were held back; other kinds are not held by it."""
    clock = FakeClock()
    with webhook() as (hook, got):
        notifier = Notifier(
            [f"json://{hook}/"], job="j", masker=Masker(), min_interval=300, clock=clock
        )
        for _ in range(5):
            notifier.post(Notice("circuit_open", "open", "api is failing", failure=True))
            clock.now += 10
        notifier.post(Notice("run_finished", "done", "all done"))
        clock.now += 300
        notifier.post(Notice("circuit_open", "open", "api is failing again", failure=True))
        notifier.close()
        messages = got.wait(3)
    assert [m["title"] for m in messages] == ["open", "done", "open"]
    assert "4 more like this held back in the last 300s" in messages[2]["message"]
    assert [m["type"] for m in messages] == ["failure", "info", "failure"]
    assert notifier.sent == 3


def test_circuit_and_quota_events_become_notices_and_others_do_not() -> None:
    """The event-stream side: circuit_open and quota are sent, a pause or a tick is not."""
    with webhook() as (hook, got):
        notifier = Notifier([f"json://{hook}/"], job="racing", masker=Masker())
        notifier(ResourceChanged("api", "api failed 5 times in a row", 30.0, "circuit_open"))
        notifier(ResourceChanged("api", "10000/day used up until 00:00", 3600.0, "quota"))
        notifier(ResourceChanged("api", "Retry-After 5s", 5.0, "paused"))
        notifier(Tick(1.0))
        notifier.close()
        messages = got.wait(2)
    assert [m["title"] for m in messages] == [
        "backfill racing: circuit of api opened",
        "backfill racing: quota of api used up",
    ]
    assert messages[0]["message"] == "api failed 5 times in a row"


def test_what_is_sent_is_masked_by_the_job_masker() -> None:
    """A secret in a notice's text never leaves: the receiver gets ***."""
    with webhook() as (hook, got):
        url = f"json://{hook}/hook/Zq9Xw8Vu7Ts6"
        masker = Masker([*notify_url_secrets(url, "notify.0"), "s3cr3t-t0ken"])
        notifier = Notifier([url], job="j", masker=masker)
        notifier.post(Notice("run_failed", "failed", "refused for s3cr3t-t0ken at " + url))
        notifier.close()
        (message,) = got.wait(1)
    assert "s3cr3t-t0ken" not in message["message"]
    assert "Zq9Xw8Vu7Ts6" not in message["message"]
    assert message["message"].startswith("refused for *** at ***")


def test_an_unknown_url_is_a_config_error_without_its_secret() -> None:
    """A URL Apprise cannot read is refused in one sentence, masked."""
    masker = Masker(["sekr1t-value"])
    with pytest.raises(ConfigError, match="is not one Apprise knows") as caught:
        Notifier(["nosuch://sekr1t-value"], job="j", masker=masker)
    assert "sekr1t-value" not in str(caught.value)
