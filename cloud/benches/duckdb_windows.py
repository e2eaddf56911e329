"""The same one-minute window aggregates as Osprey's benchmark, computed by DuckDB.

Usage: python duckdb_windows.py READINGS.csv THREADS
Loads the readings (device, sensor, metric, t_ms, v) into a DuckDB table (not timed), then
times the aggregation (best of 3) and prints one line: `duckdb rows=N windows=W seconds=S`.
"""
import sys
import time

import duckdb

path, threads = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute(f"PRAGMA threads={threads}")
con.execute(
    "CREATE TABLE r AS SELECT * FROM read_csv(?, header=true, columns={"
    "'device': 'VARCHAR', 'sensor': 'VARCHAR', 'metric': 'VARCHAR', 't_ms': 'BIGINT', 'v': 'DOUBLE'})",
    [path],
)
rows = con.execute("SELECT count(*) FROM r").fetchone()[0]
query = """
CREATE OR REPLACE TABLE w AS
SELECT device, sensor, metric, t_ms - t_ms % 60000 AS start_ms,
       count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS mean,
       var_samp(v) AS variance, skewness(v) AS skew, kurtosis(v) AS kurt,
       approx_quantile(v, 0.5) AS p50, approx_quantile(v, 0.95) AS p95,
       approx_quantile(v, 0.99) AS p99
FROM r GROUP BY ALL
"""
best = float("inf")
for _ in range(3):
    start = time.perf_counter()
    con.execute(query)
    best = min(best, time.perf_counter() - start)
windows = con.execute("SELECT count(*) FROM w").fetchone()[0]
total = con.execute("SELECT sum(n) FROM w").fetchone()[0]
print(f"duckdb rows={rows} windows={windows} counted={total} seconds={best:.6f}")
