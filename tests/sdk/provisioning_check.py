"""Checks the fleet provisioning stand-in (tests/src/provisioning.rs) against AWS's own client,
awsiotsdk's awsiot.iotidentity: the SDK builds the request topics and payloads and parses the
answers into its models, so a topic or a field name that differs from AWS's fails here. Run by
tests/tests/provisioning.rs (the_stand_in_agrees_with_awsiotsdk), which starts Mosquitto with
mutual TLS and the stand-in and sets the OSPREY_FLEET_* variables; tests/run.sh installs
awsiotsdk in .osprey-test/awsiot-venv."""

import os
import queue

from awscrt import mqtt
from awsiot import iotidentity, mqtt_connection_builder

QOS = mqtt.QoS.AT_LEAST_ONCE
TIMEOUT = 10


def main():
    env = os.environ
    template = env["OSPREY_FLEET_TEMPLATE"]
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=int(env["OSPREY_FLEET_PORT"]),
        cert_filepath=env["OSPREY_FLEET_CLAIM_CERT"], pri_key_filepath=env["OSPREY_FLEET_CLAIM_KEY"],
        ca_filepath=env["OSPREY_FLEET_CA"], client_id="awsiotsdk-fleet-check", clean_session=True,
        keep_alive_secs=30)
    conn.connect().result(TIMEOUT)
    identity = iotidentity.IotIdentityClient(conn)
    got = {name: queue.Queue() for name in
           ("csr_ok", "csr_err", "keys_ok", "keys_err", "reg_ok", "reg_err", "bad_ok", "bad_err")}

    subs = [
        ("subscribe_to_create_certificate_from_csr_accepted",
         iotidentity.CreateCertificateFromCsrSubscriptionRequest(), "csr_ok"),
        ("subscribe_to_create_certificate_from_csr_rejected",
         iotidentity.CreateCertificateFromCsrSubscriptionRequest(), "csr_err"),
        ("subscribe_to_create_keys_and_certificate_accepted",
         iotidentity.CreateKeysAndCertificateSubscriptionRequest(), "keys_ok"),
        ("subscribe_to_create_keys_and_certificate_rejected",
         iotidentity.CreateKeysAndCertificateSubscriptionRequest(), "keys_err"),
        ("subscribe_to_register_thing_accepted",
         iotidentity.RegisterThingSubscriptionRequest(template_name=template), "reg_ok"),
        ("subscribe_to_register_thing_rejected",
         iotidentity.RegisterThingSubscriptionRequest(template_name=template), "reg_err"),
        ("subscribe_to_register_thing_accepted",
         iotidentity.RegisterThingSubscriptionRequest(template_name="no-such-template"), "bad_ok"),
        ("subscribe_to_register_thing_rejected",
         iotidentity.RegisterThingSubscriptionRequest(template_name="no-such-template"), "bad_err"),
    ]
    for method, request, name in subs:
        future, _topic = getattr(identity, method)(request, QOS, got[name].put)
        future.result(TIMEOUT)

    def take(name):
        return got[name].get(timeout=TIMEOUT)

    # CreateCertificateFromCsr: a certificate, its id and an ownership token.
    with open(env["OSPREY_FLEET_CSR"]) as f:
        csr = f.read()
    identity.publish_create_certificate_from_csr(
        iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), QOS).result(TIMEOUT)
    cert = take("csr_ok")
    assert cert.certificate_pem.startswith("-----BEGIN CERTIFICATE-----"), vars(cert)
    assert cert.certificate_id and cert.certificate_ownership_token, vars(cert)

    # A CSR that is not one: rejected with the error model.
    identity.publish_create_certificate_from_csr(
        iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request="nonsense"), QOS).result(TIMEOUT)
    err = take("csr_err")
    assert err.status_code == 400 and err.error_code and err.error_message, vars(err)

    # RegisterThing with a wrong token: rejected; with the right one: the thing name.
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token="forged",
        parameters={"SerialNumber": "sdk-0001"}), QOS).result(TIMEOUT)
    err = take("reg_err")
    assert err.status_code == 400 and "token" in err.error_message.lower(), vars(err)
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=cert.certificate_ownership_token,
        parameters={"SerialNumber": "sdk-0001"}), QOS).result(TIMEOUT)
    reg = take("reg_ok")
    assert reg.thing_name == env.get("OSPREY_FLEET_PREFIX", "") + "sdk-0001", vars(reg)
    assert reg.device_configuration == {}, vars(reg)
    # The token is spent.
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=cert.certificate_ownership_token,
        parameters={"SerialNumber": "sdk-0001"}), QOS).result(TIMEOUT)
    err = take("reg_err")
    assert err.status_code == 400, vars(err)

    # CreateKeysAndCertificate: a key too; an unknown template: 404.
    identity.publish_create_keys_and_certificate(
        iotidentity.CreateKeysAndCertificateRequest(), QOS).result(TIMEOUT)
    keys = take("keys_ok")
    assert "PRIVATE KEY" in keys.private_key and keys.certificate_ownership_token, vars(keys)
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name="no-such-template", certificate_ownership_token=keys.certificate_ownership_token,
        parameters={"SerialNumber": "sdk-0002"}), QOS).result(TIMEOUT)
    err = take("bad_err")
    assert err.status_code == 404, vars(err)

    conn.disconnect().result(TIMEOUT)
    print("awsiotsdk: CreateCertificateFromCsr, CreateKeysAndCertificate, RegisterThing ok")


if __name__ == "__main__":
    main()
