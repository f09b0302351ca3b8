"""The start of a run: nothing a run's first requests wait for is done on its event loop
when it could be done before (in a fresh interpreter, as ``backfill run`` starts one)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
    import asyncio, json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from backfill import Job
    from backfill.ledger import open_ledger
    from backfill.runner import Runner

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"data": [{"id": 1}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/ref"

    job = Job("start")
    job.resource("api", rate=50, timeout=5)

    @job.stage(reference=True, resource="api")
    async def ref(ctx, partition):
        return (await ctx.http.get_json(url))["data"]

    ledger = open_ledger(f"sqlite:///{sys.argv[1]}")
    runner = Runner(job, ledger)
    before = set(sys.modules)
    result = asyncio.run(runner.run())
    ledger.close()
    server.shutdown()
    imported = sorted(set(sys.modules) - before)
    print(json.dumps({"exit": int(result.exit_code), "requests": result.requests,
                      "imported": imported}))
"""


def test_a_run_s_first_http_request_imports_nothing_on_the_event_loop(tmp_path: Path) -> None:
    # httpcore imports its network backend (anyio's, ~15-25 ms holding the GIL) on a
    # client's first request: on a run's loop, the other requests of the run's start
    # waited behind it. The runner imports it before the loop starts.
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["exit"] == 0 and said["requests"] == 1, said
    network = [
        name for name in said["imported"] if name.split(".")[0] in {"anyio", "httpcore", "sniffio"}
    ]
    assert network == [], f"imported during the run: {network}"
