#!/usr/bin/env bash
# Runs the window benchmark side by side with DuckDB: installs DuckDB (PyPI) into a venv under
# .osprey-test/bench-venv if missing, then `cargo bench -p osprey-cloud --bench windows`.
# Extra arguments go to the bench binary (e.g. --readings 4000000). It builds into
# target/bench-minimal: a --no-default-features build in target/release would replace the
# user's `osprey` there with one that has no `demo`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.osprey-test/bench-venv"
if ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet duckdb
fi
cd "$root"
OSPREY_BENCH_PYTHON="$venv/bin/python" cargo bench -p osprey-cloud --no-default-features \
    --target-dir "${CARGO_TARGET_DIR:-target}/bench-minimal" --bench windows -- "$@"
