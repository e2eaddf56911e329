"""Checks the Device Shadow stand-in (tests/src/shadow.rs) against AWS's own client, awsiotsdk:
the SDK builds the named-shadow topics and parses the answers into its models, so a topic or a
field name that differs from AWS's fails here. Run by tests/tests/remote_config.rs
(the_shadow_stand_in_agrees_with_awsiotsdk), which starts Mosquitto and the stand-in and sets
OSPREY_SHADOW_PORT; tests/run.sh installs awsiotsdk in .osprey-test/awsiot-venv."""

import os
import queue
import sys

from awscrt import io, mqtt
from awsiot import iotshadow

THING, SHADOW = "sdk-check", "osprey-config"
QOS = mqtt.QoS.AT_LEAST_ONCE
TIMEOUT = 10


def main():
    port = int(os.environ["OSPREY_SHADOW_PORT"])
    elg = io.EventLoopGroup(1)
    bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
    conn = mqtt.Connection(client=mqtt.Client(bootstrap, None), host_name="127.0.0.1",
                           port=port, client_id="awsiotsdk-check", clean_session=True,
                           keep_alive_secs=30)
    conn.connect().result(TIMEOUT)
    shadow = iotshadow.IotShadowClient(conn)
    got = {name: queue.Queue() for name in
           ("get_ok", "get_err", "upd_ok", "upd_err", "delta", "docs", "del_ok")}

    kinds = [
        ("subscribe_to_get_named_shadow_accepted", "GetNamedShadowSubscriptionRequest", "get_ok"),
        ("subscribe_to_get_named_shadow_rejected", "GetNamedShadowSubscriptionRequest", "get_err"),
        ("subscribe_to_update_named_shadow_accepted", "UpdateNamedShadowSubscriptionRequest", "upd_ok"),
        ("subscribe_to_update_named_shadow_rejected", "UpdateNamedShadowSubscriptionRequest", "upd_err"),
        ("subscribe_to_named_shadow_delta_updated_events",
         "NamedShadowDeltaUpdatedSubscriptionRequest", "delta"),
        ("subscribe_to_named_shadow_updated_events", "NamedShadowUpdatedSubscriptionRequest", "docs"),
        ("subscribe_to_delete_named_shadow_accepted", "DeleteNamedShadowSubscriptionRequest", "del_ok"),
    ]
    for method, request, name in kinds:
        req = getattr(iotshadow, request)(thing_name=THING, shadow_name=SHADOW)
        future, _topic = getattr(shadow, method)(req, QOS, got[name].put)
        future.result(TIMEOUT)

    def take(name):
        return got[name].get(timeout=TIMEOUT)

    def publish(future):
        future.result(TIMEOUT)

    # No shadow yet: 404 with the token.
    publish(shadow.publish_get_named_shadow(
        iotshadow.GetNamedShadowRequest(thing_name=THING, shadow_name=SHADOW, client_token="g1"), QOS))
    err = take("get_err")
    assert (err.code, err.client_token) == (404, "g1"), vars(err)
    assert SHADOW in err.message and err.timestamp is not None, vars(err)

    # The cloud sets desired: accepted, documents and delta, version 1.
    rules = [{"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
              "when": "above", "threshold": 30.0}]
    publish(shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=THING, shadow_name=SHADOW, client_token="u1",
        state=iotshadow.ShadowState(desired={"rules": rules})), QOS))
    ok = take("upd_ok")
    assert (ok.version, ok.client_token, ok.state.desired) == (1, "u1", {"rules": rules}), vars(ok)
    assert ok.metadata.desired["rules"]["timestamp"] and ok.timestamp is not None, vars(ok.metadata)
    docs = take("docs")
    assert docs.previous is None and docs.current.version == 1, vars(docs)
    assert docs.current.state.desired == {"rules": rules}, vars(docs.current.state)
    delta = take("delta")
    assert (delta.version, delta.state, delta.client_token) == (1, {"rules": rules}, "u1"), vars(delta)

    # The device reports what it applied: version 2, no delta; get shows both and no delta.
    publish(shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=THING, shadow_name=SHADOW, client_token="u2",
        state=iotshadow.ShadowState(reported={"rules": rules, "applied": {"version": 1}})), QOS))
    ok = take("upd_ok")
    assert (ok.version, ok.client_token) == (2, "u2"), vars(ok)
    docs = take("docs")
    assert (docs.previous.version, docs.current.version) == (1, 2), vars(docs)
    assert docs.current.state.reported["applied"] == {"version": 1}, vars(docs.current.state)
    assert got["delta"].empty(), "no delta once reported matches desired"
    publish(shadow.publish_get_named_shadow(
        iotshadow.GetNamedShadowRequest(thing_name=THING, shadow_name=SHADOW, client_token="g2"), QOS))
    doc = take("get_ok")
    assert (doc.version, doc.client_token) == (2, "g2"), vars(doc)
    assert doc.state.desired == {"rules": rules} and doc.state.delta is None, vars(doc.state)
    assert doc.state.reported["rules"] == rules, vars(doc.state)
    assert doc.metadata.reported["applied"]["version"]["timestamp"], vars(doc.metadata)

    # A change: the delta holds only the differing key, whole array.
    rules2 = [dict(rules[0], threshold=25.0)]
    publish(shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=THING, shadow_name=SHADOW, client_token="u3",
        state=iotshadow.ShadowState(desired={"rules": rules2})), QOS))
    take("upd_ok"), take("docs")
    delta = take("delta")
    assert (delta.version, delta.state) == (3, {"rules": rules2}), vars(delta)

    # Optimistic locking: a stale version is refused with 409 and the token.
    publish(shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=THING, shadow_name=SHADOW, client_token="u4", version=1,
        state=iotshadow.ShadowState(desired={"rules": []})), QOS))
    err = take("upd_err")
    assert (err.code, err.client_token) == (409, "u4"), vars(err)

    # Delete, then the shadow is gone.
    publish(shadow.publish_delete_named_shadow(iotshadow.DeleteNamedShadowRequest(
        thing_name=THING, shadow_name=SHADOW, client_token="d1"), QOS))
    deleted = take("del_ok")
    assert (deleted.version, deleted.client_token) == (3, "d1"), vars(deleted)
    publish(shadow.publish_get_named_shadow(
        iotshadow.GetNamedShadowRequest(thing_name=THING, shadow_name=SHADOW, client_token="g3"), QOS))
    assert take("get_err").code == 404

    conn.disconnect().result(TIMEOUT)
    print("awsiotsdk agrees with the shadow stand-in: topics, documents, versions, delta, 404, 409")


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, queue.Empty) as e:
        print(f"shadow check failed: {e!r}", file=sys.stderr)
        sys.exit(1)
