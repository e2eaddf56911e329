#!/usr/bin/env bash
# Osprey's test command: `bash tests/run.sh` from anywhere in the repo.
#
#   bash tests/run.sh              install what is missing, start moto, then run every step:
#                                  fmt, clippy, build, test (incl. end-to-end suites), cross
#   bash tests/run.sh -- CMD ...   install and start the same things, then run only CMD in that
#                                  environment, e.g. `bash tests/run.sh -- cargo test -p osprey-tests`
#
# What it installs, each only when missing (idempotent; a second run installs nothing):
#   Debian:  mosquitto mosquitto-clients openssl qemu-user-static gcc-aarch64-linux-gnu
#            gcc-arm-linux-gnueabihf chromium (+ python3 python3-venv when no python3 can make a venv)
#            openssh-server shellcheck systemd (deploy suite: sshd, shellcheck, systemd-analyze)
#   rustup:  targets aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl,
#            components clippy rustfmt
#   PyPI:    moto[server] 5.x in the venv .osprey-test/venv
#            cfn-lint and awscli in the same venv (deploy suite: template lint, provisioning on moto)
#            duckdb in the same venv (ingest_batch suite: reads serve's Parquet archive)
#            awsiotsdk in .osprey-test/awsiot-venv, a venv of its own (AWS's Device Shadow and fleet
#            provisioning clients, to check those stand-ins against; its awscrt stays away from
#            moto's botocore)
#   npm:     kinesalite 3.3.3 in .osprey-test/kinesalite (a second Kinesis implementation; only
#            when node and npm are present, otherwise the kinesalite suite fails and says why)
#
# What it starts: one moto server (Kinesis + DynamoDB API) on a free loopback port, and kinesalite
# (Kinesis API) on another when it is installed; both stopped on exit.
# Mosquitto is NOT started here: every test starts its own brokers through the harness
# (tests/src/mosquitto.rs) because tests stop and restart them.
#
# What it exports to the steps:
#   OSPREY_TEST_MOTO_ENDPOINT=http://127.0.0.1:PORT   the moto server
#   OSPREY_TEST_MOTO_SERVER=.osprey-test/venv/bin/moto_server   for tests that start a private one
#   OSPREY_TEST_AWSIOT_PYTHON=.osprey-test/awsiot-venv/bin/python   python with awsiotsdk
#   OSPREY_TEST_DUCKDB_PYTHON=.osprey-test/venv/bin/python   python with duckdb
#   OSPREY_TEST_KINESALITE_ENDPOINT=http://127.0.0.1:PORT   kinesalite (when installed)
#   OSPREY_TEST_MOSQUITTO=/usr/sbin/mosquitto         the broker binary the harness starts
#   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
#
# Everything listens on 127.0.0.1 only. Needs root (or sudo) only when something must be installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.osprey-test"
VENV="$STATE/venv"
mkdir -p "$STATE"

APT_PACKAGES=(mosquitto mosquitto-clients openssl qemu-user-static gcc-aarch64-linux-gnu
    gcc-arm-linux-gnueabihf chromium openssh-server shellcheck systemd)
RUST_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl)
RUST_COMPONENTS=(clippy rustfmt)
# moto 5.2.x answers ListShards with a NextToken and no StreamName (the form AWS requires for
# later pages) with "Stream None ... not found"; 5.1.22 pages correctly (it ends the last shard at
# 2^128, one past the hash range: tests/tests/kinesis.rs reads that as the end of the range).
MOTO_SPEC='moto[server]>=5,<5.2'
DEPLOY_PYPI=(cfn-lint awscli)
# DuckDB reads serve's Parquet archive back in tests/tests/ingest_batch.rs.
DUCKDB_SPEC='duckdb>=1,<2'
TEST_TIMEOUT="${OSPREY_TEST_TIMEOUT:-40m}"

