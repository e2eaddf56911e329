#!/usr/bin/env bash
# Build the gateway agent for ARM and smoke-test it under qemu.
#
#   bash cross/build.sh [--test] [--target TRIPLE]... [--dist DIR]
#
#   --target TRIPLE  build only this target (repeatable). Default: all four of
#                    aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl
#                    armv7-unknown-linux-musleabihf (the last is skipped, and the summary says
#                    so, when rustup cannot provide its standard library; named with --target,
#                    it is required)
#   --test           also run `cargo test -p osprey-agent --target TRIPLE` under qemu, for the
#                    aarch64-gnu and armv7 targets by default, or for every --target given
#   --dist DIR       also copy each binary to DIR/osprey-agent-TRIPLE and write DIR/SHA256SUMS
#                    and DIR/recipe.yaml, the Greengrass recipe whose version and artifact URIs
#                    are the agent's version (deploy/greengrass/render-recipe.sh)
#
# For each target it builds `-p osprey-agent` with the size-optimised `gateway` profile (root
# Cargo.toml), prints the binary's path and size, and runs `osprey-agent --help` under qemu.
# Checks, each failing the build: the musl binary is static (no ELF interpreter) and stays under
# the size budget of 4,194,304 bytes, 4 MiB (OSPREY_MUSL_BUDGET_BYTES overrides); for the -gnu binaries it
# prints the newest glibc symbol version they need (what deploy/pi/install.sh compares against).
#
# Two ways to build, chosen per run:
#   cross   when `cross` is installed and a container engine answers (`docker info` or
#           `podman info`). cross reads its config from $CROSS_CONFIG, which this script points at
#           cross/Cross.toml (cross only looks at the project root otherwise). The toolchain is
#           passed explicitly (`cross +TOOLCHAIN`, override with CROSS_TOOLCHAIN) because cross with
#           rustup >= 1.28 otherwise tries to reinstall the toolchain on every call.
#   native  otherwise (the usual case on our machines: no container engine). Debian's cross-gcc
#           links (CARGO_TARGET_<TRIPLE>_LINKER) and compiles C code such as ring's (CC_<triple>,
#           AR_<triple>); qemu-user runs the binaries (CARGO_TARGET_<TRIPLE>_RUNNER). Needs the
#           Debian packages gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static, which
#           tests/run.sh installs; missing rustup targets are added here.
#   Force one with OSPREY_CROSS=cross or OSPREY_CROSS=native.
#
# Binaries land in target/TRIPLE/gateway/osprey-agent (CARGO_TARGET_DIR honoured).
# glibc note: the native gnu builds link against Debian 12's glibc (needs >= 2.34 on the device);
# ship the musl build to older images such as Raspberry Pi OS bullseye.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CROSS_CONFIG="$ROOT/cross/Cross.toml"

PACKAGE=osprey-agent
BIN=osprey-agent
PROFILE=gateway
ALL_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
DEFAULT_TEST_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
MUSL_BUDGET_BYTES="${OSPREY_MUSL_BUDGET_BYTES:-4194304}"

if [[ -t 2 ]]; then BOLD=$'\033[1m' RED=$'\033[1;31m' OFF=$'\033[0m'; else BOLD="" RED="" OFF=""; fi
log() { printf '%scross/build.sh:%s %s\n' "$BOLD" "$OFF" "$*" >&2; }
die() { printf '%scross/build.sh: %s%s\n' "$RED" "$*" "$OFF" >&2; exit 1; }
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

