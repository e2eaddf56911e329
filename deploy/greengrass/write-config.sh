#!/bin/sh
# Greengrass install step of the com.osprey.Agent component (deploy/greengrass/recipe.yaml):
# writes the agent's TOML config from the component configuration, then checks it with the
# installed binary, so that a bad configuration fails the deployment with FILE:LINE:COL in the
# component log instead of a crash loop.
#
#   sh write-config.sh AGENT_BINARY
#
# Everything else comes from the environment, which the recipe's Lifecycle.Setenv fills from
# recipe variables (a value left empty takes the default shown):
#   OSPREY_CONFIG        where to write the config, {work:path}/agent.toml
#   OSPREY_JOURNAL       journal directory, {work:path}/journal
#   OSPREY_DEVICE_ID     the configuration's deviceId, else OSPREY_THING_NAME ({iot:thingName}):
#                        the thing whose certificate the agent uses, which the IoT policy expects
#   OSPREY_CLIENT_ID     MQTT client id; default DEVICE_ID-osprey, because the nucleus itself is
#                        connected as the thing name and AWS IoT drops the older of two
#                        connections with one client id
#   OSPREY_MQTT_HOST     AWS IoT data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS); required
#   OSPREY_MQTT_PORT     8883
#   OSPREY_CA, OSPREY_CERT, OSPREY_KEY   TLS files; default: the core device's own
#                        {kernel:rootPath}/rootCA.pem, thingCert.crt and privKey.key
#   OSPREY_GG_ROOT       {kernel:rootPath}
#   OSPREY_INTERVAL_MS   1000;  OSPREY_SCENARIO  steady;  OSPREY_SEED  0
#   OSPREY_BATCH_MAX_READINGS 60;  OSPREY_BATCH_MAX_AGE_MS 5000
#   OSPREY_RULES_JSON    the `rules` list of the configuration as JSON (rule documents, the same
#                        fields as the agent's [[rules]] tables; protocol/src/rule.rs); [] for none
set -eu

binary=${1:?usage: sh write-config.sh AGENT_BINARY}
die() { echo "osprey write-config: $*" >&2; exit 1; }

config=${OSPREY_CONFIG:?OSPREY_CONFIG must name the config file to write}
gg_root=${OSPREY_GG_ROOT:-/greengrass/v2}
device_id=${OSPREY_DEVICE_ID:-${OSPREY_THING_NAME:-}}
[ -n "$device_id" ] || die "no device id: OSPREY_DEVICE_ID and OSPREY_THING_NAME are empty (the recipe sets OSPREY_THING_NAME to {iot:thingName})"
[ -n "${OSPREY_MQTT_HOST:-}" ] ||
    die "mqttHost is not set: merge {\"mqttHost\": \"<prefix>-ats.iot.<region>.amazonaws.com\"} into the component configuration (aws iot describe-endpoint --endpoint-type iot:Data-ATS)"

# A TOML basic string: backslashes and double quotes escaped.
q() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"; }

# Rule documents: the JSON list Greengrass interpolates is one line of objects with scalar
# values, which TOML reads as an array of inline tables once `"key":` becomes `"key" =`. JSON
# string escapes are TOML escapes too; `osprey-agent check` below rejects anything else.
rules=$(printf '%s' "${OSPREY_RULES_JSON:-[]}" | tr '\n' ' ' | sed 's/\([^\\]\)":/\1" =/g')

mkdir -p "$(dirname "$config")"
tmp="$config.tmp"
cat >"$tmp" <<TOML
# Written by the com.osprey.Agent Greengrass component from its configuration; edits are lost
# at the next deployment. Change the component configuration instead.
device_id = $(q "$device_id")
rules = $rules

[sampling]
interval_ms = ${OSPREY_INTERVAL_MS:-1000}

[simulator]
seed = ${OSPREY_SEED:-0}
scenario = $(q "${OSPREY_SCENARIO:-steady}")

[batch]
max_readings = ${OSPREY_BATCH_MAX_READINGS:-60}
max_age_ms = ${OSPREY_BATCH_MAX_AGE_MS:-5000}

[journal]
path = $(q "${OSPREY_JOURNAL:-$(dirname "$config")/journal}")

[mqtt]
host = $(q "$OSPREY_MQTT_HOST")
port = ${OSPREY_MQTT_PORT:-8883}
client_id = $(q "${OSPREY_CLIENT_ID:-$device_id-osprey}")

[mqtt.tls]
ca = $(q "${OSPREY_CA:-$gg_root/rootCA.pem}")
cert = $(q "${OSPREY_CERT:-$gg_root/thingCert.crt}")
key = $(q "${OSPREY_KEY:-$gg_root/privKey.key}")
TOML
chmod 0600 "$tmp"
"$binary" check "$tmp" || die "the generated config $tmp is invalid (message above): fix the component configuration"
mv -f "$tmp" "$config"
