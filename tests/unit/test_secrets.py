"""The one masker: declared secrets in every form, secret-looking text, sealed checkpoints."""

from __future__ import annotations

import base64
import io
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill import Context, Job, Partition, PermanentError, RetryPolicy, daily
from backfill.errors import ConfigError, FatalError
from backfill.events import EventBus, RunStopping
from backfill.job import load_job
from backfill.ledger import open_ledger
from backfill.logs import configure_logging
from backfill.runner import ExitCode, RunOptions
from backfill.secrets import MASK, Masker, Secret, is_secret_name, mask_url, url_secrets
from backfill.testing import run_job
from backfill.web.snapshot import Dashboard

KEY = "k3y/with+odd chars&=="
TOKEN = "tok-0123456789abcdef"
BASIC = base64.b64encode(b"bob:hunter2-pw").decode()


def masker() -> Masker:
    return Masker(
        [
            Secret("api.params.api_key", KEY),
            Secret("api.headers.Authorization", f"Bearer {TOKEN}"),
            Secret("api.headers.X-Tenant", "acme-tenant-7"),
            Secret("other.headers.Authorization", f"Basic {BASIC}"),
        ]
    )


# -- declared values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        KEY,
        quote(KEY, safe=""),
        quote_plus(KEY),
        json.dumps(KEY)[1:-1],
        base64.b64encode(KEY.encode()).decode(),
        base64.urlsafe_b64encode(KEY.encode()).decode(),
    ],
    ids=["raw", "url", "form", "json", "b64", "b64url"],
)
def test_a_declared_value_is_masked_in_every_encoding(form: str) -> None:
    """A declared value is masked as written, URL-encoded, form-encoded, JSON-escaped and
    in base64, wherever it sits in the text."""
    masked = masker().mask(f"the source said <{form}> again")
    assert form not in masked
    assert masked.startswith("the source said <") and masked.endswith("> again")
    assert MASK in masked


def test_a_header_token_is_masked_without_its_scheme_too() -> None:
    """`Bearer TOKEN` declared: the bare token echoed alone is masked as well."""
    assert masker().mask(f"invalid token {TOKEN}!") == "invalid token ***!"


def test_basic_credentials_are_masked_encoded_and_decoded() -> None:
    """`Basic base64(user:password)`: the blob, `user:password` and the password alone."""
    text = f"got {BASIC}, i.e. bob:hunter2-pw; password hunter2-pw"
    masked = masker().mask(text)
    assert "hunter2-pw" not in masked
    assert BASIC not in masked


def test_a_value_holding_another_is_masked_whole() -> None:
    """Overlapping declared values leave no tail of the longer one behind."""
    m = Masker(["abcd", "abcdefgh"])
    assert m.mask("x abcdefgh y") == "x *** y"


def test_short_values_are_not_masked_but_reported() -> None:
    """Values under 4 characters would mask every occurrence of "a": left alone, listed."""
    m = Masker([Secret("api.params.page_size", "50"), Secret("api.params.api_key", "")])
    assert m.mask("50 records on page 50") == "50 records on page 50"
    assert [s.where for s in m.too_short] == ["api.params.page_size"]


def test_a_secret_never_shows_in_its_own_repr() -> None:
    """Logging a Secret (or a list of them) does not print its value."""
    assert "hunter" not in repr(Secret("db.password", "hunter2-pw"))


