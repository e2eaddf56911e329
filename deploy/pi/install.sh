#!/usr/bin/env bash
# Install, upgrade or remove the Osprey agent on a Raspberry Pi (or any systemd Linux gateway)
# over SSH.
#
#   bash deploy/pi/install.sh [options] [USER@]HOST
#
#   --config FILE     agent config to install as /etc/osprey-agent/agent.toml. Without it, a
#                     first install gets deploy/config/simulator.toml and an upgrade keeps the
#                     device's config (relative paths in it, such as certs/device.pem.crt,
#                     resolve against /etc/osprey-agent on the device)
#   --certs DIR       copy the files in DIR to /etc/osprey-agent/certs (root:osprey 0640); other
#                     certificates there stay
#   --binary FILE     install FILE instead of picking a cross/build.sh artifact; its ELF machine
#                     and dynamic loader must fit the host's userland
#   --target-dir DIR  where cross/build.sh left its builds (default $CARGO_TARGET_DIR or target)
#   --root DIR        install under DIR on the host instead of / (an image being prepared, or a
#                     test): user in DIR/etc/passwd, unit enabled with systemctl --root, no start
#   --no-start        enable the service but do not (re)start it now
#   --start-timeout N seconds the restarted service has to become and stay active (default 20)
#   --no-time-wait-sync  do not enable systemd-time-wait-sync.service (see the unit)
#   --uninstall       stop and disable the service, remove binary (and its .previous) and unit;
#                     config, certificates, journal and the osprey user stay
#   --purge           with --uninstall: also remove /etc/osprey-agent and /var/lib/osprey-agent
#   -p, --port N      SSH port;  -i, --identity KEY  SSH key;  --ssh-opt OPT  extra ssh option
#                     (repeatable, e.g. --ssh-opt StrictHostKeyChecking=accept-new)
#   --facts "KEY=VALUE ..."  skip detection and plan for a host with these facts (only with
#                     --dry-run): machine (uname -m), long_bit (getconf LONG_BIT), dpkg
#                     (dpkg --print-architecture), glibc (2.36 or none), loaders (comma list of
#                     aarch64 armhf armel x86_64: which dynamic loaders exist), installed and
#                     config (yes/no: a binary, a config already there), systemd (yes/no),
#                     time_wait_sync (yes/no: the unit exists). Unknown facts may be left out;
#                     "ARCH GLIBC" (e.g. "aarch64 2.31") is short for machine=ARCH glibc=GLIBC
#   --dry-run, --plan detect the host, decide and print the plan; change nothing
#
# Exit status: 0 done, 1 error (nothing changed, or a first install undone), 2 usage, 3 the
# upgrade failed and the previous install was put back.
#
# Which build: by the userland, not the kernel (a Pi 4/5 with 32-bit Raspberry Pi OS runs a
# 64-bit kernel, `uname -m` = aarch64, under an armhf userland that cannot load aarch64 glibc
# binaries). The userland comes from `dpkg --print-architecture`, else `getconf LONG_BIT` with
# the kernel machine, else which loader exists; see ARCHITECTURE.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }

