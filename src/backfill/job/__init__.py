"""Jobs and stages: what a user declares in a job file.

Example job file::

    from backfill import Job, daily, EmptyPartition

    job = Job("results", partitions=daily("2020-01-01", "2020-12-31", tour=["atp", "wta"]))

    @job.stage(concurrency=8, timeout=30)
    async def results(ctx, partition):
        page = await ctx.http.get_json(f"https://api.example/results/{partition.date}")
        if not page["matches"]:
            raise EmptyPartition("no matches that day")
        return page["matches"]

The package holds the :class:`Job` (``model``), its stages and their dependencies
(``stages``), the checked options and secrets of its resources (``resources``), questions
about its stage graph (``graph``), and loading a job file (``loading``). Importing it loads
neither the HTTP client nor the engine.
"""

from backfill.job.loading import load_job, load_job_module
from backfill.job.model import Job
from backfill.job.stages import Needs, Stage, StageFunction, needs

__all__ = ["Job", "Needs", "Stage", "StageFunction", "load_job", "load_job_module", "needs"]