# -- what looks secret -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://bob:s3cret@db:5432/x", "postgresql://bob:***@db:5432/x"),
        ("see postgres://bob:p@ss@db/x now", "see postgres://bob:***@db/x now"),
        ("https://u:pw-9@api.example/x?a=1", "https://u:***@api.example/x?a=1"),
        ("postgresql://db/x?user=bob&password=s3cret", "postgresql://db/x?user=bob&password=***"),
        ("GET /x?date=2013-01-01&api_key=S1&page=2", "GET /x?date=2013-01-01&api_key=***&page=2"),
        (
            "appid=abc access_key=def token=ghi sig=jkl",
            "appid=*** access_key=*** token=*** sig=***",
        ),
        ("client_secret='x y' pwd=\"z w\"", "client_secret='***' pwd=\"***\""),
        ('{"api_key": "abc", "page": 2}', '{"api_key": "***", "page": 2}'),
        ("{'Authorization': 'Token abc', 'pin': 1}", "{'Authorization': '***', 'pin': 1}"),
        ('{"password": 123456}', '{"password": ***}'),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("Authorization: abcdef", "Authorization: ***"),
        ("X-API-Key: abc", "X-API-Key: ***"),
        ("Cookie: a=1; b=2", "Cookie: ***"),
        ("refused Bearer eyJhbGciOiJIUzI1NiJ9.e30.x1", "refused Bearer ***"),
        ("next=%2Fx%3Fapi_key%3DS1%26page%3D2", "next=%2Fx%3Fapi_key%3D***%26page%3D2"),
        ("--api-key=abc --state=sqlite:///x.db", "--api-key=*** --state=sqlite:///x.db"),
    ],
)
def test_whatever_looks_secret_is_masked(text: str, expected: str) -> None:
    """URL passwords, Authorization-style headers, bearer tokens and secret-named pairs in
    query strings, free text, JSON and Python reprs are masked with nothing declared."""
    assert Masker().mask(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2013-01-01",
        "2013-01-01T12:30:05+00:00 took 1,234.5 ms",
        "partition 2013-01-01/tour=atp/region=gb",
        "key=2013-01-01/tour=atp partition_key=x monkey=1 keys=3",
        "cursor=eyJwYWdlIjoyfQ page=2 next=/results?page=3",
        "http://127.0.0.1:8800/x?date=2013-01-01&page=2#top",
        "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dx",
        "sqlite:///tmp/state.db",
        "mail bob@example.com",
        '{"next": "/p/2", "page": 2, "data": []}',
        "Bearer token expired; Basic usage; Authorization failed",
        "X-RateLimit-Remaining: 0; Retry-After: 120",
        "author=jane token_type=bearer auth_method=oauth",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """Dates, keys, cursors, numbers and URLs without secrets come back unchanged."""
    assert Masker().mask(text) == text


@pytest.mark.parametrize(
    "name",
    ["api_key", "API-KEY", "apikey", "X-API-Key", "access_token", "client_secret", "appid",
     "app_id", "password", "passwd", "sig", "signature", "auth", "aws_secret_access_key",
     "--api-key"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    """Names that hold secrets are recognised in any case and spelling."""
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key", "partition_key", "monkey", "tokens", "author", "page", "cursor", "date"]
)
def test_names_that_are_not_secret(name: str) -> None:
    """A bare `key` (partition keys) and ordinary names are not secrets."""
    assert not is_secret_name(name)


def test_mask_url_accepts_anything_printable_as_a_url() -> None:
    """`mask_url` masks a URL object's password and secret query values."""

    class Url:
        def __str__(self) -> str:
            return "https://u:pw@h/x?token=t&page=2"

    assert mask_url(Url()) == "https://u:***@h/x?token=***&page=2"


def test_url_secrets_names_the_password_as_written_and_decoded() -> None:
    """A URL's password is a secret in its written (percent-encoded) and decoded forms."""
    found = url_secrets("postgresql://bob:p%40ss-word@db/x", "state")
    assert [(s.where, s.value) for s in found] == [
        ("state.password", "p%40ss-word"),
        ("state.password.1", "p@ss-word"),
    ]
    assert url_secrets("postgresql://bob@db/x", "state") == ()
    assert url_secrets("sqlite:///x.db", "state") == ()


def test_mask_argv_hides_the_value_after_a_secret_option() -> None:
    """`--token VALUE` hides VALUE; URLs in other arguments lose their passwords."""
    argv = ["run", "job.py", "--token", "abc", "--state", "postgresql://u:pw@h/db", "-v"]
    assert Masker().mask_argv(argv) == [
        "run", "job.py", "--token", "***", "--state", "postgresql://u:***@h/db", "-v",
    ]  # fmt: skip


def test_mask_tree_masks_every_string_of_a_document() -> None:
    """Nested dicts and lists: every string masked, numbers and keys untouched."""
    doc = {"failures": [{"message": f"bad {TOKEN}", "attempts": 2}], "at": 1.5}
    assert masker().mask_tree(doc) == {
        "failures": [{"message": "bad ***", "attempts": 2}],
        "at": 1.5,
    }


# -- checkpoints -------------------------------------------------------------------------


def test_a_sealed_checkpoint_holds_placeholders_and_unseals_to_the_current_values() -> None:
    """Declared values become named placeholders; unsealing with rotated values gives the
    new ones back in the same encoding, and everything else intact."""
    checkpoint = (
        f"https://api.example/p/2?api_key={quote(KEY, safe='')}&page_token=abc123&t={TOKEN}"
    )
    sealed = masker().seal(checkpoint)
    assert KEY not in sealed and quote(KEY, safe="") not in sealed and TOKEN not in sealed
    assert "~backfill-secret:api.params.api_key:url~" in sealed
    assert "page_token=abc123" in sealed
    assert masker().unseal(sealed) == (checkpoint, ())
    rotated = Masker(
        [Secret("api.params.api_key", "new key"), Secret("api.headers.Authorization", "Bearer n3w")]
    )
    assert rotated.unseal(sealed) == (
        "https://api.example/p/2?api_key=new%20key&page_token=abc123&t=n3w",
        (),
    )


def test_a_placeholder_no_longer_declared_is_left_and_named() -> None:
    """A placeholder whose secret the job no longer declares stays as it is, and is named."""
    sealed = masker().seal(f"/p/2?api_key={KEY}")
    assert Masker().unseal(sealed) == (sealed, ("api.params.api_key",))


def test_a_source_cannot_forge_a_placeholder() -> None:
    """Placeholder-looking text in a checkpoint comes back verbatim: a next link can never
    make the engine put a secret into a URL of the source's choosing."""
    forged = "https://evil.example/?k=~backfill-secret:api.params.api_key~&e=~backfill-escaped~"
    sealed = masker().seal(forged)
    assert masker().unseal(sealed) == (forged, ())


@given(st.text())
def test_seal_then_unseal_gives_any_checkpoint_back(checkpoint: str) -> None:
    """Whatever text a source sends as a cursor survives sealing and unsealing intact."""
    m = masker()
    assert m.unseal(m.seal(checkpoint)) == (checkpoint, ())


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=4))
def test_any_declared_value_is_masked_in_any_text(secret: str) -> None:
    """Whatever a declared value (of 4 characters or more), it never survives masking."""
    m = Masker([secret])
    assert secret not in m.mask(f"before {secret} after {quote(secret, safe='')}")