RUN_TESTS=0
TARGETS=()
DIST=""
while (($#)); do
    case "$1" in
        --test) RUN_TESTS=1 ;;
        --target) [[ $# -ge 2 ]] || usage; TARGETS+=("$2"); shift ;;
        --target=*) TARGETS+=("${1#--target=}") ;;
        --dist) [[ $# -ge 2 ]] || usage; DIST="$2"; shift ;;
        --dist=*) DIST="${1#--dist=}" ;;
        -h|--help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
    shift
done
EXPLICIT_TARGETS=${#TARGETS[@]}
if ((${#TARGETS[@]})); then
    TEST_TARGETS=("${TARGETS[@]}")
else
    TARGETS=("${ALL_TARGETS[@]}")
    TEST_TARGETS=("${DEFAULT_TEST_TARGETS[@]}")
fi

# Per-target facts: the Debian cross-gcc prefix, the qemu binary and its sysroot (-L).
target_facts() {
    case "$1" in
        aarch64-unknown-linux-gnu) GCC_PREFIX=aarch64-linux-gnu QEMU=qemu-aarch64-static SYSROOT=/usr/aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) GCC_PREFIX=arm-linux-gnueabihf QEMU=qemu-arm-static SYSROOT=/usr/arm-linux-gnueabihf ;;
        # Static musl binary: Rust ships musl's libc and start files, gcc only drives the link.
        aarch64-unknown-linux-musl) GCC_PREFIX=aarch64-linux-gnu QEMU=qemu-aarch64-static SYSROOT="" ;;
        armv7-unknown-linux-musleabihf) GCC_PREFIX=arm-linux-gnueabihf QEMU=qemu-arm-static SYSROOT="" ;;
        *) die "unsupported target $1 (supported: ${ALL_TARGETS[*]})" ;;
    esac
    RUNNER="$QEMU${SYSROOT:+ -L $SYSROOT}"
}

# ---------------------------------------------------------------------------------------------
# Choose cross or native
# ---------------------------------------------------------------------------------------------
engine_answers() {
    local engine="${CROSS_CONTAINER_ENGINE:-}"
    if [[ -n "$engine" ]]; then timeout 20 "$engine" info >/dev/null 2>&1; return; fi
    { command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; } ||
        { command -v podman >/dev/null && timeout 20 podman info >/dev/null 2>&1; }
}

MODE="${OSPREY_CROSS:-}"
if [[ -z "$MODE" ]]; then
    if command -v cross >/dev/null && engine_answers; then MODE=cross; else MODE=native; fi
fi
case "$MODE" in
    cross)
        command -v cross >/dev/null || die "OSPREY_CROSS=cross but cross is not installed (cargo install cross)"
        TOOLCHAIN="${CROSS_TOOLCHAIN:-$(rustup show active-toolchain | cut -d' ' -f1)}"
        CARGO=(cross "+$TOOLCHAIN")
        log "using cross (+$TOOLCHAIN) with CROSS_CONFIG=$CROSS_CONFIG"
        ;;
    native)
        CARGO=(cargo)
        log "using the native toolchain (Debian cross-gcc + qemu-user); no container engine answering or no cross"
        ;;
    *) die "OSPREY_CROSS must be 'cross' or 'native', not '$MODE'" ;;
esac

