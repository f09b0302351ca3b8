"""Coverage: which partitions of which stages are done, and which are not and why.

Every partition a job declares (in the selection) gets one state:

* ``done``    -- finished with records (or a stage that writes nothing);
* ``empty``   -- legitimately nothing there (the stage said so, e.g. no games that day);
* ``thin``    -- done, but with far fewer records per day than its neighbours (same
  stage and dimensions, up to 7 partitions either side): suspicious, worth a look;
* ``failed``  -- failed, with its category and message;
* ``stale``   -- finished, but an input it was computed from has been redone since;
* ``running`` -- leased by a worker right now;
* ``blocked`` -- pending, but waiting for a failed input: nothing runs it until that
  input is retried (``backfill retry --failed``); ``status`` counts it the same way;
* ``missing`` -- not done yet: never run, or released.

The report is read-only: it never changes the ledger.

The package holds the model and its gaps (``model``), the classification of each
partition against the ledger (``classify``), the matrix of day, month or year buckets
(``matrix``), and the JSON and HTML renderings (``render``).
"""

from backfill.coverage.classify import DEFAULT_THIN, NEIGHBOURS, collect
from backfill.coverage.matrix import Bucket, column_labels, pick_bucket, rows, worst
from backfill.coverage.model import GAP_STATES, SEVERITY, Coverage, Gap, PartitionState, State
from backfill.coverage.render import COLOURS, to_html, to_json

__all__ = [
    "COLOURS",
    "DEFAULT_THIN",
    "GAP_STATES",
    "NEIGHBOURS",
    "SEVERITY",
    "Bucket",
    "Coverage",
    "Gap",
    "PartitionState",
    "State",
    "collect",
    "column_labels",
    "pick_bucket",
    "rows",
    "to_html",
    "to_json",
    "worst",
]
