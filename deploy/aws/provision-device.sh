#!/usr/bin/env bash
# Provision one device in AWS IoT Core and write its agent config.
#
#   bash deploy/aws/provision-device.sh [options] THING_NAME
#
#   --policy NAME     IoT policy to attach to the certificate (the DevicePolicyName output of
#                     deploy/aws/template.yaml); or
#   --stack NAME      read the policy name from that CloudFormation stack's outputs
#   --csr FILE        make the certificate from this CSR (made on the device by `osprey-agent
#                     keygen`): the key never leaves the device and none is written here
#   --device-key PATH with --csr: the key's path on the device, written into agent.toml
#                     (default /var/lib/osprey-agent/certs/private.pem.key, keygen's default)
#   --thing-group NAME  add the thing to this thing group, created if missing (for targeting,
#                     e.g. `osprey rules set --thing-group NAME`)
#   --out DIR         where to write agent.toml and certs/ (default deploy/out/THING_NAME)
#   --endpoint HOST   IoT data endpoint (default: aws iot describe-endpoint --endpoint-type iot:Data-ATS)
#   --ca-file FILE    use this CA file instead of downloading Amazon Root CA 1
#   --region REGION   AWS region (default: the CLI's configuration)
#   --basic-ingest RULE  publish through AWS IoT Basic Ingest to this rule (the TelemetryRuleName
#                     output): no IoT Core messaging charge
#   --dry-run         print the AWS calls and write only agent.toml (no AWS call, no certificate)
#
# It creates the thing (or reuses it), creates an active certificate: from the CSR with --csr
# (DIR/certs/device.pem.crt only), otherwise with a key made by AWS (DIR/certs/device.pem.crt
# and DIR/certs/private.pem.key, mode 0600, never printed); attaches the policy to the
# certificate and the certificate to the thing, adds the thing to --thing-group, downloads
# Amazon Root CA 1 to DIR/certs/AmazonRootCA1.pem, and writes DIR/agent.toml: device_id =
# THING_NAME, the IoT data endpoint on port 8883 with mutual TLS, certificate paths relative to
# the config (so the directory can move as a whole: deploy/pi/install.sh --config
# DIR/agent.toml --certs DIR/certs).
#
# When a step after the certificate fails, it undoes what this run did: detaches the thing
# principal and the policy, sets the certificate INACTIVE and deletes it, removes the thing from
# the group (or deletes the thing if this run created it) and the files it wrote, so the same
# command can simply be run again. A thing group it created is kept.
# Needs the AWS CLI with credentials allowed to call iot:CreateThing, iot:DescribeThing,
# iot:CreateKeysAndCertificate or iot:CreateCertificateFromCsr, iot:AttachPolicy,
# iot:AttachThingPrincipal, iot:DescribeEndpoint (for the cleanup: iot:DetachPolicy,
# iot:DetachThingPrincipal, iot:UpdateCertificate, iot:DeleteCertificate, iot:DeleteThing; with
# --thing-group: iot:DescribeThingGroup, iot:CreateThingGroup, iot:AddThingToThingGroup,
# iot:RemoveThingFromThingGroup; with --stack: cloudformation:DescribeStacks).
# AWS_ENDPOINT_URL is honoured (tests use moto).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
AMAZON_ROOT_CA_URL=https://www.amazontrust.com/repository/AmazonRootCA1.pem

