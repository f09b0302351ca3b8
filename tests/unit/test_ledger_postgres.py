"""PostgreSQL ledger pieces that need no server: URL redaction and error sentences."""

from __future__ import annotations

import psycopg
import pytest

from backfill.ledger.postgres import _connect_error, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://bob:s3cret@db:5432/x", "postgresql://bob:***@db:5432/x"),
        ("postgres://bob:p%40ss@db/x?sslmode=require", "postgres://bob:***@db/x?sslmode=require"),
        ("postgresql://db/x?user=bob&password=s3cret", "postgresql://db/x?user=bob&password=***"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x"),
    ],
)
def test_redact_url_masks_every_password(url: str, expected: str) -> None:
    """Passwords in the authority or in a query parameter never reach a message."""
    assert redact_url(url) == expected


def test_a_refused_password_is_named_without_the_password() -> None:
    """Authentication failure reads as one sentence naming host and user, no password."""
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "10.0.0.5", port 5433 failed: FATAL:  '
        'password authentication failed for user "bob"'
    )
    message = str(_connect_error("postgresql://bob:s3cret@10.0.0.5:5433/ledger", exc))
    assert message == (
        "PostgreSQL at 10.0.0.5:5433 refused the password for user 'bob'; "
        "fix the password in --state or BACKFILL_STATE"
    )
