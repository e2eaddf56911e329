use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/osprey"))
}

/// The `(line, column, message)` of a rejected config.
fn error_at(text: &str) -> (usize, usize, String) {
    let err = parse(text).expect_err("config should be rejected");
    let loc = err.location().cloned().expect("error should be located");
    (loc.line, loc.column, err.to_string())
}

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/simulator.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.device_id, "pump-7");
    assert_eq!(config.simulator.seed, 42);
    assert_eq!(config.rules, sim::default_rules());
    assert_eq!(config.journal_path, Path::new("/tmp/osprey-agent/pump-7"));
    assert_eq!(config.sampling.max_samples, None);
}

/// Every agent config shipped in the repo (examples and deployment defaults) is valid.
#[test]
fn every_shipped_agent_config_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for dir in ["agent/examples", "deploy/config"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = Config::load(&path) {
                    panic!("{}: {e}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "found only {checked} configs");
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse("device_id = \"pump-7\"\n").unwrap();
    assert_eq!(config.sampling.interval, DEFAULT_INTERVAL);
    assert_eq!(config.batch, default_batch_limits());
    // A minute, or one 5 KB IoT Core unit; the count never decides first.
    assert_eq!(config.batch.max_age, Duration::from_secs(60));
    assert_eq!(config.batch.target_bytes, 4800);
    assert_eq!(config.batch.max_bytes, 131_072);
    assert_eq!(config.batch.max_readings.get(), MAX_BATCH_READINGS);
    assert_eq!(config.journal_path, PathBuf::from(DEFAULT_JOURNAL_PATH));
    assert_eq!(config.mqtt.host, DEFAULT_MQTT_HOST);
    assert_eq!(config.mqtt.port, DEFAULT_MQTT_PORT);
    assert_eq!(config.mqtt.client_id, "pump-7");
    assert_eq!(config.mqtt.inflight.get(), DEFAULT_INFLIGHT);
    assert_eq!(config.mqtt.tls, None);
    assert!(config.mqtt.pack_backlog);
    assert_eq!(config.simulator.scenario, Scenario::Steady);
    assert_eq!(config.journal_backend, crate::journal::Backend::Segment);
    assert!(config.rules.is_empty());
    assert_eq!(config.status_interval, Some(DEFAULT_STATUS_INTERVAL));
}

#[test]
fn status_interval_is_seconds_and_0_turns_it_off() {
    let config = parse("device_id = \"gw\"\n[status]\ninterval_s = 5\n").unwrap();
    assert_eq!(config.status_interval, Some(Duration::from_secs(5)));
    let config = parse("device_id = \"gw\"\n[status]\ninterval_s = 0\n").unwrap();
    assert_eq!(config.status_interval, None);
    let mut config = parse("device_id = \"gw\"\n").unwrap();
    config.status_interval = Some(Duration::from_millis(500));
    assert!(config.validate().is_err(), "sub-second periods are refused");
}

#[test]
fn pack_backlog_can_be_turned_off_and_must_be_a_bool() {
    let config = parse("device_id = \"gw\"\n[mqtt]\npack_backlog = false\n").unwrap();
    assert!(!config.mqtt.pack_backlog);
    let err = parse("device_id = \"gw\"\n[mqtt]\npack_backlog = \"yes\"\n").unwrap_err();
    assert!(err.to_string().starts_with("3:16: invalid type"), "{err}");
}

#[test]
fn relative_tls_paths_resolve_against_the_config_directory() {
    let config = parse(
        r#"
device_id = "gw"
[mqtt.tls]
ca = "certs/ca.pem"
cert = "/abs/device.pem"
key = "certs/device.key"
alpn = "x-amzn-mqtt-ca"
"#,
    )
    .unwrap();
    let tls = config.mqtt.tls.unwrap();
    assert_eq!(tls.ca, PathBuf::from("/etc/osprey/certs/ca.pem"));
    let client = tls.client.unwrap();
    assert_eq!(client.cert, PathBuf::from("/abs/device.pem"));
    assert_eq!(client.key, PathBuf::from("/etc/osprey/certs/device.key"));
    assert_eq!(tls.alpn.as_deref(), Some("x-amzn-mqtt-ca"));
}

#[test]
fn unknown_field_points_at_the_key() {
    let (line, col, msg) = error_at("device_id = \"p\"\n[sampling]\n  intervall_ms = 5\n");
    assert_eq!((line, col), (3, 3), "{msg}");
    assert!(msg.contains("intervall_ms"), "{msg}");
}

#[test]
fn wrong_type_points_at_the_value() {
    let (line, col, msg) = error_at("device_id = \"p\"\n[mqtt]\nport = \"1883\"\n");
    assert_eq!((line, col), (3, 8), "{msg}");
}

#[test]
fn out_of_range_port_is_located() {
    let (line, col, _) = error_at("device_id = \"p\"\n[mqtt]\nport = 70000\n");
    assert_eq!((line, col), (3, 8));
}

#[test]
fn invalid_device_id_is_located() {
    let (line, col, msg) = error_at("# gateway\ndevice_id = \"pump 7\"\n");
    assert_eq!((line, col), (2, 13));
    assert!(
        msg.starts_with("2:13: device_id: invalid device id"),
        "{msg}"
    );
}

#[test]
fn missing_device_id_is_reported() {
    let err = parse("[sampling]\ninterval_ms = 10\n").unwrap_err();
    assert!(err.to_string().contains("device_id"), "{err}");
}

#[test]
fn bad_values_are_located() {
    let cases = [
        (
            "[sampling]\ninterval_ms = 0\n",
            (3, 15),
            "sampling.interval_ms",
        ),
        ("[batch]\nmax_readings = 0\n", (3, 16), "batch.max_readings"),
        (
            "[batch]\nmax_readings = 5000\n",
            (3, 16),
            "batch.max_readings",
        ),
        ("[batch]\nmax_age_ms = 0\n", (3, 14), "batch.max_age_ms"),
        (
            "[batch]\ntarget_bytes = 100\n",
            (3, 16),
            "batch.target_bytes",
        ),
        (
            "[batch]\ntarget_bytes = 200000\n",
            (3, 16),
            "batch.target_bytes",
        ),
        ("[mqtt]\ninflight = 0\n", (3, 12), "mqtt.inflight"),
        ("[mqtt]\nport = 0\n", (3, 8), "mqtt.port"),
        ("[mqtt]\nhost = \" \"\n", (3, 8), "mqtt.host"),
        ("[mqtt]\nclient_id = \"\"\n", (3, 13), "mqtt.client_id"),
        ("[journal]\npath = \"\"\n", (3, 8), "journal.path"),
        (
            "[status]\ninterval_s = 86401\n",
            (3, 14),
            "status.interval_s",
        ),
        (
            "[simulator]\nscenario = \"broken\"\n",
            (3, 12),
            "unknown variant",
        ),
        (
            "[journal]\nbackend = \"rocksdb\"\n",
            (3, 11),
            "unknown variant `rocksdb`, expected `segment` or `sled`",
        ),
    ];
    for (body, expected, needle) in cases {
        let text = format!("device_id = \"p\"\n{body}");
        let (line, col, msg) = error_at(&text);
        assert_eq!((line, col), expected, "{body}: {msg}");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

#[test]
fn tls_cert_without_key_is_rejected() {
    let (line, _, msg) =
        error_at("device_id = \"p\"\n[mqtt.tls]\nca = \"ca.pem\"\ncert = \"d.pem\"\n");
    assert!(line >= 2, "{msg}");
    assert!(msg.contains("both `cert` and `key`"), "{msg}");
}

const RULE: &str = r#"
[[rules]]
id = "bearing-hot"
sensor = "bearing"
metric = "temperature"
when = "above"
threshold = 80.0
clear = 75.0
"#;

#[test]
fn invalid_rule_names_its_entry() {
    let bad = RULE.replace("clear = 75.0", "clear = 85.0");
    let text = format!("device_id = \"p\"\n{RULE}{bad}");
    let (line, _, msg) = error_at(&text);
    assert!(msg.contains("[[rules]] entry 2"), "{msg}");
    assert!(msg.contains("clear level 85"), "{msg}");
    // The second entry starts after the first one's 8 lines.
    assert!((10..=12).contains(&line), "line {line}: {msg}");
}

#[test]
fn duplicate_rule_ids_are_rejected() {
    let text = format!("device_id = \"p\"\n{RULE}{RULE}");
    let (_, _, msg) = error_at(&text);
    assert!(msg.contains("duplicate rule id \"bearing-hot\""), "{msg}");
}

#[test]
fn nan_threshold_is_refused_where_it_stands_not_called_missing() {
    let text = format!(
        "device_id = \"p\"\n{}",
        RULE.replace("threshold = 80.0", "threshold = nan")
    );
    let (line, col, msg) = error_at(&text);
    assert!(msg.contains("`threshold` is nan"), "{msg}");
    assert!(!msg.contains("needs `threshold`"), "{msg}");
    assert_eq!((line, col), (8, 13), "{msg}");
}

#[test]
fn unknown_rule_field_is_located() {
    let text = format!("device_id = \"p\"\n{RULE}thresold = 1.0\n");
    let (line, col, msg) = error_at(&text);
    assert_eq!((line, col), (10, 1), "{msg}");
}

#[test]
fn load_prefixes_errors_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "device_id = \"p\"\n[mqtt]\nkeep_alive = 3\n").unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}:3:1: ", path.display())),
        "{msg}"
    );
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
}

