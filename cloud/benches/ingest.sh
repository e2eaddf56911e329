#!/usr/bin/env bash
# Ingest through Mosquitto: `osprey serve --source mqtt` (fresh database and 4 h of history per
# series) against a counting `mosquitto_sub -q 1`, 3 interleaved rounds (tests/benches/ingest.rs).
# Builds the release `osprey` with its default features (target/release; the debug binaries the
# suites use are not touched), then runs the bench. Extra environment: OSPREY_BENCH_DEVICES,
# OSPREY_BENCH_MESSAGES, OSPREY_BENCH_ROUNDS, OSPREY_BENCH_INFLIGHT, OSPREY_BENCH_SERVE_ARGS.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --release -p osprey-cloud --bin osprey
cargo bench -p osprey-tests --bench ingest
