#!/usr/bin/env bash
# Provision one device in AWS IoT Core and write its agent config.
#
#   bash deploy/aws/provision-device.sh [options] THING_NAME
#
#   --policy NAME     IoT policy to attach to the certificate (the DevicePolicyName output of
#                     deploy/aws/template.yaml); or
#   --stack NAME      read the policy name from that CloudFormation stack's outputs
#   --out DIR         where to write agent.toml and certs/ (default deploy/out/THING_NAME)
#   --endpoint HOST   IoT data endpoint (default: aws iot describe-endpoint --endpoint-type iot:Data-ATS)
#   --ca-file FILE    use this CA file instead of downloading Amazon Root CA 1
#   --region REGION   AWS region (default: the CLI's configuration)
#   --basic-ingest RULE  publish through AWS IoT Basic Ingest to this rule (the TelemetryRuleName
#                     output): no IoT Core messaging charge
#   --dry-run         print the AWS calls and write only agent.toml (no AWS call, no certificate)
#
# It creates the thing (or reuses it), creates an active certificate and key (written to
# DIR/certs/device.pem.crt and DIR/certs/private.pem.key, mode 0600, never printed), attaches the
# policy to the certificate and the certificate to the thing, downloads Amazon Root CA 1 to
# DIR/certs/AmazonRootCA1.pem, and writes DIR/agent.toml: device_id = THING_NAME, the IoT data
# endpoint on port 8883 with mutual TLS, certificate paths relative to the config (so the
# directory can move as a whole: deploy/pi/install.sh --config DIR/agent.toml --certs DIR/certs).
# Needs the AWS CLI with credentials allowed to call iot:CreateThing, iot:CreateKeysAndCertificate,
# iot:AttachPolicy, iot:AttachThingPrincipal, iot:DescribeEndpoint (and
# cloudformation:DescribeStacks with --stack). AWS_ENDPOINT_URL is honoured (tests use moto).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
AMAZON_ROOT_CA_URL=https://www.amazontrust.com/repository/AmazonRootCA1.pem

log() { printf 'provision-device.sh: %s\n' "$*" >&2; }
die() { printf 'provision-device.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

POLICY=""
STACK=""
OUT=""
ENDPOINT=""
CA_FILE=""
BASIC_INGEST=""
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
OUT="${OUT:-$ROOT/deploy/out/$THING}"
CERTS="$OUT/certs"
[[ ! -e "$CERTS/private.pem.key" ]] ||
    die "$CERTS/private.pem.key exists: this directory already holds a provisioned device; pick another --out"
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

run "${AWS[@]}" iot create-thing --thing-name "$THING" --output text >/dev/null
umask 077
if ((DRY_RUN)); then
    run "${AWS[@]}" iot create-keys-and-certificate --set-as-active \
        --certificate-pem-outfile "$CERTS/device.pem.crt" --private-key-outfile "$CERTS/private.pem.key" \
        --query certificateArn --output text
    CERT_ARN="<certificateArn>"
else
    CERT_ARN="$(run "${AWS[@]}" iot create-keys-and-certificate --set-as-active \
        --certificate-pem-outfile "$CERTS/device.pem.crt" --private-key-outfile "$CERTS/private.pem.key" \
        --query certificateArn --output text)"
    [[ "$CERT_ARN" == arn:* ]] || die "create-keys-and-certificate returned no certificate ARN"
    log "certificate $CERT_ARN"
fi
run "${AWS[@]}" iot attach-policy --policy-name "$POLICY" --target "$CERT_ARN"
run "${AWS[@]}" iot attach-thing-principal --thing-name "$THING" --principal "$CERT_ARN"
if [[ -n "$CA_FILE" ]]; then
    run cp "$CA_FILE" "$CERTS/AmazonRootCA1.pem"
else
    run curl -fsSL --retry 3 -o "$CERTS/AmazonRootCA1.pem" "$AMAZON_ROOT_CA_URL"
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
key = "certs/private.pem.key"

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
    log "next: bash deploy/pi/install.sh --config $OUT/agent.toml --certs $CERTS HOST"
fi