# -- job declarations --------------------------------------------------------------------

JOB_FILE = """
from backfill import Job, daily

job = Job("j", partitions=daily("2013-01-01", "2013-01-02"))
job.resource(
    "api",
    rate="5/s",
    headers={"Authorization": "tok-auth-4711", "X-Tenant": "tenant-secret-1"},
    params={"api_key": "param-secret-2", "page_size": "50"},
    secrets=("extra-secret-3",),
)
"""


def test_every_header_and_param_value_is_a_declared_secret(tmp_path: Path) -> None:
    """Every header and param value, whatever its name, is a secret named by where it is
    declared; so is a password in a table's URL."""
    (tmp_path / "job.py").write_text(
        JOB_FILE
        + "rows = table('postgresql://me:sink-pass-5@db/x', 'rows', mode='append')\n"
        + "@job.stage(sink=rows)\ndef s(ctx, p):\n    return []\n"
    )
    text = (tmp_path / "job.py").read_text().replace("import Job,", "import Job, table,")
    (tmp_path / "job.py").write_text(text)
    job = load_job(str(tmp_path / "job.py"))
    assert {(s.where, s.value) for s in job.declared_secrets} == {
        ("api.headers.Authorization", "tok-auth-4711"),
        ("api.headers.X-Tenant", "tenant-secret-1"),
        ("api.params.api_key", "param-secret-2"),
        ("api.params.page_size", "50"),
        ("api.secrets.0", "extra-secret-3"),
        ("sink.rows.password", "sink-pass-5"),
    }