EXAMPLE_CONFIG="$ROOT/deploy/config/simulator.toml"
CONFIG=""
CERTS=""
BINARY=""
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
DEST_ROOT=""
START=1
START_TIMEOUT=20
TIME_WAIT_SYNC=1
MODE=install
PURGE=0
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
        --start-timeout) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || usage; START_TIMEOUT="$2"; shift ;;
        --no-time-wait-sync) TIME_WAIT_SYNC=0 ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        -p|--port) [[ $# -ge 2 ]] || usage; SSH+=(-p "$2"); shift ;;
        -i|--identity) [[ $# -ge 2 ]] || usage; SSH+=(-i "$2"); shift ;;
        --ssh-opt) [[ $# -ge 2 ]] || usage; SSH+=(-o "$2"); shift ;;
        --facts) [[ $# -ge 2 ]] || usage; FACTS="$2"; shift ;;
        --dry-run|--plan) DRY_RUN=1 ;;
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
[[ $PURGE -eq 0 || $MODE == uninstall ]] || die "--purge goes with --uninstall"
if [[ $MODE == uninstall ]]; then
    [[ -z "$CONFIG$CERTS$BINARY" ]] || die "--uninstall takes no --config, --certs or --binary"
fi
[[ -z "$CONFIG" || -f "$CONFIG" ]] || die "config $CONFIG not found"
[[ -z "$CERTS" || -d "$CERTS" ]] || die "--certs $CERTS is not a directory"
[[ -z "$BINARY" || -f "$BINARY" ]] || die "--binary $BINARY not found"
DEST_ROOT="${DEST_ROOT%/}"
R="$DEST_ROOT"

# ---------------------------------------------------------------------------------------------
# Facts about the host
# ---------------------------------------------------------------------------------------------
# Every decision below is taken on these, so --facts can stand in for any Pi and OS image.
F_machine="" F_long_bit=unknown F_dpkg=unknown F_glibc="" F_loaders=unknown
F_installed=no F_config=no F_systemd=yes F_time_wait_sync=no F_uid=0

set_fact() {
    case "$1" in
        machine|long_bit|dpkg|glibc|loaders|installed|config|systemd|time_wait_sync|uid)
            printf -v "F_$1" '%s' "$2" ;;
        *) die "unknown fact '$1' (see --help)" ;;
    esac
}

# The host side of detection: key=value lines; $R is the root prefix the install goes under.
# shellcheck disable=SC2016 # expands on the host
DETECT='
echo "machine=$(uname -m)"
echo "long_bit=$(getconf LONG_BIT 2>/dev/null || echo unknown)"
echo "dpkg=$(dpkg --print-architecture 2>/dev/null || echo unknown)"
echo "glibc=$( (getconf GNU_LIBC_VERSION 2>/dev/null || echo none) | sed "s/^glibc //")"
l=""
for x in aarch64:/lib/ld-linux-aarch64.so.1 armhf:/lib/ld-linux-armhf.so.3 armel:/lib/ld-linux.so.3 x86_64:/lib64/ld-linux-x86-64.so.2; do
    [ -e "${x#*:}" ] && l="$l,${x%%:*}"
done
l=${l#,}
echo "loaders=${l:-none}"
if [ -e "$R/usr/local/bin/osprey-agent" ]; then echo installed=yes; else echo installed=no; fi
if [ -e "$R/etc/osprey-agent/agent.toml" ]; then echo config=yes; else echo config=no; fi
if command -v systemctl >/dev/null && command -v systemd-sysusers >/dev/null &&
    { [ -n "$R" ] || [ -d /run/systemd/system ]; }; then echo systemd=yes; else echo systemd=no; fi
t=no
for d in /lib/systemd/system /usr/lib/systemd/system; do
    [ -e "$R$d/systemd-time-wait-sync.service" ] && t=yes
done
echo "time_wait_sync=$t"
echo "uid=$(id -u)"
'

if [[ -n "$FACTS" ]]; then
    if [[ "$FACTS" != *=* ]]; then
        read -r m g _ <<<"$FACTS"
        FACTS="machine=$m glibc=${g:-}"
    fi
    for kv in $FACTS; do
        [[ "$kv" == *=* ]] || die "--facts: '$kv' is not KEY=VALUE"
        set_fact "${kv%%=*}" "${kv#*=}"
    done
else
    facts="$("${SSH[@]}" "$HOST" "R='$R' sh -s" <<<"$DETECT")" ||
        die "cannot reach $HOST over SSH (try: ssh $HOST true; set the key with -i, the port with -p)"
    while IFS= read -r line; do
        if [[ "$line" == *=* ]]; then set_fact "${line%%=*}" "${line#*=}"; fi
    done <<<"$facts"
fi
[[ -n "$F_machine" ]] || die "could not read the architecture of $HOST"
[[ -n "$F_glibc" ]] || F_glibc=unknown
log "host $HOST: $F_machine, glibc $F_glibc, LONG_BIT $F_long_bit, dpkg $F_dpkg, loaders $F_loaders"

has_loader() { [[ "$F_loaders" == unknown || ",$F_loaders," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------

# The userland's ABI, as the ELF machine name that elf_arch prints (aarch64, armv7l for
# 32-bit hard-float ARM, x86_64), or armel / unknown; sets USERLAND and USERLAND_WHY.
decide_userland() {
    local m="$F_machine"
    case "$F_dpkg" in
        arm64) USERLAND=aarch64 USERLAND_WHY="dpkg architecture arm64" ;;
        armhf) USERLAND=armv7l USERLAND_WHY="dpkg architecture armhf" ;;
        armel) USERLAND=armel USERLAND_WHY="dpkg architecture armel" ;;
        amd64) USERLAND=x86_64 USERLAND_WHY="dpkg architecture amd64" ;;
        *)
            case "$F_long_bit:$m" in
                64:aarch64|64:arm64) USERLAND=aarch64 USERLAND_WHY="LONG_BIT 64 on $m" ;;
                64:x86_64) USERLAND=x86_64 USERLAND_WHY="LONG_BIT 64 on $m" ;;
                32:aarch64|32:arm64|32:armv8l|32:armv7l|32:armv6l)
                    if has_loader armhf; then
                        USERLAND=armv7l USERLAND_WHY="LONG_BIT 32 on $m, armhf loader"
                    else
                        USERLAND=armel USERLAND_WHY="LONG_BIT 32 on $m, no armhf loader"
                    fi ;;
                unknown:*)
                    if [[ "$F_loaders" == unknown ]]; then
                        # Nothing but the kernel to go on: the old behaviour.
                        case "$m" in
                            aarch64|arm64) USERLAND=aarch64 ;;
                            armv8l|armv7l|armv6l) USERLAND=armv7l ;;
                            *) USERLAND="$m" ;;
                        esac
                        USERLAND_WHY="only the kernel machine known"
                    elif has_loader aarch64 && [[ "$m" == aarch64 || "$m" == arm64 ]]; then
                        USERLAND=aarch64 USERLAND_WHY="aarch64 loader"
                    elif has_loader armhf; then
                        USERLAND=armv7l USERLAND_WHY="armhf loader"
                    elif has_loader x86_64; then
                        USERLAND=x86_64 USERLAND_WHY="x86-64 loader"
                    else
                        USERLAND=unknown USERLAND_WHY="no known loader ($F_loaders) on $m"
                    fi ;;
                *) USERLAND="$m" USERLAND_WHY="LONG_BIT $F_long_bit on $m" ;;
            esac ;;
    esac
}

