#!/usr/bin/env bash
# Install the Osprey agent on a Raspberry Pi (or any systemd Linux gateway) over SSH.
#
#   bash deploy/pi/install.sh [options] [USER@]HOST
#
#   --config FILE     agent config to install as /etc/osprey-agent/agent.toml
#                     (default deploy/config/simulator.toml; relative paths in it, such as
#                     certs/device.pem.crt, resolve against /etc/osprey-agent on the device)
#   --certs DIR       copy the files in DIR to /etc/osprey-agent/certs (root:osprey 0640)
#   --binary FILE     install FILE instead of picking a cross/build.sh artifact; its ELF machine
#                     must match the host's `uname -m`
#   --target-dir DIR  where cross/build.sh left its builds (default $CARGO_TARGET_DIR or target)
#   --root DIR        install under DIR on the host instead of / (an image being prepared, or a
#                     test): user in DIR/etc/passwd, unit enabled with systemctl --root, no start
#   --no-start        enable the service but do not (re)start it now
#   -p, --port N      SSH port;  -i, --identity KEY  SSH key;  --ssh-opt OPT  extra ssh option
#                     (repeatable, e.g. --ssh-opt StrictHostKeyChecking=accept-new)
#   --facts "ARCH GLIBC"  skip detection and plan for this host, e.g. "aarch64 2.31" or
#                     "armv7l none" (no glibc); only with --dry-run
#   --dry-run         detect the host, pick the artifact and print the plan; change nothing
#
# Detection: `uname -m` and `getconf GNU_LIBC_VERSION` over SSH. aarch64 takes the -gnu build
# when the host's glibc is at least the newest GLIBC_x.y the binary needs (2.34 with Debian 12's
# cross-gcc), else the static musl build (Raspberry Pi OS bullseye and older). 32-bit armv7l
# takes the armv7 -gnueabihf build and needs the same glibc; there is no 32-bit static build.
# Then, as root on the host (SSH as root, or a user with passwordless sudo): create the `osprey`
# user and the i2c/gpio groups (systemd-sysusers), install the binary to /usr/local/bin, config
# and certificates to /etc/osprey-agent, the unit to /etc/systemd/system, run
# `osprey-agent check` on the installed config, enable and (re)start osprey-agent.service.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CONFIG="$ROOT/deploy/config/simulator.toml"
CERTS=""
BINARY=""
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
DEST_ROOT=""
START=1
DRY_RUN=0
FACTS=""
HOST=""
SSH=(ssh -o BatchMode=yes)

