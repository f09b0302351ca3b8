"""Sources: clients that stages use to read from the outside world.

What a job declares about a source is settled here, without loading any client (the job
model imports this, never httpx).
"""

from typing import Literal

__all__ = ["DEFAULT_MAX_BODY", "CrossOrigin"]

# The largest body (decoded) a resource accepts unless it says otherwise.
DEFAULT_MAX_BODY = 64 * 2**20

# What a next link or redirect to another origin gets: followed without the resource's
# credentials ("strip"), or refused ("refuse").
CrossOrigin = Literal["strip", "refuse"]