# version_ge A B: A >= B for dotted versions.
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$2" ]]; }
glibc_ge() { [[ "$F_glibc" != none && "$F_glibc" != unknown ]] && version_ge "$F_glibc" "$1"; }

# The newest GLIBC_2.x symbol version a binary needs ("" when it needs none, e.g. static).
glibc_floor() { grep -ao 'GLIBC_2\.[0-9]*' "$1" 2>/dev/null | sed 's/GLIBC_//' | sort -u -V | tail -1 || true; }

# The loader a binary asks for (aarch64 armhf armel x86_64), "" for a static one.
elf_loader() {
    case "$(grep -ao '/lib[0-9]*/ld-linux[-a-z0-9_]*\.so\.[0-9]' "$1" 2>/dev/null | head -1 || true)" in
        "") echo "" ;;
        */ld-linux-aarch64.so.1) echo aarch64 ;;
        */ld-linux-armhf.so.3) echo armhf ;;
        */ld-linux.so.3) echo armel ;;
        */ld-linux-x86-64.so.2) echo x86_64 ;;
        *) echo unknown ;;
    esac
}

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

# The glibc a -gnu artifact needs (2.34, Debian 12's cross-gcc, when it is not built yet).
gnu_floor() { local f; f="$(glibc_floor "$(artifact "$1")")"; echo "${f:-2.34}"; }

# The -gnu build when the userland has its loader (LOADER) and at least the glibc it needs, else
# the static musl build; sets TRIPLE and WHY.
pick_gnu_or_musl() {
    local loader=$1 gnu=$2 musl=$3 floor
    floor="$(gnu_floor "$gnu")"
    if ! has_loader "$loader"; then
        TRIPLE=$musl WHY="no $loader glibc loader: static musl build"
    elif glibc_ge "$floor"; then
        TRIPLE=$gnu WHY="$USERLAND userland on $F_machine, glibc $F_glibc >= $floor that the -gnu build needs"
    else
        TRIPLE=$musl WHY="glibc $F_glibc is older than the $floor that the -gnu build needs: static musl build"
    fi
}

