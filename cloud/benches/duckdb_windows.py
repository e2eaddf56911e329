"""The same one-minute window aggregates as Osprey's benchmark, computed by DuckDB.

Usage: python duckdb_windows.py READINGS.csv

Loads the readings (device, sensor, metric, t_ms, v) into an in-memory table and writes
them to a Parquet file beside the CSV (neither is timed), checks that one approx_quantile call
with the list [0.5, 0.95, 0.99] gives the values of three separate calls, and prints
`ready rows=N same_quantiles=BOOL`. Then it answers each line on stdin, `run SOURCE THREADS`
(SOURCE: `table` or `parquet`), by running the aggregation once and printing
`duckdb source=SOURCE threads=T windows=W counted=C seconds=S`. The benchmark
(cloud/benches/windows.rs) interleaves these runs with Osprey's, round by round.
"""
import os
import sys
import time

import duckdb

AGGREGATES = """
       count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS mean,
       var_samp(v) AS variance, skewness(v) AS skew, kurtosis(v) AS kurt,
       {quantiles}
"""
# One call with the list of fractions: one sketch per group, read three times.
ONE_CALL = "approx_quantile(v, [0.5, 0.95, 0.99]) AS q"
THREE_CALLS = (
    "approx_quantile(v, 0.5) AS p50, approx_quantile(v, 0.95) AS p95, "
    "approx_quantile(v, 0.99) AS p99"
)


def query(source, quantiles, table="w"):
    return f"""
CREATE OR REPLACE TABLE {table} AS
SELECT device, sensor, metric, t_ms - t_ms % 60000 AS start_ms,
{AGGREGATES.format(quantiles=quantiles)}
FROM {source} GROUP BY ALL
"""


def main():
    path = sys.argv[1]
    parquet = os.path.join(os.path.dirname(path), "readings.parquet")
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE r AS SELECT * FROM read_csv(?, header=true, columns={"
        "'device': 'VARCHAR', 'sensor': 'VARCHAR', 'metric': 'VARCHAR', 't_ms': 'BIGINT', "
        "'v': 'DOUBLE'})",
        [path],
    )
    con.execute(f"COPY r TO '{parquet}' (FORMAT parquet)")
    rows = con.execute("SELECT count(*) FROM r").fetchone()[0]
    con.execute(query("r", ONE_CALL, "one"))
    con.execute(query("r", THREE_CALLS, "three"))
    differ = con.execute(
        "SELECT count(*) FROM one JOIN three USING (device, sensor, metric, start_ms) "
        "WHERE one.q[1] IS DISTINCT FROM three.p50 OR one.q[2] IS DISTINCT FROM three.p95 "
        "OR one.q[3] IS DISTINCT FROM three.p99"
    ).fetchone()[0]
    groups = con.execute("SELECT count(*) FROM one").fetchone()[0]
    same = differ == 0 and groups == con.execute("SELECT count(*) FROM three").fetchone()[0]
    con.execute("DROP TABLE one")
    con.execute("DROP TABLE three")
    print(f"ready rows={rows} same_quantiles={str(same).lower()}", flush=True)

    sources = {"table": "r", "parquet": f"read_parquet('{parquet}')"}
    for line in sys.stdin:
        words = line.split()
        if len(words) != 3 or words[0] != "run" or words[1] not in sources:
            print(f"error: cannot read command {line.strip()!r}", flush=True)
            continue
        source, threads = words[1], int(words[2])
        con.execute(f"SET threads={threads}")
        start = time.perf_counter()
        con.execute(query(sources[source], ONE_CALL))
        seconds = time.perf_counter() - start
        windows = con.execute("SELECT count(*) FROM w").fetchone()[0]
        total = con.execute("SELECT sum(n) FROM w").fetchone()[0]
        print(
            f"duckdb source={source} threads={threads} windows={windows} counted={total} "
            f"seconds={seconds:.6f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
