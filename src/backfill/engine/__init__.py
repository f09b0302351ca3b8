"""The engine: runs a job's stages against a ledger, one small collaborator per concern.

============  ===============================================================
module        what it holds
============  ===============================================================
entry         running a job from a program or the CLI: display, log, signals
run           :class:`Runner`: assembles the run, its lifecycle and its end
result        options, result, exit code and the decision between them
plan          the stage graph, resolved once (needs, upstream, downstream)
claims        the stage loops and the claim policy (batches, scans, waits)
attempt       one partition attempt, its retries, and error classification
outcomes      outcomes buffered and written to the ledger in batches
lease         registration, heartbeat, reaping, fleet shares, lease proofs
control       stopping the run: graceful, immediate, fatal
rows          records routed to their tables, and checked
db            the ledger's own thread
============  ===============================================================

Calling conventions and pools live in :mod:`backfill.invoke`, the sink writer in
:mod:`backfill.writer`.
"""

from backfill.engine.lease import worker_is_dead
from backfill.engine.result import ExitCode, RunOptions, RunResult, RunStatus
from backfill.engine.run import Runner

__all__ = ["ExitCode", "RunOptions", "RunResult", "RunStatus", "Runner", "worker_is_dead"]