log() { printf 'provision-device.sh: %s\n' "$*" >&2; }
die() { printf 'provision-device.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

POLICY=""
STACK=""
OUT=""
ENDPOINT=""
CA_FILE=""
BASIC_INGEST=""
CSR=""
DEVICE_KEY=/var/lib/osprey-agent/certs/private.pem.key
GROUP=""
DRY_RUN=0
THING=""
AWS=(aws)

while (($#)); do
    case "$1" in
        --policy) [[ $# -ge 2 ]] || usage; POLICY="$2"; shift ;;
        --stack) [[ $# -ge 2 ]] || usage; STACK="$2"; shift ;;
        --out) [[ $# -ge 2 ]] || usage; OUT="$2"; shift ;;
        --endpoint) [[ $# -ge 2 ]] || usage; ENDPOINT="$2"; shift ;;
        --ca-file) [[ $# -ge 2 ]] || usage; CA_FILE="$2"; shift ;;
        --region) [[ $# -ge 2 ]] || usage; AWS+=(--region "$2"); shift ;;
        --basic-ingest) [[ $# -ge 2 ]] || usage; BASIC_INGEST="$2"; shift ;;
        --csr) [[ $# -ge 2 ]] || usage; CSR="$2"; shift ;;
        --device-key) [[ $# -ge 2 ]] || usage; DEVICE_KEY="$2"; shift ;;
        --thing-group) [[ $# -ge 2 ]] || usage; GROUP="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage ;;
        -*) log "unknown option: $1"; usage ;;
        *) [[ -z "$THING" ]] || die "one thing at a time (got '$THING' and '$1')"; THING="$1" ;;
    esac
    shift
done
[[ -n "$THING" ]] || { log "missing THING_NAME"; usage; }
# The agent's device id rules (osprey_protocol::valid_device_id), which are also valid thing names.
[[ "$THING" =~ ^[A-Za-z0-9_:-]{1,128}$ ]] ||
    die "invalid thing name '$THING': use 1 to 128 characters of A-Z a-z 0-9 _ - : (it becomes the agent's device_id)"
[[ -n "$POLICY" || -n "$STACK" ]] || die "give --policy NAME or --stack NAME (the stack of deploy/aws/template.yaml)"
[[ -z "$CA_FILE" || -f "$CA_FILE" ]] || die "--ca-file $CA_FILE not found"
[[ -z "$BASIC_INGEST" || "$BASIC_INGEST" =~ ^[A-Za-z0-9_]{1,128}$ ]] ||
    die "invalid --basic-ingest rule name '$BASIC_INGEST': the template's TelemetryRuleName output (letters, digits, _)"
if [[ -n "$CSR" ]]; then
    [[ -f "$CSR" ]] || die "--csr $CSR not found (make it on the device: osprey-agent keygen --device-id $THING)"
    grep -q -- '-----BEGIN CERTIFICATE REQUEST-----' "$CSR" ||
        die "$CSR is not a PEM certificate signing request (osprey-agent keygen writes one)"
    if command -v openssl >/dev/null && ! openssl req -in "$CSR" -noout -verify >/dev/null 2>&1; then
        die "$CSR does not verify (openssl req -verify): damaged or not a CSR"
    fi
    [[ "$DEVICE_KEY" == /* && "$DEVICE_KEY" != *'"'* ]] ||
        die "--device-key $DEVICE_KEY: give the key's absolute path on the device"
fi
[[ -z "$GROUP" || "$GROUP" =~ ^[A-Za-z0-9_:-]{1,128}$ ]] ||
    die "invalid thing group name '$GROUP': use 1 to 128 characters of A-Z a-z 0-9 _ - :"
OUT="${OUT:-$ROOT/deploy/out/$THING}"
CERTS="$OUT/certs"
for f in private.pem.key device.pem.crt; do
    [[ ! -e "$CERTS/$f" ]] ||
        die "$CERTS/$f exists: this directory already holds a provisioned device; pick another --out (or remove $OUT if that device is gone)"
done
# The AWS CLI v1 reads AWS_DEFAULT_REGION only.
if [[ -z "${AWS_DEFAULT_REGION:-}" && -n "${AWS_REGION:-}" ]]; then export AWS_DEFAULT_REGION="$AWS_REGION"; fi

# run CMD...: print it; run it unless this is a dry run.
run() {
    { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
    ((DRY_RUN)) || "$@"
}

if ((!DRY_RUN)); then
    command -v "${AWS[0]}" >/dev/null || die "the AWS CLI (aws) is not installed: pip install awscli, or see https://aws.amazon.com/cli/"
fi

if [[ -z "$POLICY" ]]; then
    if ((DRY_RUN)); then
        POLICY="<DevicePolicyName of stack $STACK>"
        run "${AWS[@]}" cloudformation describe-stacks --stack-name "$STACK" \
            --query "Stacks[0].Outputs[?OutputKey=='DevicePolicyName'].OutputValue" --output text
    else
        POLICY="$(run "${AWS[@]}" cloudformation describe-stacks --stack-name "$STACK" \
            --query "Stacks[0].Outputs[?OutputKey=='DevicePolicyName'].OutputValue" --output text)"
        [[ -n "$POLICY" && "$POLICY" != None ]] || die "stack $STACK has no DevicePolicyName output: is it deploy/aws/template.yaml?"
    fi
fi

if [[ -z "$ENDPOINT" ]]; then
    if ((DRY_RUN)); then
        ENDPOINT="DRY-RUN-ats.iot.amazonaws.com"
        run "${AWS[@]}" iot describe-endpoint --endpoint-type iot:Data-ATS --query endpointAddress --output text
    else
        ENDPOINT="$(run "${AWS[@]}" iot describe-endpoint --endpoint-type iot:Data-ATS --query endpointAddress --output text)"
    fi
fi
[[ -n "$ENDPOINT" ]] || die "no IoT data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS printed nothing)"

mkdir -p "$OUT"
if ((!DRY_RUN)); then
    mkdir -p "$CERTS"
    chmod 0700 "$CERTS"
fi

# What this run made, for cleanup() to undo when a later step fails.
CREATED_THING=0
CERT_ARN=""
CERT_ID=""
POLICY_ATTACHED=0
PRINCIPAL_ATTACHED=0
GROUP_ADDED=0
WROTE_FILES=()

# cleanup: undo this run's AWS changes and files, each step on its own (one failing does not
# stop the others), so that the same command can be run again.
cleanup() {
    log "a step failed after the certificate was made: undoing this run's changes"
    if ((GROUP_ADDED && !CREATED_THING)); then
        "${AWS[@]}" iot remove-thing-from-thing-group --thing-group-name "$GROUP" --thing-name "$THING" ||
            log "could not remove $THING from thing group $GROUP"
    fi
    if ((PRINCIPAL_ATTACHED)); then
        "${AWS[@]}" iot detach-thing-principal --thing-name "$THING" --principal "$CERT_ARN" ||
            log "could not detach the certificate from $THING"
    fi
    if ((POLICY_ATTACHED)); then
        "${AWS[@]}" iot detach-policy --policy-name "$POLICY" --target "$CERT_ARN" ||
            log "could not detach policy $POLICY"
    fi
    if [[ -n "$CERT_ID" ]]; then
        if "${AWS[@]}" iot update-certificate --certificate-id "$CERT_ID" --new-status INACTIVE &&
            "${AWS[@]}" iot delete-certificate --certificate-id "$CERT_ID"; then
            log "deleted certificate $CERT_ID"
        else
            log "could not deactivate and delete certificate $CERT_ID: do it by hand (aws iot update-certificate --new-status INACTIVE, aws iot delete-certificate)"
        fi
    fi
    if ((CREATED_THING)); then
        # AWS detaches principals asynchronously; deleting the thing may need a moment.
        local try
        for try in 1 2 3; do
            if "${AWS[@]}" iot delete-thing --thing-name "$THING"; then break; fi
            ((try < 3)) && sleep 2
        done || log "could not delete thing $THING"
    fi
    local f
    for f in "${WROTE_FILES[@]}"; do rm -f "$f"; done
    log "cleanup done; fix the cause above and run the same command again"
}
on_exit() {
    local status=$?
    if ((status != 0 && !DRY_RUN)) && [[ -n "$CERT_ID" ]]; then
        set +e
        cleanup
    fi
    exit "$status"
}
trap on_exit EXIT

if ((DRY_RUN)); then
    run "${AWS[@]}" iot describe-thing --thing-name "$THING" --query thingName --output text
elif ! "${AWS[@]}" iot describe-thing --thing-name "$THING" --query thingName --output text >/dev/null 2>&1; then
    CREATED_THING=1
fi
run "${AWS[@]}" iot create-thing --thing-name "$THING" --output text >/dev/null
umask 077
if [[ -n "$CSR" ]]; then
    CERT_CALL=("${AWS[@]}" iot create-certificate-from-csr --set-as-active
        --certificate-signing-request "file://$CSR")
else
    CERT_CALL=("${AWS[@]}" iot create-keys-and-certificate --set-as-active
        --private-key-outfile "$CERTS/private.pem.key")
fi
CERT_CALL+=(--certificate-pem-outfile "$CERTS/device.pem.crt" --query '[certificateArn,certificateId]' --output text)
if ((DRY_RUN)); then
    run "${CERT_CALL[@]}"
    CERT_ARN="<certificateArn>"
else
    read -r CERT_ARN CERT_ID < <(run "${CERT_CALL[@]}") || true
    WROTE_FILES+=("$CERTS/device.pem.crt")
    [[ -n "$CSR" ]] || WROTE_FILES+=("$CERTS/private.pem.key")
    [[ "$CERT_ARN" == arn:* && -n "$CERT_ID" ]] || die "the certificate call returned no certificate ARN and id"
    log "certificate $CERT_ARN"
fi
run "${AWS[@]}" iot attach-policy --policy-name "$POLICY" --target "$CERT_ARN"
POLICY_ATTACHED=1
run "${AWS[@]}" iot attach-thing-principal --thing-name "$THING" --principal "$CERT_ARN"
PRINCIPAL_ATTACHED=1
if [[ -n "$GROUP" ]]; then
    if ((DRY_RUN)); then
        run "${AWS[@]}" iot describe-thing-group --thing-group-name "$GROUP" --query thingGroupArn --output text
    elif ! "${AWS[@]}" iot describe-thing-group --thing-group-name "$GROUP" --query thingGroupArn --output text >/dev/null 2>&1; then
        log "thing group $GROUP does not exist: creating it"
        run "${AWS[@]}" iot create-thing-group --thing-group-name "$GROUP" --output text >/dev/null
    fi
    run "${AWS[@]}" iot add-thing-to-thing-group --thing-group-name "$GROUP" --thing-name "$THING"
    GROUP_ADDED=1
fi
WROTE_FILES+=("$CERTS/AmazonRootCA1.pem")
if [[ -n "$CA_FILE" ]]; then
    run cp "$CA_FILE" "$CERTS/AmazonRootCA1.pem"
else
    run curl -fsSL --retry 3 -o "$CERTS/AmazonRootCA1.pem" "$AMAZON_ROOT_CA_URL"
fi

KEY_LINE='key = "certs/private.pem.key"'
if [[ -n "$CSR" ]]; then
    # The key stays where keygen made it on the device.
    KEY_LINE="key = \"$DEVICE_KEY\""
fi
INGEST_LINE=""
if [[ -n "$BASIC_INGEST" ]]; then
    INGEST_LINE="basic_ingest_rule = \"$BASIC_INGEST\""
fi

umask 022
cat >"$OUT/agent.toml" <<EOF
# osprey-agent config for the AWS IoT thing $THING, written by deploy/aws/provision-device.sh.
# Check:    osprey-agent check $OUT/agent.toml
# Install:  bash deploy/pi/install.sh --config $OUT/agent.toml --certs $CERTS HOST
# Format and every default: agent/examples/simulator.toml. Relative paths are relative to this
# file, so keep certs/ next to it (deploy/pi/install.sh puts both in /etc/osprey-agent).

device_id = "$THING"

[sampling]
interval_ms = 1000

[simulator]
scenario = "steady"

# Batches: the agent's defaults send a batch after a minute or at 4800 bytes (one IoT Core 5 KB
# unit), whichever comes first: about 4 bytes a reading, one message a minute at 10 series x 1 Hz
# (see osprey plan). The cloud sees readings up to a minute later; alerts leave at once.
# [batch]
# max_age_ms = 60000

[journal]
path = "/var/lib/osprey-agent/journal"

[mqtt]
host = "$ENDPOINT"
port = 8883
$INGEST_LINE

[mqtt.tls]
ca = "certs/AmazonRootCA1.pem"
cert = "certs/device.pem.crt"
$KEY_LINE

[[rules]]
id = "bearing-hot"
sensor = "bearing"
metric = "temperature"
when = "above"
threshold = 80.0
clear = 75.0
severity = "critical"
EOF
log "wrote $OUT/agent.toml"
if ((DRY_RUN)); then
    log "dry run: no AWS call was made and no certificate exists; $OUT/agent.toml names the files a real run writes"
else
    [[ -z "$CSR" ]] || log "no key here: agent.toml points at $DEVICE_KEY, where osprey-agent keygen left it on the device"
    log "next: bash deploy/pi/install.sh --config $OUT/agent.toml --certs $CERTS HOST"
fi
