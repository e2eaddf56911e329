"""Checks the Greengrass nucleus stand-in (tests/src/greengrass.rs) against AWS's own IPC client,
awsiotsdk's GreengrassCoreIPCClientV2: the SDK (through awscrt's event-stream RPC) frames the
CONNECT and the operations and parses the answers into its models, so a header, flag, model name
or field that differs from what AWS's client expects fails here. The client reads the socket and
the token from the environment, as a component does (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT,
SVCUID). Run by tests/tests/greengrass.rs (the_stand_in_nucleus_agrees_with_awsiotsdk), which
asks the stand-in to refuse the first publish and, once this script has subscribed, changes the
configuration. Prints one JSON object with what it saw."""

import json
import os
import queue
import sys

from awsiot import greengrasscoreipc
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (QOS, ReportedLifecycleState, ResourceNotFoundError,
                                            ServiceError)

TIMEOUT = 20


def main():
    out = {}
    client = GreengrassCoreIPCClientV2()

    # The stand-in refuses the first publish: the SDK must raise the modelled ServiceError.
    try:
        client.publish_to_iot_core(topic_name="dt/osprey/sdk-check/telemetry",
                                   qos=QOS.AT_LEAST_ONCE, payload=b"refused")
        out["refused"] = None
    except ServiceError as e:
        out["refused"] = e.message
    client.publish_to_iot_core(topic_name="dt/osprey/sdk-check/telemetry",
                               qos=QOS.AT_LEAST_ONCE, payload=b"\x00\x01binary\xff")
    out["published"] = True

    whole = client.get_configuration(key_path=[])
    out["component"] = whole.component_name
    out["whole"] = whole.value
    out["container"] = client.get_configuration(key_path=["agent", "sampling"]).value
    out["leaf"] = client.get_configuration(key_path=["agent", "sampling", "interval_ms"]).value
    try:
        client.get_configuration(key_path=["no-such-key"])
        out["missing"] = None
    except ResourceNotFoundError as e:
        out["missing"] = e.message

    events = queue.Queue()
    client.subscribe_to_configuration_update(
        key_path=["agent"],
        on_stream_event=lambda e: events.put(e.configuration_update_event.key_path))
    print("subscribed", file=sys.stderr, flush=True)
    out["event_key_path"] = events.get(timeout=TIMEOUT)
    out["after_update"] = client.get_configuration(key_path=["agent", "rules"]).value

    client.update_state(state=ReportedLifecycleState.RUNNING)
    out["state"] = True
    client.close()

    # A wrong token: the connection is refused.
    try:
        greengrasscoreipc.connect(authtoken="not-the-token", timeout=TIMEOUT).close()
        out["wrong_token"] = "connected"
    except Exception as e:  # the SDK raises its own or awscrt's error type
        out["wrong_token"] = type(e).__name__

    print(json.dumps(out))


if __name__ == "__main__":
    main()
