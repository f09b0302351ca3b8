"""The run's clients to its sources, one per resource, created on first use."""

from __future__ import annotations

from backfill.errors import BackfillError
from backfill.job import Job
from backfill.sources.http import HttpClient

__all__ = ["Clients"]


class Clients:
    """The HTTP clients of one run: ``ctx.http`` of every stage comes from here."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._secrets = job.secrets
        self._http: dict[str | None, HttpClient] = {}

    def http(self, resource: str | None = None) -> HttpClient:
        """The run's HTTP client for ``resource`` (None: unlimited), created on first use."""
        client = self._http.get(resource)
        if client is None:
            client = self._http[resource] = self._new_http(resource)
        return client

    def _new_http(self, resource: str | None) -> HttpClient:
        job = self._job
        if resource is None:
            return HttpClient(timeout=job.http_timeout, secrets=self._secrets)
        if resource not in job.resources:
            raise BackfillError(f"unknown resource {resource!r}; declare it on the job")
        options = job.http_options[resource]
        return HttpClient(
            resource=job.resources[resource],
            timeout=options["timeout"],
            retries=options["retries"],
            headers=options["headers"],
            params=options["params"],
            secrets=self._secrets,
            base_url=options["base_url"],
            allowed_hosts=options["allowed_hosts"],
            cross_origin=options["cross_origin"],
            max_body=options["max_body"],
            deadline=options["deadline"],
            hedge=options["hedge"],
        )

    @property
    def requests(self) -> int:
        """Requests sent by every client of the run."""
        return sum(c.requests for c in self._http.values())

    @property
    def retried(self) -> int:
        """Requests the clients sent again."""
        return sum(c.retried for c in self._http.values())

    async def aclose(self) -> None:
        for client in self._http.values():
            await client.aclose()