while (($#)); do
    case "$1" in
        --config) [[ $# -ge 2 ]] || usage; CONFIG="$2"; shift ;;
        --certs) [[ $# -ge 2 ]] || usage; CERTS="$2"; shift ;;
        --binary) [[ $# -ge 2 ]] || usage; BINARY="$2"; shift ;;
        --target-dir) [[ $# -ge 2 ]] || usage; TARGET_DIR="$2"; shift ;;
        --root) [[ $# -ge 2 ]] || usage; DEST_ROOT="$2"; shift ;;
        --no-start) START=0 ;;
        -p|--port) [[ $# -ge 2 ]] || usage; SSH+=(-p "$2"); shift ;;
        -i|--identity) [[ $# -ge 2 ]] || usage; SSH+=(-i "$2"); shift ;;
        --ssh-opt) [[ $# -ge 2 ]] || usage; SSH+=(-o "$2"); shift ;;
        --facts) [[ $# -ge 2 ]] || usage; FACTS="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage ;;
        -*) log "unknown option: $1"; usage ;;
        *) [[ -z "$HOST" ]] || die "one host at a time (got '$HOST' and '$1')"; HOST="$1" ;;
    esac
    shift
done
[[ -n "$HOST" ]] || { log "missing HOST"; usage; }
[[ -z "$FACTS" || $DRY_RUN -eq 1 ]] || die "--facts only plans (add --dry-run); a real install detects the host"
[[ -z "$DEST_ROOT" || "$DEST_ROOT" = /* ]] || die "--root takes an absolute path on the host, not '$DEST_ROOT'"
[[ "$DEST_ROOT" != *"'"* ]] || die "--root must not contain a single quote"
[[ -f "$CONFIG" ]] || die "config $CONFIG not found (pass --config FILE)"
[[ -z "$CERTS" || -d "$CERTS" ]] || die "--certs $CERTS is not a directory"
[[ -z "$BINARY" || -f "$BINARY" ]] || die "--binary $BINARY not found"
DEST_ROOT="${DEST_ROOT%/}"

# ---------------------------------------------------------------------------------------------
# Detect the host
# ---------------------------------------------------------------------------------------------
if [[ -n "$FACTS" ]]; then
    read -r ARCH GLIBC _ <<<"$FACTS"
    REMOTE_UID=0
else
    facts="$("${SSH[@]}" "$HOST" 'uname -m; (getconf GNU_LIBC_VERSION 2>/dev/null || echo none) | sed "s/^glibc //"; id -u')" ||
        die "cannot reach $HOST over SSH (try: ssh $HOST true; set the key with -i, the port with -p)"
    { read -r ARCH; read -r GLIBC; read -r REMOTE_UID; } <<<"$facts"
fi
[[ -n "${ARCH:-}" && -n "${GLIBC:-}" ]] || die "could not read the architecture and glibc version of $HOST"
log "host $HOST: $ARCH, glibc $GLIBC"

# version_ge A B: A >= B for dotted versions.
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$2" ]]; }

# The newest GLIBC_2.x symbol version a binary needs ("" when it needs none, e.g. static).
glibc_floor() { grep -ao 'GLIBC_2\.[0-9]*' "$1" 2>/dev/null | sed 's/GLIBC_//' | sort -u -V | tail -1 || true; }

# ELF machine of a binary as uname -m would say it (aarch64, armv7l, x86_64), from the header.
elf_arch() {
    local class machine
    class="$(od -An -tu1 -j4 -N1 "$1" | tr -d ' ')"
    machine="$(od -An -tu2 -j18 -N2 "$1" | tr -d ' ')"
    case "$class:$machine" in
        2:183) echo aarch64 ;;
        1:40) echo armv7l ;;
        2:62) echo x86_64 ;;
        *) echo "unknown(class $class, machine $machine)" ;;
    esac
}

artifact() { echo "$TARGET_DIR/$1/gateway/osprey-agent"; }

# Pick the cross/build.sh target for the host; sets TRIPLE and WHY.
pick_target() {
    local gnu floor
    case "$ARCH" in
        aarch64|arm64)
            gnu=aarch64-unknown-linux-gnu
            floor="$(glibc_floor "$(artifact "$gnu")")"; floor="${floor:-2.34}"
            if [[ "$GLIBC" != none ]] && version_ge "$GLIBC" "$floor"; then
                TRIPLE=$gnu WHY="glibc $GLIBC >= $floor that the -gnu build needs"
            else
                TRIPLE=aarch64-unknown-linux-musl WHY="glibc $GLIBC is older than the $floor that the -gnu build needs: static musl build"
            fi
            ;;
        armv7l|armv8l)
            gnu=armv7-unknown-linux-gnueabihf
            floor="$(glibc_floor "$(artifact "$gnu")")"; floor="${floor:-2.34}"
            if [[ "$GLIBC" == none ]] || ! version_ge "$GLIBC" "$floor"; then
                die "32-bit ARM with glibc $GLIBC: the armv7 build needs glibc >= $floor and there is no 32-bit static build; install the 64-bit Raspberry Pi OS (takes the static aarch64 build) or bookworm, or pass --binary"
            fi
            TRIPLE=$gnu WHY="glibc $GLIBC >= $floor that the -gnu build needs"
            ;;
        armv6l) die "ARMv6 (Pi Zero / Pi 1) is not a supported target; pass --binary with your own build" ;;
        *) die "no Osprey gateway build for $ARCH (aarch64 and armv7l are built by cross/build.sh); pass --binary FILE built for $ARCH" ;;
    esac
}

if [[ -n "$BINARY" ]]; then
    got="$(elf_arch "$BINARY")"
    want="$ARCH"; [[ "$want" != arm64 ]] || want=aarch64; [[ "$want" != armv8l ]] || want=armv7l
    [[ "$got" == "$want" ]] || die "--binary $BINARY is built for $got but $HOST is $ARCH"
    floor="$(glibc_floor "$BINARY")"
    if [[ -n "$floor" ]] && { [[ "$GLIBC" == none ]] || ! version_ge "$GLIBC" "$floor"; }; then
        die "--binary $BINARY needs glibc >= $floor but $HOST has $GLIBC; use a static (musl) build"
    fi
    log "binary $BINARY (given; $got${floor:+, needs glibc >= $floor})"
else
    pick_target
    BINARY="$(artifact "$TRIPLE")"
    log "artifact $TRIPLE ($WHY): $BINARY"
    if [[ ! -f "$BINARY" ]]; then
        ((DRY_RUN)) || die "$BINARY is not built: run bash cross/build.sh --target $TRIPLE"
        log "  (not built yet: bash cross/build.sh --target $TRIPLE)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
R="$DEST_ROOT"
if [[ "${REMOTE_UID:-0}" == 0 ]]; then SUDO=""; else SUDO="sudo -n"; fi
cert_files=()
if [[ -n "$CERTS" ]]; then
    for f in "$CERTS"/*; do [[ -f "$f" ]] && cert_files+=("$f"); done
fi

{
    echo "plan for $HOST${R:+ (under $R)}${SUDO:+ (as root through sudo -n)}:"
    echo "  sysusers  deploy/pi/osprey-agent.sysusers -> $R/etc/sysusers.d/osprey-agent.conf; systemd-sysusers${R:+ --root=$R} (user osprey, groups i2c gpio)"
    echo "  install   $BINARY -> $R/usr/local/bin/osprey-agent (0755)"
    echo "  install   $CONFIG -> $R/etc/osprey-agent/agent.toml (root:osprey 0640)"
    for f in "${cert_files[@]}"; do
        echo "  install   $f -> $R/etc/osprey-agent/certs/$(basename "$f") (root:osprey 0640)"
    done
    echo "  install   deploy/pi/osprey-agent.service -> $R/etc/systemd/system/osprey-agent.service (0644)"
    echo "  check     $R/usr/local/bin/osprey-agent check $R/etc/osprey-agent/agent.toml"
    if [[ -n "$R" ]]; then
        echo "  enable    systemctl --root=$R enable osprey-agent.service (not started)"
    elif ((START)); then
        echo "  enable    systemctl daemon-reload; systemctl enable osprey-agent.service; systemctl restart osprey-agent.service"
    else
        echo "  enable    systemctl daemon-reload; systemctl enable osprey-agent.service (not started: --no-start)"
    fi
}
if ((DRY_RUN)); then log "dry run: nothing changed"; exit 0; fi

# ---------------------------------------------------------------------------------------------
# Stage, copy (one tar stream) and run the host-side steps
# ---------------------------------------------------------------------------------------------
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
install -m 0755 "$BINARY" "$STAGE/osprey-agent"
install -m 0644 "$CONFIG" "$STAGE/agent.toml"
install -m 0644 "$HERE/osprey-agent.service" "$STAGE/osprey-agent.service"
install -m 0644 "$HERE/osprey-agent.sysusers" "$STAGE/osprey-agent.sysusers"
mkdir "$STAGE/certs"
for f in "${cert_files[@]}"; do install -m 0644 "$f" "$STAGE/certs/"; done
# Runs on the host as root with POSIX sh: $1 = root prefix ("" for /), $2 = 1 to (re)start.
cat >"$STAGE/host-install.sh" <<'EOF'
set -eu
src=$(dirname "$0"); R=$1; start=$2
install -d -m 0755 "$R/etc/sysusers.d" "$R/usr/local/bin" "$R/etc/systemd/system"
install -m 0644 "$src/osprey-agent.sysusers" "$R/etc/sysusers.d/osprey-agent.conf"
if [ -n "$R" ]; then systemd-sysusers --root="$R"; else systemd-sysusers /etc/sysusers.d/osprey-agent.conf; fi
gid=$(awk -F: '$1 == "osprey" { print $3 }' "$R/etc/group")
[ -n "$gid" ] || { echo "host: systemd-sysusers did not create the group osprey" >&2; exit 1; }
# Replace the binary by rename, so that a running agent keeps its old inode.
install -m 0755 "$src/osprey-agent" "$R/usr/local/bin/.osprey-agent.new"
mv -f "$R/usr/local/bin/.osprey-agent.new" "$R/usr/local/bin/osprey-agent"
install -d -m 0750 -o 0 -g "$gid" "$R/etc/osprey-agent" "$R/etc/osprey-agent/certs"
install -m 0640 -o 0 -g "$gid" "$src/agent.toml" "$R/etc/osprey-agent/agent.toml"
for f in "$src"/certs/*; do
    [ -f "$f" ] && install -m 0640 -o 0 -g "$gid" "$f" "$R/etc/osprey-agent/certs/"
done
install -m 0644 "$src/osprey-agent.service" "$R/etc/systemd/system/osprey-agent.service"
"$R/usr/local/bin/osprey-agent" check "$R/etc/osprey-agent/agent.toml"
if [ -n "$R" ]; then
    systemctl --root="$R" enable osprey-agent.service
else
    systemctl daemon-reload
    systemctl enable osprey-agent.service
    if [ "$start" = 1 ]; then
        systemctl restart osprey-agent.service
        systemctl --no-pager --lines=5 status osprey-agent.service || true
    fi
fi
echo "host: osprey-agent installed${R:+ under $R}"
EOF

start=$START
[[ -z "$R" ]] || start=0
# shellcheck disable=SC2016 # $d expands on the host
remote='d=$(mktemp -d) && trap "rm -rf \"$d\"" EXIT && tar -C "$d" -xzf - && '"$SUDO"' sh "$d/host-install.sh" '"'$R'"' '"$start"
log "copying and installing on $HOST"
tar -C "$STAGE" -czf - . | "${SSH[@]}" "$HOST" "$remote" ||
    die "installation on $HOST failed (see the messages above; with a non-root user, sudo must work without a password)"
log "done${R:+ (under $R on $HOST)}; logs: ssh $HOST journalctl -u osprey-agent -f"