# Native mode: check the tools, add missing rustup targets, and export cargo's per-target settings.
prepare_native() {
    local t=$1 upper missing=()
    target_facts "$t"
    command -v "$GCC_PREFIX-gcc" >/dev/null || missing+=("gcc-$GCC_PREFIX")
    command -v "$QEMU" >/dev/null || missing+=(qemu-user-static)
    ((${#missing[@]} == 0)) ||
        die "missing ${missing[*]}: run tests/run.sh (installs them) or apt-get install -y ${missing[*]}"
    if ! rustup target list --installed | grep -qx "$t"; then
        if ! rustup target add "$t" >"$TMP_LOG" 2>&1; then
            log "cannot install rustup's standard library for $t: $(grep -m1 'error' "$TMP_LOG" || tail -1 "$TMP_LOG")"
            return 1
        fi
    fi
    upper="$(tr 'a-z-' 'A-Z_' <<<"$t")"
    export "CARGO_TARGET_${upper}_LINKER=$GCC_PREFIX-gcc"
    export "CARGO_TARGET_${upper}_RUNNER=$RUNNER"
    export "CC_${t//-/_}=$GCC_PREFIX-gcc"
    export "AR_${t//-/_}=$GCC_PREFIX-ar"
}

target_dir() {
    local dir="${CARGO_TARGET_DIR:-target}"
    [[ "$dir" = /* ]] || dir="$ROOT/$dir"
    echo "$dir"
}

# Host-side qemu command for the smoke test (works for binaries from either mode).
smoke() {
    local t=$1 binary=$2 out rc=0
    target_facts "$t"
    if ! command -v "$QEMU" >/dev/null; then
        if [[ "$MODE" == cross ]]; then
            "${CARGO[@]}" run -p "$PACKAGE" --bin "$BIN" --profile "$PROFILE" --target "$t" -- --help
            return
        fi
        die "$QEMU not found: apt-get install -y qemu-user-static"
    fi
    # shellcheck disable=SC2086 # RUNNER is "qemu-xxx-static [-L sysroot]" on purpose
    out="$($RUNNER "$binary" --help 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed -n '1,12p' | sed 's/^/    | /' >&2
    ((rc == 0)) || die "smoke test failed: $RUNNER $binary --help exited $rc"
    grep -q 'Usage:' <<<"$out" || die "smoke test failed: '$BIN --help' printed no 'Usage:' line"
}

# Linkage checks: static musl binaries under the budget; -gnu binaries report their glibc floor.
check_linkage() {
    local t=$1 binary=$2 size=$3 glibc
    case "$t" in
        *-musl*)
            if readelf -lW "$binary" | grep -q 'program interpreter'; then
                die "$binary is dynamically linked (it has an ELF interpreter); the musl build must be static"
            fi
            ((size < MUSL_BUDGET_BYTES)) ||
                die "$binary is $size bytes, over the budget of $MUSL_BUDGET_BYTES bytes; find what grew with cargo bloat or drop features"
            log "$t: static, $size bytes < budget $MUSL_BUDGET_BYTES"
            ;;
        *-gnu*)
            glibc="$(grep -ao 'GLIBC_2\.[0-9]*' "$binary" | sort -u -t. -k2,2n | tail -1)"
            log "$t: dynamically linked, needs ${glibc:-no versioned glibc symbols} or newer on the device"
            ;;
    esac
}

TMP_LOG="$(mktemp)"
trap 'rm -f "$TMP_LOG"' EXIT
SUMMARY=()
for t in "${TARGETS[@]}"; do
    target_facts "$t"
    if [[ "$MODE" == native ]] && ! prepare_native "$t"; then
        # The armv7 static build is optional by default: its rust-std is not on every mirror.
        if ((EXPLICIT_TARGETS)) || [[ "$t" != armv7-unknown-linux-musleabihf ]]; then
            die "no toolchain for $t (see above); check network access to static.rust-lang.org, or build it with cross"
        fi
        log "SKIPPED $t: no rust-std for it from rustup here; the 32-bit static build is not made (use cross with a container engine, or the armv7 glibc build)"
        SUMMARY+=("$(printf '%-32s %10s  %5s   %s' "$t" "skipped" "-" "no rust-std for this target from rustup")")
        continue
    fi
    log "== build $PACKAGE --profile $PROFILE --target $t"
    t0=$SECONDS
    "${CARGO[@]}" build -p "$PACKAGE" --bin "$BIN" --profile "$PROFILE" --target "$t"
    dt=$((SECONDS - t0))
    binary="$(target_dir)/$t/$PROFILE/$BIN"
    [[ -f "$binary" ]] || die "build of $t succeeded but $binary is missing"
    size=$(stat -c %s "$binary")
    log "$binary: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MB", s / 1e6 }')), built in ${dt}s"
    check_linkage "$t" "$binary" "$size"
    if [[ -n "$DIST" ]]; then
        mkdir -p "$DIST"
        install -m 0755 "$binary" "$DIST/$BIN-$t"
        log "copied to $DIST/$BIN-$t"
    fi
    log "== smoke test: $RUNNER $binary --help"
    smoke "$t" "$binary"
    SUMMARY+=("$(printf '%-32s %10s  %5ss  %s' "$t" "$size" "$dt" "${binary#"$ROOT"/}")")
done

if ((RUN_TESTS)); then
    for t in "${TEST_TARGETS[@]}"; do
        target_facts "$t"
        if [[ "$MODE" == native ]]; then prepare_native "$t"; fi
        log "== cargo test -p $PACKAGE --target $t (runner: $RUNNER)"
        t0=$SECONDS
        "${CARGO[@]}" test -p "$PACKAGE" --target "$t"
        SUMMARY+=("$(printf '%-32s %10s  %5ss  %s' "$t" "tests ok" "$((SECONDS - t0))" "cargo test -p $PACKAGE under qemu")")
    done
fi

if [[ -n "$DIST" ]]; then
    (cd "$DIST" && sha256sum -- "$BIN"-* >SHA256SUMS)
    version="$(sh "$ROOT/deploy/greengrass/render-recipe.sh" "$DIST")"
    log "artifacts, SHA256SUMS and the Greengrass recipe (version $version) in $DIST"
fi

printf '\n%-32s %10s  %6s  %s\n' "target" "bytes" "time" "binary" >&2
printf '%s\n' "${SUMMARY[@]}" >&2