# Pick the cross/build.sh target for the userland; sets TRIPLE and WHY, or dies saying why none.
pick_target() {
    case "$USERLAND" in
        aarch64) pick_gnu_or_musl aarch64 aarch64-unknown-linux-gnu aarch64-unknown-linux-musl ;;
        armv7l)
            [[ "$F_machine" != armv6l ]] ||
                die "ARMv6 CPU (Pi Zero / Pi 1) under an armhf userland: the armv7 build needs an ARMv7 CPU; there is no ARMv6 build (pass --binary with your own)"
            pick_gnu_or_musl armhf armv7-unknown-linux-gnueabihf armv7-unknown-linux-musleabihf
            ;;
        armel) die "ARMv6/armel userland ($USERLAND_WHY, e.g. a Pi Zero / Pi 1 image): no Osprey build runs there; pass --binary with your own" ;;
        *) die "no Osprey gateway build for a $USERLAND userland on $F_machine (aarch64 and 32-bit armhf are built by cross/build.sh); pass --binary FILE built for it" ;;
    esac
}

# Checks a given binary against the userland: ELF machine, loader, glibc.
check_binary() {
    local got floor loader
    got="$(elf_arch "$BINARY")"
    [[ "$got" == "$USERLAND" ]] ||
        die "--binary $BINARY is built for $got but the userland of $HOST is $USERLAND ($USERLAND_WHY; kernel $F_machine)"
    loader="$(elf_loader "$BINARY")"
    [[ -z "$loader" ]] || has_loader "$loader" ||
        die "--binary $BINARY needs the $loader dynamic loader, which $HOST lacks (it has: $F_loaders)"
    floor="$(glibc_floor "$BINARY")"
    [[ -z "$floor" ]] || glibc_ge "$floor" ||
        die "--binary $BINARY needs glibc >= $floor but $HOST has $F_glibc; use a static (musl) build"
    log "binary $BINARY (given; $got${loader:+, $loader loader}${floor:+, needs glibc >= $floor})"
}

[[ "$F_systemd" == yes ]] ||
    die "$HOST has no systemd (systemctl and systemd-sysusers, running as PID 1): this installer writes a systemd unit"
if [[ "${F_uid:-0}" == 0 ]]; then SUDO=""; else SUDO="sudo -n"; fi