def test_a_job_file_failing_at_import_has_its_secrets_masked(tmp_path: Path) -> None:
    """An exception at import quoting a declared value, a URL password or a token pair is
    reported in one sentence with them masked (and still names the line)."""
    (tmp_path / "job.py").write_text(
        JOB_FILE + "raise RuntimeError('no tenant-secret-1 at https://u:db-pass-6@h/ token=tk9')\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_job(str(tmp_path / "job.py"))
    message = str(caught.value)
    for secret in ("tenant-secret-1", "db-pass-6", "tk9"):
        assert secret not in message
    assert (
        "failed to load at line 12: RuntimeError: no *** at https://u:***@h/ token=***" in message
    )


def test_a_value_too_short_to_mask_is_warned_about_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A declared value under 4 characters gets one warning naming where it is declared
    (never its value), and is not masked."""
    (tmp_path / "job.py").write_text(JOB_FILE + "@job.stage\ndef s(ctx, p):\n    return []\n")
    with caplog.at_level(logging.WARNING, logger="backfill.job"):
        job = load_job(str(tmp_path / "job.py"))
    warnings = [r.getMessage() for r in caplog.records if r.name == "backfill.job"]
    assert len(warnings) == 1
    assert warnings[0].startswith("api.params.page_size is declared secret but has only 2 ")
    assert job.masker().mask("page_size=50 of 50") == "page_size=50 of 50"


# -- the runner, logs and dashboard ------------------------------------------------------


def checkpoint_job(key: str, seen: list[str | None]) -> Job:
    """A job whose one partition saves a next link echoing the key, then fails; resumed,
    it records the checkpoint it was given."""
    job = Job("cp", partitions=daily("2013-01-01", "2013-01-01"))
    job.resource("api", rate="100/s", params={"api_key": key})

    @job.stage(resource="api", retry=RetryPolicy(attempts=1))
    async def pages(ctx: Context, partition: Partition) -> list[dict[str, int]]:
        seen.append(ctx.checkpoint)
        if ctx.checkpoint is None:
            await ctx.save_checkpoint(f"https://api.example/p/2?api_key={key}&page_token=abc9")
            raise PermanentError(f"page 2 of https://api.example/p/1?api_key={key} is missing")
        return [{"n": 1}]

    return job


def test_a_checkpoint_is_stored_sealed_and_resumed_with_the_rotated_key(tmp_path: Path) -> None:
    """The ledger holds a placeholder where the echoed key was (and the cursor intact);
    the resumed partition gets the checkpoint back with the key declared now."""
    state = tmp_path / "state.db"
    seen: list[str | None] = []
    ledger = open_ledger(f"sqlite:///{state}")
    assert run_job(checkpoint_job("old-key-4711", seen), ledger).exit_code == ExitCode.FAILED
    with sqlite3.connect(state) as conn:
        [(checkpoint, message)] = conn.execute(
            "SELECT checkpoint, error_message FROM backfill_partitions"
        ).fetchall()
    assert checkpoint == (
        "https://api.example/p/2?api_key=~backfill-secret:api.params.api_key~&page_token=abc9"
    )
    assert "old-key-4711" not in message
    ledger.requeue("cp", ["pages"])
    assert run_job(checkpoint_job("new-key-0815", seen), ledger).exit_code == ExitCode.OK
    assert seen == [None, "https://api.example/p/2?api_key=new-key-0815&page_token=abc9"]
    ledger.close()


def test_run_options_end_message_and_stop_reason_are_masked() -> None:
    """The argv stored with the run loses URL passwords and `--token` values; a fatal
    message quoting a secret is masked in the result, the run record and the events."""
    job = Job("fatal", partitions=daily("2013-01-01", "2013-01-01"))
    job.resource("api", rate="100/s", headers={"X-Tenant": "tenant-secret-1"})

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> None:
        raise FatalError("the source revoked tenant-secret-1 (token=tk-9)")

    argv = ("run", "job.py", "--state", "postgresql://u:pw-secret-2@h/db", "--token", "tk-3")
    reasons: list[str] = []
    bus = EventBus()
    bus.subscribe(lambda e: reasons.append(e.reason) if isinstance(e, RunStopping) else None)
    ledger = open_ledger(":memory:")
    result = run_job(job, ledger, RunOptions(argv=argv), bus=bus)
    assert result.exit_code == ExitCode.USAGE
    [record] = ledger.runs("fatal")
    stored = json.dumps([record.options, record.counts, result.message, reasons])
    for secret in ("tenant-secret-1", "tk-9", "pw-secret-2", "tk-3"):
        assert secret not in stored
    assert record.options["argv"][3:] == ["postgresql://u:***@h/db", "--token", "***"]
    assert result.message == "the source revoked *** (token=***)"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger and the backfill logger after a test configures them."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("backfill").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("backfill").setLevel(saved[2])


def test_log_lines_are_masked_by_a_jobs_masker(root_logging: None) -> None:
    """Given the job's masker, a log line quoting a declared value, a bare token or a
    database URL with a password shows none of them, in JSON too."""
    stream = io.StringIO()
    masker = Masker([Secret("api.headers.Authorization", "Bearer tok-5551234")])
    configure_logging("json", level=logging.INFO, stream=stream, secrets=masker)
    extra = {"hdr": "Bearer tok-5551234", "raw": (b"HTTP/1.1", 401, b"bad tok-5551234")}
    logging.getLogger("backfill.test").warning(
        "refused tok-5551234 at %s", "postgresql://u:pw-7@db/x", extra=extra
    )
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["event"] == "refused *** at postgresql://u:***@db/x"
    assert line["hdr"] == "***"
    assert line["raw"] == ["b'HTTP/1.1'", 401, "b'bad ***'"]


def test_the_dashboard_masks_messages_recorded_before_a_secret_was_declared() -> None:
    """A failure message stored in clear (an older ledger, a secret declared since) is
    masked in the dashboard's snapshot."""
    plain = Job("web", partitions=daily("2013-01-01", "2013-01-01"))

    @plain.stage(retry=RetryPolicy(attempts=1))
    async def fetch(ctx: Context, partition: Partition) -> None:
        raise PermanentError("the source echoed tenant-secret-1")

    ledger = open_ledger(":memory:")
    run_job(plain, ledger)
    declared = Job("web", partitions=daily("2013-01-01", "2013-01-01"))
    declared.resource("api", rate="1/s", headers={"X-Tenant": "tenant-secret-1"})
    declared.stage(name="fetch", resource="api")(fetch)
    snapshot = Dashboard(declared, ledger).snapshot()
    assert snapshot["failures"][0]["message"] == "the source echoed ***"


# -- layering ----------------------------------------------------------------------------


def _loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_importing_the_job_model_loads_no_http_client() -> None:
    """The job model (which masks job-load errors) does not import httpx."""
    assert "httpx" not in _loaded_by("backfill.job")


def test_the_secrets_module_is_core() -> None:
    """The secrets module imports neither HTTP nor database code."""
    loaded = _loaded_by("backfill.secrets")
    assert not loaded & {"httpx", "psycopg", "sqlite3", "backfill.ledger", "backfill.sources"}