if [[ -t 2 ]]; then BOLD=$'\033[1m' RED=$'\033[1;31m' OFF=$'\033[0m'; else BOLD="" RED="" OFF=""; fi
log() { printf '%stests/run.sh:%s %s\n' "$BOLD" "$OFF" "$*" >&2; }
die() { printf '%stests/run.sh: %s%s\n' "$RED" "$*" "$OFF" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Timing and cleanup
# ---------------------------------------------------------------------------------------------
TIMINGS=()
RUN_START=$SECONDS
MOTO_PID=""
KINESALITE_PID=""
KINESALITE_SPEC='kinesalite@3.3.3'
TIMEOUT_PID=""  # the `timeout` wrapping a step, see with_timeout
STEP_NAME=""   # the step running now, so that the EXIT trap can name what failed
STEP_START=0
# Free disk after each step, in the summary: a clean build of every test binary is tens of GB, and
# CI's disk is not ours to size. `df` on the target directory's filesystem, in GiB.
disk_free() { df -BG --output=avail "$ROOT" 2>/dev/null | tail -1 | tr -dc 0-9; }
# A clean checkout (CI) gains nothing from incremental compilation but pays its cache on disk.
if [[ "${CI:-}" == true ]]; then export CARGO_INCREMENTAL=0; fi

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$STEP_NAME" ]]; then
        TIMINGS+=("$(printf '%-34s %8d %8s  FAILED (exit %d)' "$STEP_NAME" "$((SECONDS - STEP_START))" "$(disk_free)G" "$rc")")
    fi
    if [[ -n "$TIMEOUT_PID" ]]; then
        kill -INT "$TIMEOUT_PID" 2>/dev/null || true
        wait "$TIMEOUT_PID" 2>/dev/null || true
    fi
    if [[ -n "$MOTO_PID" ]]; then
        # moto runs in its own session (setsid): end its whole process group, then reap it.
        kill -TERM -- "-$MOTO_PID" 2>/dev/null || kill -TERM "$MOTO_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$MOTO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    if [[ -n "$KINESALITE_PID" ]]; then
        kill -TERM -- "-$KINESALITE_PID" 2>/dev/null || kill -TERM "$KINESALITE_PID" 2>/dev/null || true
        wait "$KINESALITE_PID" 2>/dev/null || true
    fi
    if ((${#TIMINGS[@]})); then
        printf '\n%-34s %8s %8s  %s\n' "step" "seconds" "free" "result" >&2
        printf '%s\n' "${TIMINGS[@]}" >&2
        printf '%-34s %8d\n' "total" "$((SECONDS - RUN_START))" >&2
    fi
    if [[ -n "$STEP_NAME" ]]; then
        local why=""
        ((rc == 124)) && why=" (timed out)"
        printf '%stests/run.sh: FAILED at step "%s" (exit %d%s); later steps did not run%s\n' \
            "$RED" "$STEP_NAME" "$rc" "$why" "$OFF" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# step NAME CMD...: run CMD and record its time. Deliberately not `CMD || ...`: that would switch
# off `set -e` inside the shell functions used as steps. A failure exits the script here and the
# EXIT trap reports which step failed.
step() {
    STEP_NAME=$1; shift
    STEP_START=$SECONDS
    log "== $STEP_NAME: $*"
    "$@"
    TIMINGS+=("$(printf '%-34s %8d %8s  ok' "$STEP_NAME" "$((SECONDS - STEP_START))" "$(disk_free)G")")
    STEP_NAME=""
}

# retry CMD...: up to 3 tries, for installs that fetch from a registry (a transient network error
# should not fail CI); a command that fails three times fails the step.
retry() {
    local n
    for n in 1 2 3; do
        "$@" && return 0
        ((n < 3)) && { log "failed (try $n of 3), retrying in $((n * 5)) s: $*"; sleep $((n * 5)); }
    done
    return 1
}

# with_timeout LIMIT CMD...: CMD under coreutils timeout (exit 124 when it runs out). timeout puts
# CMD in a process group of its own, which a terminal's Ctrl-C no longer reaches, so it runs in
# the background here and the EXIT trap passes an interrupt on to it (timeout forwards the signal
# to the whole group: cargo, the test binaries and the brokers they started).
with_timeout() {
    local limit=$1 rc=0; shift
    timeout --kill-after=30s "$limit" "$@" &
    TIMEOUT_PID=$!
    wait "$TIMEOUT_PID" || rc=$?
    TIMEOUT_PID=""
    return "$rc"
}

as_root() {
    if ((EUID == 0)); then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (or install it by hand)"; fi
}

# ---------------------------------------------------------------------------------------------
# Install what is missing
# ---------------------------------------------------------------------------------------------
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# A python3 that can create a venv with pip (pyenv's python can; Debian's needs python3-venv).
venv_python() {
    local py
    for py in "$(command -v python3 || true)" /usr/bin/python3; do
        [[ -n "$py" && -x "$py" ]] || continue
        if "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then echo "$py"; return 0; fi
    done
    return 1
}

moto_ready() { [[ -x "$VENV/bin/moto_server" ]] && "$VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; }
# The installed moto satisfies MOTO_SPEC (5.0 or 5.1).
moto_version_ok() { "$VENV/bin/python" -c 'import moto, sys; sys.exit(not moto.__version__.startswith(("5.0.", "5.1.")))' >/dev/null 2>&1; }

install_debian() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do deb_installed "$p" || missing+=("$p"); done
    if ! moto_ready && ! venv_python >/dev/null; then missing+=(python3 python3-venv); fi
    if ((${#missing[@]} == 0)); then log "Debian packages: all present"; return 0; fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    log "Debian packages missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    retry as_root apt-get update
    retry as_root apt-get install -y "${missing[@]}"
}

install_rust() {
    command -v rustup >/dev/null || die "rustup not found: install Rust stable with rustup first"
    local installed t c
    installed="$(rustup target list --installed)"
    for t in "${RUST_TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || retry rustup target add "$t"
    done
    installed="$(rustup component list --installed)"
    for c in "${RUST_COMPONENTS[@]}"; do
        grep -q "^$c-" <<<"$installed" || retry rustup component add "$c"
    done
}

install_moto() {
    if moto_ready && moto_version_ok; then log "moto: present in $VENV"; return 0; fi
    if moto_ready; then
        # A moto outside MOTO_SPEC (an older checkout installed 5.2): replace it in place, so the
        # tools beside it in the venv stay.
        retry "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$MOTO_SPEC"
        moto_version_ok || die "could not install $MOTO_SPEC into $VENV"
        return 0
    fi
    fresh_venv_with "$VENV" "$MOTO_SPEC"
    moto_ready || die "moto installed into $VENV but does not import"
}

# A new venv at $1 (replacing what is there) with the PyPI packages $2... installed.
fresh_venv_with() {
    local dir="$1" py
    shift
    py="$(venv_python)" || die "no python3 able to create a venv (install python3-venv)"
    rm -rf "$dir"
    "$py" -m venv "$dir"
    retry "$dir/bin/python" -m pip install --disable-pip-version-check -q "$@"
}

# cfn-lint and the AWS CLI for tests/tests/deploy.rs, into the moto venv.
install_deploy_tools() {
    if [[ -x "$VENV/bin/cfn-lint" && -x "$VENV/bin/aws" ]]; then log "cfn-lint, awscli: present in $VENV"; return 0; fi
    retry "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${DEPLOY_PYPI[@]}"
}

# DuckDB (PyPI) into the moto venv, to read the archive's Parquet files as a user would.
install_duckdb() {
    if "$VENV/bin/python" -c 'import duckdb' 2>/dev/null; then log "duckdb: present in $VENV"; return 0; fi
    retry "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$DUCKDB_SPEC"
}

# AWS's Device Shadow client for tests/tests/remote_config.rs (tests/sdk/shadow_check.py) and its
# Greengrass IPC client for tests/tests/greengrass.rs (tests/sdk/greengrass_check.py).
AWSIOT_VENV="$STATE/awsiot-venv"
AWSIOT_SPEC='awsiotsdk>=1.20,<2'
awsiot_ready() { [[ -x "$AWSIOT_VENV/bin/python" ]] && "$AWSIOT_VENV/bin/python" -c 'import awsiot.iotshadow, awsiot.iotidentity, awsiot.greengrasscoreipc.clientv2' 2>/dev/null; }

install_awsiotsdk() {
    if awsiot_ready; then log "awsiotsdk: present in $AWSIOT_VENV"; return 0; fi
    fresh_venv_with "$AWSIOT_VENV" "$AWSIOT_SPEC"
    awsiot_ready || die "awsiotsdk installed into $AWSIOT_VENV but does not import"
}

KINESALITE_DIR="$STATE/kinesalite"
kinesalite_ready() { [[ -x "$KINESALITE_DIR/node_modules/.bin/kinesalite" ]]; }

install_kinesalite() {
    if kinesalite_ready; then log "kinesalite: present in $KINESALITE_DIR"; return 0; fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        log "kinesalite: no node/npm on this machine; the kinesalite suite will fail and say so"
        return 0
    fi
    mkdir -p "$KINESALITE_DIR"
    retry npm install --prefix "$KINESALITE_DIR" --no-audit --no-fund --silent "$KINESALITE_SPEC"
    kinesalite_ready || die "kinesalite installed into $KINESALITE_DIR but has no executable"
}

start_kinesalite() {
    kinesalite_ready || { log "kinesalite: not installed, not started"; return 0; }
    local port
    port="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # In-memory (no --path), streams ACTIVE at once, small shard-limit checks off.
    setsid node "$KINESALITE_DIR/node_modules/.bin/kinesalite" --port "$port" --createStreamMs 0 \
        --deleteStreamMs 0 --updateStreamMs 0 --shardLimit 1000 >"$STATE/kinesalite.log" 2>&1 </dev/null &
    KINESALITE_PID=$!
    "$VENV/bin/python" - "$port" "$KINESALITE_PID" <<'EOF2' || die "kinesalite did not start (log: $STATE/kinesalite.log)"
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    os.kill(pid, 0)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("kinesalite did not listen within 30 s")
EOF2
    export OSPREY_TEST_KINESALITE_ENDPOINT="http://127.0.0.1:$port"
    log "kinesalite pid $KINESALITE_PID at $OSPREY_TEST_KINESALITE_ENDPOINT (log: $STATE/kinesalite.log)"
}

# ---------------------------------------------------------------------------------------------
# Start moto
# ---------------------------------------------------------------------------------------------
start_moto() {
    local port try
    for try in 1 2 3; do
        port="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 </dev/null &
        MOTO_PID=$!
        # Ready when it answers HTTP (any status); give up after 30 s or as soon as it dies.
        if "$VENV/bin/python" - "$port" "$MOTO_PID" <<'EOF'
import os, sys, time, urllib.request, urllib.error
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("moto_server exited")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("moto_server did not answer within 30 s")
EOF
        then
            export OSPREY_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port"
            log "moto server pid $MOTO_PID at $OSPREY_TEST_MOTO_ENDPOINT (log: $STATE/moto.log)"
            return 0
        fi
        cat "$STATE/moto.log" >&2 || true
        kill -KILL -- "-$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        MOTO_PID=""
        # Most likely another process took the port between choosing and binding it: try again.
        log "moto server did not start (try $try of 3, log above)"
    done
    die "moto server did not start in 3 tries (log: $STATE/moto.log)"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
CMD=()
if (($#)); then
    [[ "$1" == "--" ]] || die "usage: bash tests/run.sh [-- CMD ARGS...]"
    shift
    CMD=("$@")
    ((${#CMD[@]})) || die "usage: bash tests/run.sh [-- CMD ARGS...]"
fi

step "install: debian packages" install_debian
step "install: rust targets, components" install_rust
step "install: moto venv" install_moto
step "install: cfn-lint, awscli (venv)" install_deploy_tools
step "install: kinesalite (npm)" install_kinesalite
step "install: awsiotsdk (venv)" install_awsiotsdk
step "install: duckdb (venv)" install_duckdb
step "start: moto server" start_moto
step "start: kinesalite" start_kinesalite

export OSPREY_TEST_MOSQUITTO
OSPREY_TEST_MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[[ -x "$OSPREY_TEST_MOSQUITTO" ]] || die "mosquitto not found at $OSPREY_TEST_MOSQUITTO"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export OSPREY_TEST_MOTO_SERVER="$VENV/bin/moto_server"
export OSPREY_TEST_DUCKDB_PYTHON="$VENV/bin/python"
export OSPREY_TEST_AWSIOT_PYTHON="$AWSIOT_VENV/bin/python"

if ((${#CMD[@]})); then
    label="run: ${CMD[*]}"
    step "${label:0:34}" with_timeout "$TEST_TIMEOUT" "${CMD[@]}"
    exit 0
fi

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --bins" cargo build --workspace --bins
# A generous limit so that a hung end-to-end test fails with a message instead of eating CI's time.
step "cargo test --workspace" with_timeout "$TEST_TIMEOUT" cargo test --workspace
step "cross/build.sh --test" bash cross/build.sh --test
log "all steps passed"
