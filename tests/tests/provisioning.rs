//! Device identity: `osprey-agent keygen` (a key made on the device and a CSR openssl accepts)
//! and `osprey-agent provision` (fleet provisioning by claim) over Mosquitto with mutual TLS
//! and the shipped topic ACL, against the fleet provisioning stand-in
//! (`osprey_tests::provisioning`), itself checked against AWS's awsiotsdk. The provisioned
//! agent then connects with its new certificate and publishes as the new thing, while the
//! claim certificate alone cannot publish telemetry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use osprey_agent::config::Config;
use osprey_tests::provisioning::{FleetProvisioning, ACL_ADDITIONS, CLAIM_CN};
use osprey_tests::{
    bin, mosquitto_tool, workspace_root, Certs, ClientCert, Listener, Mosquitto, Proc,
};

const TEMPLATE: &str = "osprey-fleet";

/// A mutual-TLS broker enforcing the shipped ACL plus the fleet provisioning lines, the
/// stand-in serving [`TEMPLATE`] (thing name = SerialNumber), and the claim certificate.
/// `certs`' own client certificate has CN `osprey-cloud`, the ACL's reader of every device.
struct Fleet {
    certs: Arc<Certs>,
    broker: Mosquitto,
    service: FleetProvisioning,
    claim: ClientCert,
    _acl: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let certs = Arc::new(Certs::generate("osprey-cloud"));
        let acl_dir = tempfile::tempdir().unwrap();
        let acl = acl_dir.path().join("acl");
        let shipped =
            std::fs::read_to_string(workspace_root().join("deploy/mosquitto/acl")).unwrap();
        std::fs::write(&acl, format!("{shipped}\n{ACL_ADDITIONS}")).unwrap();
        std::fs::set_permissions(acl_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
        let broker = Mosquitto::start(
            Listener::MutualTls(&certs),
            &format!("acl_file {}\n", acl.display()),
        );
        let service =
            FleetProvisioning::start(broker.port(), Arc::clone(&certs), &[(TEMPLATE, "")]);
        let claim = certs.issue_client(CLAIM_CN);
        Fleet {
            certs,
            broker,
            service,
            claim,
            _acl: acl_dir,
        }
    }