#[test]
fn simulated_configs_validate_and_reject_bad_ids() {
    let config = Config::simulated(
        "sim-01",
        7,
        Scenario::Degrading,
        "/tmp/j",
        "localhost",
        1883,
    )
    .unwrap();
    assert_eq!(config.mqtt.client_id, "sim-01");
    assert_eq!(config.rules.len(), 2);
    assert!(Config::simulated("bad id", 7, Scenario::Steady, "/tmp/j", "h", 1).is_err());

    let mut changed = config.clone();
    changed.sampling.interval = Duration::ZERO;
    let msg = changed.validate().unwrap_err().to_string();
    assert_eq!(msg, "sampling.interval_ms: must be at least 1 ms");
}

#[test]
fn every_structural_error_is_reported_at_once_in_file_order() {
    let text = format!(
        "device_id = \"p\"\n[sampling]\ninterval_ms = \"x\"\n[mqtt]\nprot = 1883\n{}{}",
        RULE.replace("threshold = 80.0", "threshold = nan"),
        RULE.replace("bearing-hot", "b2")
            .replace("\"above\"", "\"abve\"")
    );
    let err = parse(&text).expect_err("four errors");
    let ConfigError::Several(all) = &err else {
        panic!("expected every error, got one: {err}");
    };
    let lines: Vec<usize> = all
        .iter()
        .map(|e| e.location().expect("located").line)
        .collect();
    assert_eq!(lines, [3, 5, 12, 19], "{err}");
    let text = err.to_string();
    for part in [
        "expected u64",
        "unknown field `prot`",
        "`threshold` is nan",
        "unknown variant `abve`",
        "4 errors",
    ] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
    // One error alone is reported as before, not as a list.
    let one = parse("device_id = \"p\"\n[mqtt]\nprot = 1\n").expect_err("one error");
    assert!(matches!(one, ConfigError::Invalid { .. }), "{one}");
}

