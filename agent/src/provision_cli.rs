//! `osprey-agent keygen` and `osprey-agent provision`: argument parsing and what to print;
//! the work is in `osprey_agent::provision`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use osprey_agent::provision::{self, key, ClaimPlan, Outcome, SERIAL_PARAMETER};

/// `osprey-agent keygen …`
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// The device id: the CSR's CN and the thing name to give provision-device.sh.
    #[arg(long, value_name = "ID")]
    device_id: String,
    /// Where to write the private key (created 0600, its directory 0700).
    #[arg(long, value_name = "FILE", default_value = key::DEFAULT_KEY_PATH)]
    key: PathBuf,
    /// Where to write the CSR (public). Default: device.csr.pem next to the key.
    #[arg(long, value_name = "FILE")]
    csr: Option<PathBuf>,
    /// Replace an existing key (the certificate issued for the old one stops being usable).
    #[arg(long)]
    force: bool,
}

/// `osprey-agent provision …`
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The agent config: [mqtt] host/port is the IoT endpoint, [mqtt.tls] ca its CA, and
    /// [mqtt.tls] cert and key are where this device's certificate and key go.
    #[arg(long, short, value_name = "FILE", env = "OSPREY_AGENT_CONFIG")]
    config: PathBuf,
    /// The fleet's claim certificate (PEM).
    #[arg(long, value_name = "FILE")]
    claim_cert: PathBuf,
    /// The claim certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    claim_key: PathBuf,
    /// The provisioning template's name (the FleetTemplateName output of
    /// deploy/aws/template.yaml).
    #[arg(long, value_name = "NAME")]
    template: String,
    /// The SerialNumber template parameter, from which the template names the thing.
    /// Default: the Raspberry Pi's serial number, else /etc/machine-id.
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// Another template parameter (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Let AWS make the key (CreateKeysAndCertificate) instead of sending a CSR for a key made
    /// here: the key then crosses the network, inside TLS.
    #[arg(long)]
    aws_key: bool,
    /// The longest wait for each answer from AWS IoT, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout_secs: u64,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Makes the key and the CSR and prints the next steps.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let csr_path = args.csr.clone().unwrap_or_else(|| {
        args.key
            .parent()
            .unwrap_or(Path::new("."))
            .join("device.csr.pem")
    });
    // The CSR first: an invalid device id must not leave a key behind.
    let key_pair = key::generate()?;
    let csr = key::csr_pem(&key_pair, &args.device_id)?;
    key::write(&key_pair, &args.key, args.force)?;
    std::fs::write(&csr_path, csr)
        .with_context(|| format!("cannot write the CSR to {}", csr_path.display()))?;
    let key_abs = std::path::absolute(&args.key).unwrap_or_else(|_| args.key.clone());
    println!(
        "wrote the private key {} (mode 0600; it stays on this device)\n\
         wrote the CSR {} (CN {}; public, copy it freely)\n\
         next, on a machine with AWS credentials:\n  \
         1. copy the CSR there, e.g. scp THIS-HOST:{} .\n  \
         2. bash deploy/aws/provision-device.sh --csr device.csr.pem --device-key {} --stack STACK {}\n  \
         3. bash deploy/pi/install.sh --config deploy/out/{id}/agent.toml --certs deploy/out/{id}/certs THIS-HOST\n     \
         (copies the certificate, the CA and agent.toml; the key is already here)",
        args.key.display(),
        csr_path.display(),
        args.device_id,
        std::path::absolute(&csr_path)
            .unwrap_or_else(|_| csr_path.clone())
            .display(),
        key_abs.display(),
        args.device_id,
        id = args.device_id,
    );
    Ok(())
}

/// Runs fleet provisioning by claim and says what it did.
pub fn provision(args: &ProvisionArgs) -> anyhow::Result<()> {
    super::init_tracing();
    let mut parameters: BTreeMap<String, String> = args.params.iter().cloned().collect();
    let serial = match &args.serial {
        Some(serial) => Some(serial.clone()),
        None => provision::machine_serial(Path::new("/")),
    };
    match (serial, parameters.contains_key(SERIAL_PARAMETER)) {
        (Some(serial), false) => {
            parameters.insert(SERIAL_PARAMETER.to_owned(), serial);
        }
        (_, true) => {}
        (None, false) => anyhow::bail!(
            "no serial number: this machine has neither /proc/device-tree/serial-number nor \
             /etc/machine-id; pass --serial SERIAL"
        ),
    }
    let plan = ClaimPlan {
        config: args.config.clone(),
        claim_cert: args.claim_cert.clone(),
        claim_key: args.claim_key.clone(),
        template: args.template.clone(),
        parameters,
        aws_key: args.aws_key,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };
    let outcome = super::runtime()?
        .block_on(provision::by_claim(&plan))
        .with_context(|| format!("provisioning {} failed", args.config.display()))?;
    match outcome {
        Outcome::AlreadyProvisioned { device_id, cert } => println!(
            "already provisioned as {device_id} ({} exists): nothing to do",
            cert.display()
        ),
        Outcome::Provisioned {
            thing_name,
            certificate_id,
            cert,
            key,
        } => println!(
            "provisioned as {thing_name} (certificate {certificate_id})\n\
             wrote {} and device_id = \"{thing_name}\" in {}; the key is {} (0600)\n\
             next: start the agent (systemctl start osprey-agent)",
            cert.display(),
            args.config.display(),
            key.display()
        ),
        _ => println!("done"),
    }
    Ok(())
}