    /// The image's agent.toml in `dir`: the broker, its CA, and where the device's own
    /// certificate and key will go.
    fn image_config(&self, dir: &Path) -> PathBuf {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "# the same file on every device of the image\n\
                 device_id = \"unprovisioned\" # set by osprey-agent provision\n\
                 [sampling]\ninterval_ms = 50\n[batch]\nmax_readings = 3\n\
                 [journal]\npath = \"{}\"\n[mqtt]\nhost = \"localhost\"\nport = {}\n\
                 [mqtt.tls]\nca = \"{}\"\ncert = \"certs/device.pem.crt\"\nkey = \"certs/private.pem.key\"\n",
                dir.join("journal").display(),
                self.broker.port(),
                self.certs.ca.display(),
            ),
        )
        .unwrap();
        config
    }

    fn provision(&self, config: &Path, extra: &[&str]) -> Output {
        Command::new(bin("osprey-agent"))
            .arg("provision")
            .arg("--config")
            .arg(config)
            .arg("--claim-cert")
            .arg(&self.claim.cert)
            .arg("--claim-key")
            .arg(&self.claim.key)
            .args(["--timeout-secs", "10"])
            .args(extra)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// mosquitto_sub as osprey-cloud on `topic`, exiting after `count` messages.
    fn subscribe(&self, topic: &str, count: u32) -> Proc {
        let reader = &self.certs.client;
        Proc::spawn(Command::new(mosquitto_tool("mosquitto_sub")).args([
            "-h",
            "localhost",
            "-p",
            &self.broker.port().to_string(),
            "--cafile",
            self.certs.ca.to_str().unwrap(),
            "--cert",
            reader.cert.to_str().unwrap(),
            "--key",
            reader.key.to_str().unwrap(),
            "-q",
            "1",
            "-t",
            topic,
            "-C",
            &count.to_string(),
            "-F",
            "%t",
        ]))
    }

    /// mosquitto_pub with `who`'s certificate.
    fn publish(&self, who: &ClientCert, topic: &str) {
        let out = Command::new(mosquitto_tool("mosquitto_pub"))
            .args([
                "-h",
                "localhost",
                "-p",
                &self.broker.port().to_string(),
                "--cafile",
            ])
            .arg(&self.certs.ca)
            .arg("--cert")
            .arg(&who.cert)
            .arg("--key")
            .arg(&who.key)
            .args(["-q", "1", "-t", topic, "-m", "{}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The SubjectPublicKeyInfo of a certificate or key file, by openssl.
fn public_key(path: &Path, is_cert: bool) -> String {
    let args: &[&str] = if is_cert {
        &["x509", "-noout", "-pubkey", "-in"]
    } else {
        &["pkey", "-pubout", "-in"]
    };
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_makes_a_0600_p256_key_and_a_csr_openssl_verifies_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("state/certs/private.pem.key");
    let keygen = |extra: &[&str]| {
        Command::new(bin("osprey-agent"))
            .args(["keygen", "--device-id", "pump-7", "--key"])
            .arg(&key)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = keygen(&[]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("provision-device.sh --csr"),
        "{}",
        said(&out)
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().unwrap()) & 0o077, 0);
    let csr = key.parent().unwrap().join("device.csr.pem");
    let verify = Command::new("openssl")
        .args(["req", "-noout", "-verify", "-subject", "-in"])
        .arg(&csr)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", said(&verify));
    assert!(said(&verify).contains("CN = pump-7"), "{}", said(&verify));
    let details = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(said(&details).contains("prime256v1"), "{}", said(&details));
    // The CSR carries this key.
    let csr_key = Command::new("openssl")
        .args(["req", "-noout", "-pubkey", "-in"])
        .arg(&csr)
        .output()
        .unwrap();
    assert_eq!(text(&csr_key.stdout), public_key(&key, false));

    let before = std::fs::read(&key).unwrap();
    let again = keygen(&[]);
    assert!(!again.status.success());
    assert!(said(&again).contains("--force"), "{}", said(&again));
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key was replaced");
    let bad = Command::new(bin("osprey-agent"))
        .args(["keygen", "--device-id", "pump/7", "--key"])
        .arg(dir.path().join("other.key"))
        .output()
        .unwrap();
    assert!(said(&bad).contains("invalid device id"), "{}", said(&bad));
    assert!(
        !dir.path().join("other.key").exists(),
        "a key was left for an invalid id"
    );
    let forced = keygen(&["--force"]);
    assert!(forced.status.success(), "{}", said(&forced));
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn claim_provisioning_gets_a_certificate_for_the_device_key_and_the_agent_publishes_as_the_new_thing(
) {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.image_config(dir.path());

    let started = std::time::Instant::now();
    let out = fleet.provision(&config, &["--template", TEMPLATE, "--serial", "gw-0001"]);
    // A figure for the report: the whole command (process start, key, CSR, TLS, two exchanges,
    // writes) on loopback.
    eprintln!("osprey-agent provision took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "{}\nbroker:\n{}",
        said(&out),
        fleet.broker.log()
    );
    assert!(
        said(&out).contains("provisioned as gw-0001"),
        "{}",
        said(&out)
    );

    // The key was made here (0600) and the certificate is for it; the config names the thing
    // and keeps its comments.
    let (cert, key) = (
        dir.path().join("certs/device.pem.crt"),
        dir.path().join("certs/private.pem.key"),
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(public_key(&cert, true), public_key(&key, false));
    assert_eq!(Config::load(&config).unwrap().device_id, "gw-0001");
    let toml = std::fs::read_to_string(&config).unwrap();
    assert!(
        toml.contains("device_id = \"gw-0001\" # set by osprey-agent provision"),
        "{toml}"
    );
    let registered = fleet.service.registered();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0].thing_name, "gw-0001");
    assert_eq!(
        registered[0]
            .parameters
            .get("SerialNumber")
            .map(String::as_str),
        Some("gw-0001")
    );
    assert!(!said(&out).contains("PRIVATE KEY"), "key material printed");

    // Idempotent: a second run (every boot) does nothing and asks for nothing.
    let issued = fleet.service.issued();
    let again = fleet.provision(&config, &["--template", TEMPLATE, "--serial", "gw-0001"]);
    assert!(again.status.success(), "{}", said(&again));
    assert!(
        said(&again).contains("already provisioned as gw-0001"),
        "{}",
        said(&again)
    );
    assert_eq!(fleet.service.issued(), issued);

    // The provisioned agent connects with its own certificate and publishes as gw-0001.
    let mut sub = fleet.subscribe("dt/osprey/gw-0001/telemetry", 2);
    std::thread::sleep(Duration::from_millis(300));
    let agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1"),
    );
    let status = sub.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "no telemetry from the provisioned agent: {}\nagent:\n{}\nbroker:\n{}",
        sub.logs(),
        agent.logs(),
        fleet.broker.log()
    );
}

#[test]
fn the_claim_certificate_alone_cannot_publish_telemetry() {
    let fleet = Fleet::start();
    let device = fleet.certs.issue_client("gw-0002");
    let mut sub = fleet.subscribe("dt/osprey/#", 1);
    std::thread::sleep(Duration::from_millis(300));
    // The claim certificate tries a device's topic and its own; then the device itself.
    fleet.publish(&fleet.claim, "dt/osprey/gw-0002/telemetry");
    fleet.publish(&fleet.claim, &format!("dt/osprey/{CLAIM_CN}/telemetry"));
    fleet.publish(&device, "dt/osprey/gw-0002/status");
    let status = sub.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{}\n{}", sub.logs(), fleet.broker.log());
    // Only the device's own message arrived: the claim's were refused by the broker.
    assert_eq!(
        sub.stdout().trim(),
        "dt/osprey/gw-0002/status",
        "{}",
        sub.logs()
    );
}

#[test]
fn provisioning_failures_say_what_to_fix_and_leave_the_device_able_to_retry() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.image_config(dir.path());
    let key = dir.path().join("certs/private.pem.key");

    // Unknown template: RegisterThing rejected; no certificate, device_id unchanged, and the
    // key made for the CSR is kept and reused by the retry.
    let out = fleet.provision(
        &config,
        &["--template", "no-such-template", "--serial", "gw-0003"],
    );
    assert!(!out.status.success());
    let text = said(&out);
    assert!(text.contains("RegisterThing rejected: 404"), "{text}");
    assert!(text.contains("template name"), "{text}");
    assert!(!dir.path().join("certs/device.pem.crt").exists());
    assert_eq!(Config::load(&config).unwrap().device_id, "unprovisioned");
    let kept = std::fs::read(&key).unwrap();

    // A template name that cannot be a topic level: refused before connecting.
    let out = fleet.provision(&config, &["--template", "a/b", "--serial", "gw-0003"]);
    assert!(
        said(&out).contains("invalid template name"),
        "{}",
        said(&out)
    );

    let out = fleet.provision(&config, &["--template", TEMPLATE, "--serial", "gw-0003"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        std::fs::read(&key).unwrap(),
        kept,
        "the retry made a new key"
    );
    assert_eq!(
        public_key(&dir.path().join("certs/device.pem.crt"), true),
        public_key(&key, false)
    );

    // A claim certificate from another CA: the connection fails and says what to check.
    let other = tempfile::tempdir().unwrap();
    let config = fleet.image_config(other.path());
    let out = Command::new(bin("osprey-agent"))
        .arg("provision")
        .arg("--config")
        .arg(&config)
        .arg("--claim-cert")
        .arg(&fleet.certs.rogue.cert)
        .arg("--claim-key")
        .arg(&fleet.certs.rogue.key)
        .args([
            "--template",
            TEMPLATE,
            "--serial",
            "gw-0004",
            "--timeout-secs",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        said(&out).contains("claim certificate is active"),
        "{}",
        said(&out)
    );
}

#[test]
fn aws_made_keys_are_written_0600_and_refused_when_a_key_exists() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet.image_config(dir.path());
    let out = fleet.provision(
        &config,
        &["--template", TEMPLATE, "--serial", "gw-0005", "--aws-key"],
    );
    assert!(out.status.success(), "{}", said(&out));
    let (cert, key) = (
        dir.path().join("certs/device.pem.crt"),
        dir.path().join("certs/private.pem.key"),
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(public_key(&cert, true), public_key(&key, false));
    assert_eq!(Config::load(&config).unwrap().device_id, "gw-0005");
    assert!(!said(&out).contains("PRIVATE KEY"), "key material printed");

    // A key already on the device (keygen ran): --aws-key would replace it, so it refuses.
    let other = tempfile::tempdir().unwrap();
    let config = fleet.image_config(other.path());
    std::fs::create_dir_all(other.path().join("certs")).unwrap();
    std::fs::copy(&key, other.path().join("certs/private.pem.key")).unwrap();
    let out = fleet.provision(
        &config,
        &["--template", TEMPLATE, "--serial", "gw-0006", "--aws-key"],
    );
    assert!(!out.status.success());
    assert!(said(&out).contains("drop --aws-key"), "{}", said(&out));
}

#[test]
fn the_stand_in_agrees_with_awsiotsdk() {
    let python = std::env::var_os("OSPREY_TEST_AWSIOT_PYTHON").unwrap_or_else(|| {
        panic!("OSPREY_TEST_AWSIOT_PYTHON is not set: run tests/run.sh, which installs awsiotsdk")
    });
    let fleet = Fleet::start();
    // A CSR made by openssl, independent of the agent's.
    let dir = tempfile::tempdir().unwrap();
    let csr = dir.path().join("sdk.csr");
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.path().join("sdk.key"))
        .args(["-subj", "/CN=sdk-0001", "-out"])
        .arg(&csr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/sdk/provisioning_check.py"))
        .env("OSPREY_FLEET_PORT", fleet.broker.port().to_string())
        .env("OSPREY_FLEET_CA", &fleet.certs.ca)
        .env("OSPREY_FLEET_CLAIM_CERT", &fleet.claim.cert)
        .env("OSPREY_FLEET_CLAIM_KEY", &fleet.claim.key)
        .env("OSPREY_FLEET_CSR", &csr)
        .env("OSPREY_FLEET_TEMPLATE", TEMPLATE)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&python).display()));
    assert!(
        out.status.success(),
        "awsiotsdk disagrees with the stand-in:\n{}\nbroker:\n{}",
        said(&out),
        fleet.broker.log()
    );
    let registered = fleet.service.registered();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0].thing_name, "sdk-0001");
}