#[test]
fn a_removal_never_invents_a_missing_field() {
    // `ca` has the wrong type; removing it to look further must not add "missing field `ca`".
    let text = "device_id = \"p\"\n[mqtt.tls]\nca = 1\n[sampling]\ninterval_ms = \"x\"\n";
    let err = parse(text).expect_err("two errors");
    let text = err.to_string();
    assert!(!text.contains("missing field"), "{text}");
    assert!(text.contains("expected a string"), "{text}");
    assert!(text.contains("expected u64"), "{text}");
    assert!(text.contains("2 errors"), "{text}");
}

#[test]
fn every_invalid_rule_is_reported_at_once() {
    let bad = |id: &str| {
        RULE.replace("bearing-hot", id)
            .replace("clear = 75.0", "clear = 85.0")
    };
    let text = format!("device_id = \"p\"\n{}{RULE}{}", bad("r1"), bad("r3"));
    let err = parse(&text).expect_err("two bad rules");
    let text = err.to_string();
    assert!(text.contains("[[rules]] entry 1"), "{text}");
    assert!(text.contains("[[rules]] entry 3"), "{text}");
    assert!(!text.contains("[[rules]] entry 2"), "{text}");
    assert!(text.contains("2 errors"), "{text}");
}

#[test]
fn every_syntax_error_is_reported_at_once() {
    let err = parse("device_id = \"p\"\na = \nb = \n").expect_err("two syntax errors");
    let ConfigError::Several(all) = &err else {
        panic!("expected both syntax errors: {err}");
    };
    assert_eq!(all.len(), 2, "{err}");
}

#[test]
fn journal_backend_is_read() {
    for (name, backend) in [
        ("segment", crate::journal::Backend::Segment),
        ("sled", crate::journal::Backend::Sled),
    ] {
        let config = parse(&format!(
            "device_id = \"p\"\n[journal]\nbackend = \"{name}\"\n"
        ))
        .unwrap();
        assert_eq!(config.journal_backend, backend);
    }
}

#[test]
fn target_bytes_is_read_and_leaves_the_hard_limit_alone() {
    let config =
        parse("device_id = \"gw\"\n[batch]\ntarget_bytes = 20000\nmax_bytes = 65536\n").unwrap();
    assert_eq!(config.batch.target_bytes, 20_000);
    assert_eq!(config.batch.max_bytes, 65_536);
}