if [[ $MODE == install ]]; then
    decide_userland
    log "userland $USERLAND ($USERLAND_WHY; kernel $F_machine)"
    if [[ -n "$BINARY" ]]; then
        check_binary
        BUILD="given"
    else
        pick_target
        BINARY="$(artifact "$TRIPLE")"
        BUILD="$TRIPLE ($WHY)"
        log "artifact $TRIPLE ($WHY): $BINARY"
        if [[ ! -f "$BINARY" ]]; then
            ((DRY_RUN)) || die "$BINARY is not built: run bash cross/build.sh --target $TRIPLE"
            log "  (not built yet: bash cross/build.sh --target $TRIPLE)"
        fi
    fi
    # The config: the one given; else, on a first install, the example; else the device's own.
    if [[ -n "$CONFIG" ]]; then
        CONFIG_PLAN="install   $CONFIG -> $R/etc/osprey-agent/agent.toml (root:osprey 0640; the previous one kept until the upgrade succeeds)"
    elif [[ "$F_config" == yes ]]; then
        CONFIG_PLAN="keep      $R/etc/osprey-agent/agent.toml (the device's; pass --config to replace it)"
    else
        CONFIG="$EXAMPLE_CONFIG"
        CONFIG_PLAN="install   $CONFIG -> $R/etc/osprey-agent/agent.toml (root:osprey 0640; no config on the device yet: the example)"
    fi
    cert_files=()
    if [[ -n "$CERTS" ]]; then
        for f in "$CERTS"/*; do [[ -f "$f" ]] && cert_files+=("$f"); done
    fi
    WAIT_SYNC=0
    [[ $TIME_WAIT_SYNC == 1 && "$F_time_wait_sync" == yes ]] && WAIT_SYNC=1
fi

# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
if [[ $MODE == uninstall ]]; then
    echo "plan for $HOST${R:+ (under $R)}${SUDO:+ (as root through sudo -n)}: uninstall"
    if [[ -n "$R" ]]; then
        echo "  disable   systemctl --root=$R disable osprey-agent.service"
    else
        echo "  disable   systemctl disable --now osprey-agent.service; systemctl daemon-reload"
    fi
    echo "  remove    $R/usr/local/bin/osprey-agent $R/usr/local/bin/osprey-agent.previous $R/etc/systemd/system/osprey-agent.service"
    if ((PURGE)); then
        echo "  remove    $R/etc/osprey-agent (config, certificates) $R/var/lib/osprey-agent (journal) $R/etc/sysusers.d/osprey-agent.conf"
    else
        echo "  keep      $R/etc/osprey-agent (config, certificates) $R/var/lib/osprey-agent (journal); --purge removes them"
    fi
    echo "  keep      the osprey user and groups (files may still be owned by them)"
else
    if [[ "$F_installed" == yes ]]; then KIND=upgrade; else KIND="first install"; fi
    echo "plan for $HOST${R:+ (under $R)}${SUDO:+ (as root through sudo -n)}: $KIND"
    echo "  userland  $USERLAND ($USERLAND_WHY; kernel $F_machine)"
    echo "  build     $BUILD"
    echo "  sysusers  deploy/pi/osprey-agent.sysusers -> $R/etc/sysusers.d/osprey-agent.conf; systemd-sysusers${R:+ --root=$R} (user osprey, groups i2c gpio)"
    [[ "$F_installed" != yes ]] ||
        echo "  keep      $R/usr/local/bin/osprey-agent -> $R/usr/local/bin/osprey-agent.previous (for rollback)"
    echo "  install   $BINARY -> $R/usr/local/bin/osprey-agent (0755)"
    echo "  $CONFIG_PLAN"
    if ((${#cert_files[@]})); then
        for f in "${cert_files[@]}"; do
            echo "  install   $f -> $R/etc/osprey-agent/certs/$(basename "$f") (root:osprey 0640)"
        done
    elif [[ "$F_config" == yes ]]; then
        echo "  keep      $R/etc/osprey-agent/certs (the device's; pass --certs to add or replace)"
    fi
    echo "  install   deploy/pi/osprey-agent.service -> $R/etc/systemd/system/osprey-agent.service (0644)"
    echo "  check     $R/usr/local/bin/osprey-agent check $R/etc/osprey-agent/agent.toml (fails: roll back)"
    if ((WAIT_SYNC)); then
        echo "  enable    systemd-time-wait-sync.service (the agent starts once the clock is synced)"
    elif [[ $TIME_WAIT_SYNC == 1 ]]; then
        echo "  skip      systemd-time-wait-sync.service (not on $HOST)"
    fi
    if [[ -n "$R" ]]; then
        echo "  enable    systemctl --root=$R enable osprey-agent.service (not started)"
    elif ((START)); then
        echo "  enable    systemctl daemon-reload; systemctl enable osprey-agent.service; systemctl restart osprey-agent.service"
        echo "  verify    active within ${START_TIMEOUT}s and still active 3s later (else roll back)"
    else
        echo "  enable    systemctl daemon-reload; systemctl enable osprey-agent.service (not started: --no-start)"
    fi
fi
if ((DRY_RUN)); then log "dry run: nothing changed"; exit 0; fi

# ---------------------------------------------------------------------------------------------
# Stage, copy (one tar stream) and run the host-side steps
# ---------------------------------------------------------------------------------------------
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT

# Runs on the host as root with POSIX sh: $1 = root prefix ("" for /), $2 = 1 to purge.
cat >"$STAGE/host-uninstall.sh" <<'EOF'
set -eu
R=$1; purge=$2
unit=$R/etc/systemd/system/osprey-agent.service
if [ -e "$unit" ]; then
    if [ -n "$R" ]; then
        systemctl --root="$R" disable osprey-agent.service
    else
        systemctl disable --now osprey-agent.service
    fi
fi
rm -f "$R/usr/local/bin/osprey-agent" "$R/usr/local/bin/osprey-agent.previous" "$unit" \
    "$R/etc/systemd/system/multi-user.target.wants/osprey-agent.service"
[ -n "$R" ] || systemctl daemon-reload
if [ "$purge" = 1 ]; then
    rm -rf "$R/etc/osprey-agent" "$R/var/lib/osprey-agent" "$R/etc/sysusers.d/osprey-agent.conf"
    echo "host: osprey-agent removed with its config, certificates and journal" >&2
else
    echo "host: osprey-agent removed; $R/etc/osprey-agent and $R/var/lib/osprey-agent kept" >&2
fi
EOF

# Runs on the host as root with POSIX sh: $1 = root prefix ("" for /), $2 = 1 to (re)start,
# $3 = seconds to wait for it, $4 = 1 to enable systemd-time-wait-sync. Exits 3 after a rollback.
cat >"$STAGE/host-install.sh" <<'EOF'
set -eu
src=$(dirname "$0"); R=$1; start=$2; timeout=$3; wait_sync=$4
bin=$R/usr/local/bin/osprey-agent
etc=$R/etc/osprey-agent
unit=$R/etc/systemd/system/osprey-agent.service
say() { echo "host: $*" >&2; }

install -d -m 0755 "$R/etc/sysusers.d" "$R/usr/local/bin" "$R/etc/systemd/system"
install -m 0644 "$src/osprey-agent.sysusers" "$R/etc/sysusers.d/osprey-agent.conf"
if [ -n "$R" ]; then systemd-sysusers --root="$R"; else systemd-sysusers /etc/sysusers.d/osprey-agent.conf; fi
gid=$(awk -F: '$1 == "osprey" { print $3 }' "$R/etc/group")
[ -n "$gid" ] || { say "systemd-sysusers did not create the group osprey"; exit 1; }

# What this run replaces, so that a failure puts it back.
old=$src/old
mkdir "$old"
[ ! -e "$bin" ] || cp -p "$bin" "$old/osprey-agent"
[ ! -e "$unit" ] || cp -p "$unit" "$old/osprey-agent.service"
[ ! -d "$etc" ] || cp -a "$etc" "$old/etc"
was_active=0
if [ -z "$R" ] && systemctl is-active --quiet osprey-agent.service; then was_active=1; fi

# put_back FILE SAVED: FILE as it was (SAVED), or gone if there was none.
put_back() {
    if [ -e "$2" ]; then cp -p "$2" "$1.rollback" && mv -f "$1.rollback" "$1"; else rm -f "$1"; fi
}
rollback() {
    say "$1: rolling back"
    if [ -z "$R" ]; then
        # The new agent may be flapping; a unit that was not there before is disabled while
        # systemd still has its file.
        systemctl stop osprey-agent.service || true
        [ -e "$old/osprey-agent.service" ] || systemctl disable osprey-agent.service || true
    elif [ ! -e "$old/osprey-agent.service" ]; then
        rm -f "$R/etc/systemd/system/multi-user.target.wants/osprey-agent.service"
    fi
    put_back "$bin" "$old/osprey-agent"
    put_back "$unit" "$old/osprey-agent.service"
    rm -rf "$etc"
    [ ! -d "$old/etc" ] || cp -a "$old/etc" "$etc"
    if [ -z "$R" ]; then
        systemctl daemon-reload
        if [ "$was_active" = 1 ]; then
            systemctl restart osprey-agent.service || say "the previous agent does not start either"
        fi
    fi
    if [ -e "$old/osprey-agent" ]; then
        say "rolled back: the previous binary, config, certificates and unit are back"
        exit 3
    fi
    say "first install undone: binary, config, certificates and unit removed (the osprey user stays)"
    exit 1
}

# Replace the binary by rename, so that a running agent keeps its old inode.
install -m 0755 "$src/osprey-agent" "$bin.new"
mv -f "$bin.new" "$bin"
install -d -m 0750 -o 0 -g "$gid" "$etc" "$etc/certs"
if [ -f "$src/agent.toml" ]; then
    install -m 0640 -o 0 -g "$gid" "$src/agent.toml" "$etc/agent.toml"
else
    say "keeping $etc/agent.toml"
fi
for f in "$src"/certs/*; do
    [ ! -f "$f" ] || install -m 0640 -o 0 -g "$gid" "$f" "$etc/certs/"
done
install -m 0644 "$src/osprey-agent.service" "$unit"
"$bin" check "$etc/agent.toml" >&2 || rollback "the new osprey-agent fails \`check $etc/agent.toml\`"

if [ -n "$R" ]; then
    systemctl --root="$R" enable osprey-agent.service
    [ "$wait_sync" != 1 ] || systemctl --root="$R" enable systemd-time-wait-sync.service
else
    systemctl daemon-reload
    # Readings are timestamped: start the agent only once the clock is synced (see the unit).
    [ "$wait_sync" != 1 ] || systemctl enable systemd-time-wait-sync.service
    systemctl enable osprey-agent.service
    if [ "$start" = 1 ]; then
        systemctl restart --no-block osprey-agent.service || rollback "osprey-agent.service does not start"
        n=0
        until systemctl is-active --quiet osprey-agent.service; do
            n=$((n + 1))
            if [ "$n" -gt "$timeout" ]; then
                why="osprey-agent.service not active after ${timeout}s"
                # An offline gateway with systemd-time-wait-sync never reaches time-sync.target.
                systemctl is-active --quiet time-sync.target ||
                    why="$why (time-sync.target not reached: the clock has not synced; see --no-time-wait-sync)"
                rollback "$why"
            fi
            sleep 1
        done
        # A crash right after the start shows as a restart (activating again) a moment later.
        sleep 3
        systemctl is-active --quiet osprey-agent.service ||
            rollback "osprey-agent.service stopped right after starting"
        systemctl --no-pager --lines=5 status osprey-agent.service >&2 || true
    fi
fi
if [ -e "$old/osprey-agent" ]; then
    cp -p "$old/osprey-agent" "$bin.previous.new" && mv -f "$bin.previous.new" "$bin.previous"
    say "previous binary kept as $bin.previous"
fi
say "osprey-agent installed${R:+ under $R}"
EOF

if [[ $MODE == uninstall ]]; then
    args="'$R' $PURGE"
    script=host-uninstall.sh
else
    install -m 0755 "$BINARY" "$STAGE/osprey-agent"
    [[ -z "$CONFIG" ]] || install -m 0644 "$CONFIG" "$STAGE/agent.toml"
    install -m 0644 "$HERE/osprey-agent.service" "$STAGE/osprey-agent.service"
    install -m 0644 "$HERE/osprey-agent.sysusers" "$STAGE/osprey-agent.sysusers"
    mkdir "$STAGE/certs"
    for f in "${cert_files[@]}"; do install -m 0644 "$f" "$STAGE/certs/"; done
    start=$START
    [[ -z "$R" ]] || start=0
    args="'$R' $start $START_TIMEOUT $WAIT_SYNC"
    script=host-install.sh
fi
# shellcheck disable=SC2016 # $d expands on the host
remote='d=$(mktemp -d) && trap "rm -rf \"$d\"" EXIT && tar -C "$d" -xzf - && '"$SUDO"' sh "$d/'"$script"'" '"$args"
log "copying and running the $MODE on $HOST"
status=0
tar -C "$STAGE" -czf - . | "${SSH[@]}" "$HOST" "$remote" || status=$?
case "$status" in
    0) ;;
    3) log "error: the upgrade failed and was rolled back: the previous osprey-agent, config and unit are back (and running if they were)"; exit 3 ;;
    *) die "the $MODE on $HOST failed (see the messages above; with a non-root user, sudo must work without a password)" ;;
esac
if [[ $MODE == uninstall ]]; then
    log "done: osprey-agent removed from $HOST${R:+ (under $R)}"
else
    log "done${R:+ (under $R on $HOST)}; logs: ssh $HOST journalctl -u osprey-agent -f"
fi
