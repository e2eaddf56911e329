//! Deployment artifacts checked as far as this machine allows: the CloudFormation template
//! (cfn-lint and what it wires), the Greengrass recipe (parsed, artifacts map to cross/build.sh
//! outputs; its lifecycle against a stand-in nucleus is tests/tests/greengrass.rs), the systemd
//! unit (systemd-analyze verify), plain logs for journald (no ANSI escapes off a terminal), the
//! Pi installer (its plan for each Pi model and OS image; install, upgrade, rollback and
//! uninstall over a real sshd into a temporary root, and onto "/" in a private mount namespace
//! with a systemctl stand-in), the device provisioning script against moto's IoT API, and
//! shellcheck on every script.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use osprey_agent::config::Config;
use osprey_protocol::ThresholdRule;
use osprey_tests::{
    bin, free_port, moto_endpoint, unique_name, wait_until, workspace_root, Certs, Proc,
};
use serde_yaml_ng::Value;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn root_file(rel: &str) -> PathBuf {
    let path = workspace_root().join(rel);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

fn read(rel: &str) -> String {
    fs::read_to_string(root_file(rel)).unwrap()
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// `value[a][b]...`, panicking with the path when something is missing.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("missing {} in {v:?}", path.join(".")))
    })
}

/// The statements of the IoT policy resource `name` in template `t`.
fn policy_statements<'a>(t: &'a Value, name: &str) -> &'a Vec<Value> {
    at(
        t,
        &[
            "Resources",
            name,
            "Properties",
            "PolicyDocument",
            "Statement",
        ],
    )
    .as_sequence()
    .unwrap()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        // CloudFormation short forms (!Sub, !Ref, ...) parse as tagged values.
        Value::Tagged(t) => text(&t.value),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A scalar or a list of scalars, as text.
fn texts(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(list) => list.iter().map(text).collect(),
        one => vec![text(one)],
    }
}

/// Runs `cmd` to completion; panics when it cannot start.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and requires exit 0, showing its output otherwise.
fn succeed(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Requires that a command failed and that its stderr says `says`.
fn fails_saying(out: &Output, says: &str) {
    assert!(
        !out.status.success(),
        "succeeded, expected a failure saying {says:?}"
    );
    assert!(
        stderr(out).contains(says),
        "want {says:?} in:\n{}",
        stderr(out)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A program from tests/run.sh's venv (cfn-lint, aws), or from PATH.
fn venv_tool(name: &str) -> PathBuf {
    let venv = workspace_root().join(".osprey-test/venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    system_tool(name)
}

/// A program on PATH; panics with how to install it.
fn system_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run the suite through `bash tests/run.sh`, which installs it")
        })
}

/// The targets cross/build.sh builds (its ALL_TARGETS line).
fn cross_targets() -> Vec<String> {
    let script = read("cross/build.sh");
    let line = script
        .lines()
        .find(|l| l.starts_with("ALL_TARGETS=("))
        .expect("cross/build.sh has no ALL_TARGETS=(...) line");
    line.trim_start_matches("ALL_TARGETS=(")
        .trim_end_matches(')')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn agent_check(config: &Path) -> Output {
    output(Command::new(bin("osprey-agent")).arg("check").arg(config))
}

/// Copies the test CA, device certificate and key to the names an AWS-style config uses.
/// Puts test certificates where a device keeps them, the key 0600 as provisioning and the
/// Greengrass nucleus leave it (`check` refuses a key every user can read).
fn place_certs(certs: &Certs, dir: &Path, ca: &str, cert: &str, key: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir).unwrap();
    fs::copy(&certs.ca, dir.join(ca)).unwrap();
    fs::copy(&certs.client.cert, dir.join(cert)).unwrap();
    fs::copy(&certs.client.key, dir.join(key)).unwrap();
    fs::set_permissions(dir.join(key), fs::Permissions::from_mode(0o600)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// CloudFormation
// ---------------------------------------------------------------------------------------------

#[test]
fn cfn_lint_passes_on_the_template_and_fails_on_a_broken_copy() {
    let template = root_file("deploy/aws/template.yaml");
    let lint = venv_tool("cfn-lint");
    succeed(Command::new(&lint).arg(&template));

    // The same linter must reject a mistake, or the pass above proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let text =
        read("deploy/aws/template.yaml").replace("TelemetryStream.Arn", "TelemetryStream.Nope");
    fs::write(&broken, text).unwrap();
    let out = output(Command::new(&lint).arg(&broken));
    assert!(!out.status.success(), "cfn-lint accepted a broken GetAtt");
    assert!(stdout(&out).contains("Nope"), "{}", stdout(&out));
}

#[test]
fn template_scopes_devices_to_their_topics_and_wires_rule_stream_lambda_and_alarms() {
    let t = yaml("deploy/aws/template.yaml");
    let resources = at(&t, &["Resources"]).as_mapping().unwrap();
    let of_type = |ty: &str| -> Vec<&Value> {
        resources
            .values()
            .filter(|r| r.get("Type").and_then(Value::as_str) == Some(ty))
            .collect()
    };

    // Topic rule: the protocol's data topics into the stream, keyed by the device level.
    let rule = at(
        &t,
        &[
            "Resources",
            "TelemetryRule",
            "Properties",
            "TopicRulePayload",
        ],
    );
    let sql = text(at(rule, &["Sql"]));
    assert!(
        sql.contains(&format!("'{}'", osprey_protocol::topic::ALL_DATA)),
        "{sql}"
    );
    let topic = osprey_protocol::topic::data("pump-7", osprey_protocol::Kind::Telemetry);
    assert_eq!(
        topic.split('/').nth(2),
        Some("pump-7"),
        "device is topic level 3"
    );
    let kinesis = &at(rule, &["Actions"]).as_sequence().unwrap()[0]["Kinesis"];
    assert_eq!(text(at(kinesis, &["PartitionKey"])), "${topic(3)}");
    assert!(
        rule.get("ErrorAction").is_some(),
        "the topic rule needs an error action"
    );

    // Device policy: every statement is about the connecting thing's own name, no wildcards.
    let statements = policy_statements(&t, "DevicePolicy");
    let mut actions = Vec::new();
    for s in statements {
        for resource in texts(at(s, &["Resource"])) {
            assert!(
                resource.contains("${!iot:Connection.Thing.ThingName}"),
                "not scoped to the thing: {resource}"
            );
        }
        actions.push(text(at(s, &["Action"])));
    }
    assert!(actions.iter().all(|a| !a.contains('*')), "{actions:?}");
    let publish = statements
        .iter()
        .find(|s| text(&s["Action"]) == "iot:Publish")
        .expect("no iot:Publish statement");
    // Its own data topics, directly and through Basic Ingest to the telemetry rule: nothing else.
    let published = texts(&publish["Resource"]);
    assert_eq!(published.len(), 2, "{published:?}");
    assert!(published[0].ends_with(":topic/dt/osprey/${!iot:Connection.Thing.ThingName}/*"));
    assert!(published[1].ends_with(
        ":topic/$aws/rules/${TelemetryRuleName}/dt/osprey/${!iot:Connection.Thing.ThingName}/*"
    ));
    let rule = at(&t, &["Resources", "TelemetryRule", "Properties"]);
    assert_eq!(text(at(rule, &["RuleName"])), "TelemetryRuleName");

    // The aggregator: osprey-lambda on arm64, custom runtime, partial batch failures.
    let function = at(&t, &["Resources", "AggregatorFunction", "Properties"]);
    assert_eq!(text(at(function, &["Runtime"])), "provided.al2023");
    assert_eq!(text(at(function, &["Handler"])), "bootstrap");
    assert_eq!(text(&at(function, &["Architectures"])[0]), "arm64");
    let mapping = at(&t, &["Resources", "AggregatorEventSource", "Properties"]);
    assert_eq!(
        text(&at(mapping, &["FunctionResponseTypes"])[0]),
        "ReportBatchItemFailures"
    );

    // Stream, tables, topic, alarms on both iterator ages.
    assert_eq!(of_type("AWS::Kinesis::Stream").len(), 1);
    assert_eq!(of_type("AWS::DynamoDB::Table").len(), 3);
    // The tables the osprey-lambda binary reads from its environment (lambda/src/main.rs).
    let lambda_main = read("lambda/src/main.rs");
    let env = at(function, &["Environment", "Variables"]);
    for var in ["OSPREY_STATE_TABLE", "OSPREY_DEAD_LETTER_TABLE"] {
        assert!(
            lambda_main.contains(var),
            "osprey-lambda no longer reads {var}"
        );
        assert!(env.get(var).is_some(), "the function does not set {var}");
    }
    assert_eq!(of_type("AWS::SNS::Topic").len(), 1);
    let metrics: Vec<String> = of_type("AWS::CloudWatch::Alarm")
        .iter()
        .map(|a| text(at(a, &["Properties", "MetricName"])))
        .collect();
    assert!(
        metrics.contains(&"GetRecords.IteratorAgeMilliseconds".to_owned()),
        "{metrics:?}"
    );
    assert!(metrics.contains(&"IteratorAge".to_owned()), "{metrics:?}");

    // The rules' failed puts land in the history bucket, where `osprey replay` looks by
    // default; the error action may write only there.
    for rule in ["TelemetryRule", "PresenceRule"] {
        let s3 = at(
            &t,
            &[
                "Resources",
                rule,
                "Properties",
                "TopicRulePayload",
                "ErrorAction",
                "S3",
            ],
        );
        assert_eq!(text(at(s3, &["BucketName"])), "HistoryBucket");
        assert!(text(at(s3, &["Key"])).starts_with("rule-errors/"), "{rule}");
    }
    let telemetry_errors = text(at(
        &t,
        &[
            "Resources",
            "TelemetryRule",
            "Properties",
            "TopicRulePayload",
            "ErrorAction",
            "S3",
            "Key",
        ],
    ));
    let replay_help = succeed(Command::new(osprey_tests::bin("osprey")).args(["replay", "--help"]));
    let default_prefix = "rule-errors/telemetry/";
    assert!(
        telemetry_errors.starts_with(default_prefix),
        "{telemetry_errors}"
    );
    assert!(
        stdout(&replay_help).contains(default_prefix),
        "{}",
        stdout(&replay_help)
    );
    let bucket = at(&t, &["Resources", "HistoryBucket"]);
    assert_eq!(text(at(bucket, &["DeletionPolicy"])), "Retain");
    assert_eq!(text(at(bucket, &["UpdateReplacePolicy"])), "Retain");
    let block = at(bucket, &["Properties", "PublicAccessBlockConfiguration"]);
    for setting in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[setting], Value::Bool(true), "{setting}");
    }
    assert!(at(bucket, &["Properties", "BucketEncryption"]).is_mapping());

    // The archive: stream -> Firehose -> the transformer (osprey-lambda in its Firehose mode)
    // -> Parquet with the Glue table's schema, which is serve's archive schema, partitioned
    // by date and hour; all of it only with ArchiveEnabled.
    let firehose = at(&t, &["Resources", "ArchiveDeliveryStream", "Properties"]);
    assert_eq!(
        text(at(firehose, &["DeliveryStreamType"])),
        "KinesisStreamAsSource"
    );
    assert_eq!(
        text(at(
            firehose,
            &["KinesisStreamSourceConfiguration", "KinesisStreamARN"]
        )),
        "TelemetryStream.Arn"
    );
    let s3 = at(firehose, &["ExtendedS3DestinationConfiguration"]);
    assert_eq!(
        text(at(s3, &["Prefix"])),
        "readings/date=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
    );
    assert!(text(at(s3, &["ErrorOutputPrefix"])).contains("!{firehose:error-output-type}"));
    let processor = &at(s3, &["ProcessingConfiguration", "Processors"])[0];
    assert_eq!(
        text(&processor["Parameters"][0]["ParameterValue"]),
        "ArchiveTransformFunction.Arn"
    );
    let transformer = at(&t, &["Resources", "ArchiveTransformFunction", "Properties"]);
    assert_eq!(
        text(at(
            transformer,
            &["Environment", "Variables", "OSPREY_MODE"]
        )),
        "firehose-transform"
    );
    assert!(read("lambda/src/config.rs").contains("\"firehose-transform\""));
    let conversion = at(s3, &["DataFormatConversionConfiguration"]);
    assert!(at(
        conversion,
        &["InputFormatConfiguration", "Deserializer", "OpenXJsonSerDe"]
    )
    .is_mapping());
    assert!(at(
        conversion,
        &["OutputFormatConfiguration", "Serializer", "ParquetSerDe"]
    )
    .is_mapping());
    let table = at(
        &t,
        &["Resources", "ArchiveTable", "Properties", "TableInput"],
    );
    let columns: Vec<String> = at(table, &["StorageDescriptor", "Columns"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| text(&c["Name"]))
        .collect();
    assert_eq!(columns, osprey_cloud::archive::rows::COLUMNS);
    let partitions: Vec<String> = at(table, &["PartitionKeys"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| text(&c["Name"]))
        .collect();
    assert_eq!(partitions, ["date", "hour"]);
    for name in [
        "ArchiveDatabase",
        "ArchiveTable",
        "ArchiveTransformFunction",
        "ArchiveDeliveryRole",
        "ArchiveDeliveryStream",
    ] {
        assert_eq!(
            text(at(&t, &["Resources", name, "Condition"])),
            "HasArchive"
        );
    }

    // Least privilege: no IAM statement grants every action or a service wildcard.
    for role in of_type("AWS::IAM::Role") {
        for policy in at(role, &["Properties", "Policies"]).as_sequence().unwrap() {
            for s in at(policy, &["PolicyDocument", "Statement"])
                .as_sequence()
                .unwrap()
            {
                let actions = texts(at(s, &["Action"]));
                assert!(actions.iter().all(|a| !a.contains('*')), "{actions:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Greengrass
// ---------------------------------------------------------------------------------------------

/// The recipe's manifests as (architecture, manifest).
fn manifests(recipe: &Value) -> Vec<(String, &Value)> {
    at(recipe, &["Manifests"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| (text(at(m, &["Platform", "architecture"])), m))
        .collect()
}

/// The file names of a manifest's artifacts.
fn artifact_names(manifest: &Value) -> Vec<String> {
    at(manifest, &["Artifacts"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| {
            let uri = text(at(a, &["URI"]));
            assert!(uri.starts_with("s3://"), "{uri}");
            uri.rsplit('/').next().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn recipe_artifacts_are_cross_build_outputs_and_its_defaults_are_valid_rules() {
    let recipe = yaml("deploy/greengrass/recipe.yaml");
    assert_eq!(text(at(&recipe, &["RecipeFormatVersion"])), "2020-01-25");
    let targets = cross_targets();
    let m = manifests(&recipe);
    let archs: Vec<&str> = m.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(archs, ["aarch64", "arm"]);
    let defaults = at(&recipe, &["ComponentConfiguration", "DefaultConfiguration"]);

    for (arch, manifest) in &m {
        let names = artifact_names(manifest);
        let binary = names
            .iter()
            .find_map(|n| n.strip_prefix("osprey-agent-"))
            .unwrap_or_else(|| panic!("{arch}: no osprey-agent-<triple> artifact in {names:?}"));
        assert!(
            targets.iter().any(|t| t == binary),
            "{binary} is not built by cross/build.sh ({targets:?})"
        );
        let want = if arch == "aarch64" {
            "aarch64-"
        } else {
            "armv7-"
        };
        assert!(binary.starts_with(want), "{arch} manifest ships {binary}");
        assert_eq!(names.len(), 1, "{arch}: one artifact, the agent: {names:?}");
        // Every file the lifecycle runs is one of the artifacts; every configuration key it
        // reads has a default.
        let lifecycle = serde_yaml_ng::to_string(at(manifest, &["Lifecycle"])).unwrap();
        for used in lifecycle.split("{artifacts:path}/").skip(1) {
            let name: String = used
                .chars()
                .take_while(|c| !matches!(c, '"' | ' ' | '\n'))
                .collect();
            assert!(
                names.contains(&name),
                "{arch}: lifecycle runs {name}, not an artifact"
            );
        }
        for used in lifecycle.split("{configuration:/").skip(1) {
            let key = used.split('}').next().unwrap();
            assert!(
                defaults.get(key).is_some(),
                "{arch}: {{configuration:/{key}}} has no default"
            );
        }
    }

    let rules: Vec<ThresholdRule> =
        serde_yaml_ng::from_value(at(defaults, &["agent", "rules"]).clone()).unwrap();
    assert!(!rules.is_empty());
    for rule in &rules {
        rule.validate()
            .unwrap_or_else(|e| panic!("default rule {}: {e}", rule.id));
    }
}

// ---------------------------------------------------------------------------------------------
// systemd unit and the Pi installer
// ---------------------------------------------------------------------------------------------

/// `Key=value` lines of a unit file, in order.
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// `systemd-analyze verify` on `unit` with the agent path replaced by `agent`; returns what it
/// said about the unit file (nothing when it is clean).
fn verify_unit(unit: &str, agent: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey-agent.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/osprey-agent", agent.to_str().unwrap()),
    )
    .unwrap();
    let out = output(
        Command::new(system_tool("systemd-analyze"))
            .arg("verify")
            .arg(&path),
    );
    let about_unit: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.contains("osprey-agent.service"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && about_unit.is_empty() {
        return stderr(&out);
    }
    about_unit.join("\n")
}

#[test]
fn systemd_unit_verifies_and_matches_the_installer_and_sysusers() {
    let unit = read("deploy/pi/osprey-agent.service");
    let entries = unit_entries(&unit);
    let get = |k: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("User"), ["osprey"]);
    assert_eq!(get("SupplementaryGroups"), ["i2c gpio"]);
    assert_eq!(get("StateDirectory"), ["osprey-agent"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("DeviceAllow"), ["char-i2c rw", "char-gpiochip rw"]);
    assert!(get("ExecStart")[0]
        .starts_with("/usr/local/bin/osprey-agent run --config /etc/osprey-agent/agent.toml"));
    // `systemctl reload` sends SIGHUP, on which the agent rereads its config.
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert!(
        read("agent/src/main.rs").contains("SignalKind::hangup()"),
        "the agent no longer reloads on SIGHUP"
    );
    // Started after the clock is synced (where systemd-time-wait-sync makes that mean something).
    for key in ["Wants", "After"] {
        assert!(
            get(key)
                .iter()
                .any(|v| v.split_whitespace().any(|u| u == "time-sync.target")),
            "{key}= lacks time-sync.target"
        );
    }

    // The user and groups it names are the ones the installer creates.
    let sysusers = read("deploy/pi/osprey-agent.sysusers");
    for line in [
        "u osprey ",
        "m osprey i2c",
        "m osprey gpio",
        "g i2c ",
        "g gpio ",
    ] {
        assert!(
            sysusers.lines().any(|l| l.starts_with(line)),
            "sysusers lacks {line:?}"
        );
    }
    let installer = read("deploy/pi/install.sh");
    for path in [
        "/usr/local/bin/osprey-agent",
        "/etc/osprey-agent/agent.toml",
        "/etc/systemd/system/osprey-agent.service",
    ] {
        assert!(
            installer.contains(path),
            "install.sh does not install {path}"
        );
    }

    assert_eq!(
        verify_unit(&unit, &bin("osprey-agent")),
        "",
        "systemd-analyze verify complained"
    );
    // ... and it does complain about a bad value, so the clean run above means something.
    let said = verify_unit(
        &unit.replace("Restart=on-failure", "Restart=sometimes"),
        &bin("osprey-agent"),
    );
    assert!(said.contains("sometimes"), "{said}");
}

/// Runs `program` (a shell command line) for about two seconds (SIGTERM then) and returns what
/// it wrote to its terminal: with `tty`, under a pseudo-terminal (`script`), else with stdout
/// and stderr piped, as under systemd, where stderr is journald.
fn logs_of(program: &str, tty: bool, no_color: Option<&str>) -> Vec<u8> {
    let run = format!("exec timeout -s TERM 2 {program}");
    let mut cmd = if tty {
        let mut c = Command::new(system_tool("script"));
        c.args(["-qec", &run, "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("{run} 2>&1")]);
        c
    };
    cmd.env_remove("NO_COLOR").env("RUST_LOG", "info");
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = output(&mut cmd);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("INFO"),
        "{program} logged nothing at INFO:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out.stdout
}

#[test]
fn logs_carry_no_ansi_escapes_unless_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = read("deploy/config/simulator.toml")
        .replace(
            "/var/lib/osprey-agent/journal",
            dir.path().join("journal").to_str().unwrap(),
        )
        .replace("port = 1883", &format!("port = {}", free_port()));
    fs::write(&config, text).unwrap();
    let escapes = |bytes: &[u8]| bytes.iter().filter(|&&b| b == 0x1b).count();

    // The agent (journald under systemd) and the cloud binary (`osprey demo` logs at once).
    for program in [
        format!(
            "'{}' run --config '{}'",
            bin("osprey-agent").display(),
            config.display()
        ),
        format!("'{}' demo", bin("osprey").display()),
    ] {
        // Piped: plain text, with or without NO_COLOR.
        assert_eq!(escapes(&logs_of(&program, false, None)), 0, "{program}");
        assert_eq!(
            escapes(&logs_of(&program, false, Some("1"))),
            0,
            "{program}"
        );
        // On a terminal: colours, unless NO_COLOR is set (an empty NO_COLOR does not count).
        assert!(escapes(&logs_of(&program, true, None)) > 0, "{program}");
        assert!(escapes(&logs_of(&program, true, Some(""))) > 0, "{program}");
        assert_eq!(escapes(&logs_of(&program, true, Some("1"))), 0, "{program}");
    }
}

/// Runs the installer in dry-run mode for a host with `facts` ("KEY=VALUE ..." or the short
/// "ARCH GLIBC"), with `extra` options.
fn plan_with(facts: &str, extra: &[&str]) -> Output {
    output(
        Command::new("bash")
            .arg(root_file("deploy/pi/install.sh"))
            .args(["--dry-run", "--facts", facts])
            .args(extra)
            .arg("pi@gateway.invalid"),
    )
}

fn plan_for(facts: &str) -> Output {
    plan_with(facts, &[])
}

/// What `uname -m`, `getconf LONG_BIT`, `dpkg --print-architecture`, `getconf GNU_LIBC_VERSION`
/// and the loaders in /lib say on each Raspberry Pi model under each Raspberry Pi OS image.
const PI_IMAGES: &[(&str, &str, Option<&str>)] = &[
    (
        "Pi 4/5, 64-bit Raspberry Pi OS bookworm",
        "machine=aarch64 long_bit=64 dpkg=arm64 glibc=2.36 loaders=aarch64",
        Some("aarch64-unknown-linux-gnu"),
    ),
    (
        "Pi 4/5, 64-bit Raspberry Pi OS bullseye (glibc 2.31)",
        "machine=aarch64 long_bit=64 dpkg=arm64 glibc=2.31 loaders=aarch64",
        Some("aarch64-unknown-linux-musl"),
    ),
    (
        // The reported bug: a 64-bit kernel (uname -m = aarch64) under an armhf userland.
        "Pi 4/5, 32-bit Raspberry Pi OS bookworm (64-bit kernel)",
        "machine=aarch64 long_bit=32 dpkg=armhf glibc=2.36 loaders=armhf",
        Some("armv7-unknown-linux-gnueabihf"),
    ),
    (
        "Pi 4/5, 32-bit userland without dpkg (64-bit kernel)",
        "machine=aarch64 long_bit=32 dpkg=unknown glibc=2.36 loaders=armhf",
        Some("armv7-unknown-linux-gnueabihf"),
    ),
    (
        "Pi 4/5, 32-bit userland, only the loaders known (64-bit kernel)",
        "machine=aarch64 glibc=2.36 loaders=armhf",
        Some("armv7-unknown-linux-gnueabihf"),
    ),
    (
        "Pi 4/5, 32-bit kernel (armv8l personality), 32-bit Raspberry Pi OS",
        "machine=armv8l long_bit=32 dpkg=armhf glibc=2.36 loaders=armhf",
        Some("armv7-unknown-linux-gnueabihf"),
    ),
    (
        "Pi 3, 32-bit Raspberry Pi OS bookworm",
        "machine=armv7l long_bit=32 dpkg=armhf glibc=2.36 loaders=armhf",
        Some("armv7-unknown-linux-gnueabihf"),
    ),
    (
        "Pi 3, 64-bit Raspberry Pi OS bookworm",
        "machine=aarch64 long_bit=64 dpkg=arm64 glibc=2.36 loaders=aarch64,armhf",
        Some("aarch64-unknown-linux-gnu"),
    ),
    (
        "64-bit userland without the glibc loader (musl distribution)",
        "machine=aarch64 long_bit=64 dpkg=unknown glibc=none loaders=none",
        Some("aarch64-unknown-linux-musl"),
    ),
    (
        "Pi 3, 32-bit Raspberry Pi OS bullseye (glibc 2.31)",
        "machine=armv7l long_bit=32 dpkg=armhf glibc=2.31 loaders=armhf",
        Some("armv7-unknown-linux-musleabihf"),
    ),
    (
        "Pi Zero / Pi 1, 32-bit Raspberry Pi OS (ARMv6 CPU)",
        "machine=armv6l long_bit=32 dpkg=armhf glibc=2.36 loaders=armhf",
        None,
    ),
    (
        "Pi Zero, Debian armel",
        "machine=armv6l long_bit=32 dpkg=armel glibc=2.36 loaders=armel",
        None,
    ),
    (
        "Pi 4/5, armhf userland whose glibc loader is missing (64-bit kernel)",
        "machine=aarch64 long_bit=32 dpkg=armhf glibc=2.36 loaders=none",
        Some("armv7-unknown-linux-musleabihf"),
    ),
];

#[test]
fn pi_installer_plans_by_the_userland_for_each_pi_model_and_os_image() {
    for &(image, facts, triple) in PI_IMAGES {
        let out = plan_for(facts);
        match triple {
            Some(triple) => {
                assert!(out.status.success(), "{image}: {}", stderr(&out));
                let plan = stdout(&out);
                assert!(
                    plan.contains(&format!("  build     {triple} ("))
                        && plan.contains(&format!(
                            "target/{triple}/gateway/osprey-agent -> /usr/local/bin/osprey-agent"
                        )),
                    "{image}: want {triple}\n{plan}"
                );
                assert!(plan.contains(": first install\n"), "{image}: {plan}");
            }
            None => {
                assert!(!out.status.success(), "{image}: planned\n{}", stdout(&out));
                assert!(
                    stderr(&out).contains("error: ") && stdout(&out).is_empty(),
                    "{image}: {}",
                    stderr(&out)
                );
            }
        }
    }
    // The refusals say why.
    for (facts, says) in [
        (PI_IMAGES[10].1, "ARMv6 CPU"),
        (PI_IMAGES[11].1, "armel"),
        (
            "machine=aarch64 long_bit=64 glibc=2.36 loaders=aarch64 systemd=no",
            "no systemd",
        ),
        ("machine=aarch64 color=blue", "unknown fact 'color'"),
    ] {
        fails_saying(&plan_for(facts), says);
    }
    // A given binary must fit the userland, not the kernel: an x86_64 build for a 32-bit Pi 4.
    fails_saying(
        &plan_with(
            PI_IMAGES[2].1,
            &["--binary", bin("osprey-agent").to_str().unwrap()],
        ),
        "userland of pi@gateway.invalid is armv7l",
    );
}

/// A small C program cross-compiled by Debian's cross-gcc (`static_link`: no loader needed).
fn cross_elf(dir: &Path, gcc: &str, static_link: bool) -> PathBuf {
    let src = dir.join("hello.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let out = dir.join(format!("{gcc}{}", if static_link { "-static" } else { "" }));
    let mut cmd = Command::new(system_tool(gcc));
    if static_link {
        cmd.arg("-static");
    }
    succeed(cmd.arg("-o").arg(&out).arg(&src));
    out
}

#[test]
fn pi_installer_checks_a_given_binary_against_the_userland_and_its_loader() {
    let dir = tempfile::tempdir().unwrap();
    let armhf = cross_elf(dir.path(), "arm-linux-gnueabihf-gcc", false);
    let aarch64 = cross_elf(dir.path(), "aarch64-linux-gnu-gcc", false);
    let aarch64_static = cross_elf(dir.path(), "aarch64-linux-gnu-gcc", true);
    let given =
        |facts: &str, binary: &Path| plan_with(facts, &["--binary", binary.to_str().unwrap()]);
    let pi4_32 = PI_IMAGES[2].1;
    let pi4_64 = PI_IMAGES[0].1;
    let no_loader = PI_IMAGES[8].1;

    // The reported bug: a 32-bit OS on a Pi 4 takes the armhf build, not the aarch64 one.
    let out = given(pi4_32, &armhf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("armhf loader"), "{}", stderr(&out));
    fails_saying(
        &given(pi4_32, &aarch64),
        "built for aarch64 but the userland",
    );
    fails_saying(
        &given(pi4_32, &aarch64_static),
        "built for aarch64 but the userland",
    );
    // 64-bit OS: the aarch64 build; the armhf one is refused although the CPU could run it
    // (an arm64 image has no armhf loader).
    assert!(given(pi4_64, &aarch64).status.success());
    fails_saying(&given(pi4_64, &armhf), "built for armv7l but the userland");
    // No glibc loader: only a static build.
    assert!(given(no_loader, &aarch64_static).status.success());
    fails_saying(
        &given(no_loader, &aarch64),
        "needs the aarch64 dynamic loader",
    );
}

#[test]
fn pi_installer_plans_upgrades_that_keep_the_config_and_the_previous_binary() {
    let pi4 = PI_IMAGES[0].1;
    let example = "deploy/config/simulator.toml -> /etc/osprey-agent/agent.toml";

    // First install: the example config.
    let first = stdout(&plan_for(pi4));
    assert!(first.contains(example), "{first}");
    assert!(!first.contains("osprey-agent.previous"), "{first}");

    // Upgrade: the device's config and certificates stay; the old binary is kept for rollback.
    let upgrade = stdout(&plan_for(&format!("{pi4} installed=yes config=yes")));
    for want in [
        ": upgrade\n",
        "keep      /etc/osprey-agent/agent.toml (the device's",
        "keep      /etc/osprey-agent/certs",
        "keep      /usr/local/bin/osprey-agent -> /usr/local/bin/osprey-agent.previous",
        "(else roll back)",
    ] {
        assert!(upgrade.contains(want), "want {want:?} in\n{upgrade}");
    }
    assert!(!upgrade.contains(example), "{upgrade}");

    // ... unless a config is given.
    let config = root_file("deploy/config/pi-bme280-ds18b20.toml");
    let given = stdout(&plan_with(
        &format!("{pi4} installed=yes config=yes"),
        &["--config", config.to_str().unwrap()],
    ));
    assert!(
        given.contains("pi-bme280-ds18b20.toml -> /etc/osprey-agent/agent.toml"),
        "{given}"
    );

    // systemd-time-wait-sync is enabled where the image has it, unless told not to.
    let with_sync = format!("{pi4} time_wait_sync=yes");
    assert!(stdout(&plan_for(&with_sync)).contains("enable    systemd-time-wait-sync.service"));
    assert!(!stdout(&plan_with(&with_sync, &["--no-time-wait-sync"]))
        .contains("enable    systemd-time-wait-sync"));
    assert!(stdout(&plan_for(pi4)).contains("skip      systemd-time-wait-sync.service"));

    // Uninstall keeps config, certificates and journal unless purged.
    let uninstall = stdout(&plan_with(pi4, &["--uninstall"]));
    assert!(
        uninstall.contains("keep      /etc/osprey-agent"),
        "{uninstall}"
    );
    let purge = stdout(&plan_with(pi4, &["--uninstall", "--purge"]));
    assert!(purge.contains("remove    /etc/osprey-agent"), "{purge}");
}

#[test]
fn pi_installer_picks_the_build_for_the_host_architecture_and_glibc() {
    for (facts, triple) in [
        ("aarch64 2.36", "aarch64-unknown-linux-gnu"),
        ("aarch64 2.34", "aarch64-unknown-linux-gnu"),
        ("aarch64 2.33", "aarch64-unknown-linux-musl"),
        ("aarch64 2.31", "aarch64-unknown-linux-musl"),
        ("aarch64 none", "aarch64-unknown-linux-musl"),
        ("armv7l 2.36", "armv7-unknown-linux-gnueabihf"),
        ("armv7l 2.31", "armv7-unknown-linux-musleabihf"),
    ] {
        let out = plan_for(facts);
        assert!(out.status.success(), "{facts}: {}", stderr(&out));
        let artifact =
            format!("target/{triple}/gateway/osprey-agent -> /usr/local/bin/osprey-agent");
        assert!(
            stdout(&out).contains(&artifact),
            "{facts}: want {triple}\n{}",
            stdout(&out)
        );
        assert!(
            stdout(&out).contains("systemctl enable osprey-agent.service"),
            "{}",
            stdout(&out)
        );
    }
    for (facts, says) in [("armv6l 2.36", "ARMv6"), ("x86_64 2.36", "--binary")] {
        fails_saying(&plan_for(facts), says);
    }
}

/// An OpenSSH server on a loopback port that accepts one throwaway key, killed on drop.
struct Sshd {
    port: u16,
    key: PathBuf,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        Sshd::start_in(None)
    }

    /// With `namespace`, sshd (and so every session) runs in a private mount namespace
    /// prepared by that shell script first (`unshare --mount`).
    fn start_in(namespace: Option<&str>) -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("sshd not found: run the suite through `bash tests/run.sh` (installs openssh-server)");
        // sshd refuses to start without its privilege separation directory.
        fs::create_dir_all("/run/sshd")
            .expect("cannot create /run/sshd: run the suite as root (tests/run.sh)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["host", "user"] {
            succeed(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(d.join(name)),
            );
        }
        fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = d.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
                 PidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
                host = d.join("host").display(),
                keys = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let mut cmd = match namespace {
            None => Command::new(sshd),
            Some(prepare) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-ec"])
                    .arg(format!("{prepare}\nexec \"$@\""))
                    .arg("sh")
                    .arg(sshd);
                c
            }
        };
        let mut proc = Proc::spawn(cmd.arg("-D").arg("-e").arg("-f").arg(&config));
        let ready = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            ready.is_some() && proc.is_running(),
            "sshd did not start:\n{}",
            proc.logs()
        );
        Sshd {
            port,
            key: d.join("user"),
            _proc: proc,
            _dir: dir,
        }
    }

    /// The installer's SSH options for this server.
    fn options(&self) -> Vec<String> {
        [
            "-p",
            &self.port.to_string(),
            "-i",
            self.key.to_str().unwrap(),
            "--ssh-opt",
            "StrictHostKeyChecking=no",
            "--ssh-opt",
            "UserKnownHostsFile=/dev/null",
            "--ssh-opt",
            "LogLevel=ERROR",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

#[test]
fn pi_installer_installs_over_ssh_into_a_root() {
    let sshd = Sshd::start();
    let user = String::from_utf8(succeed(Command::new("id").arg("-un")).stdout).unwrap();
    let host = format!("{}@127.0.0.1", user.trim());
    let dest = tempfile::tempdir().unwrap();
    let r = dest.path();
    // A device config with mutual TLS, so that certificates travel too.
    let certs = Certs::generate("pump-7");
    let src = tempfile::tempdir().unwrap();
    place_certs(
        &certs,
        &src.path().join("certs"),
        "ca.pem",
        "device.pem",
        "device.key",
    );
    let config = read("deploy/config/simulator.toml").replace(
        "# [mqtt.tls]\n# ca = \"certs/ca.pem\"\n# cert = \"certs/device.pem\"\n# key = \"certs/device.key\"",
        "[mqtt.tls]\nca = \"certs/ca.pem\"\ncert = \"certs/device.pem\"\nkey = \"certs/device.key\"",
    );
    assert!(
        config.contains("\n[mqtt.tls]\n"),
        "deploy/config/simulator.toml changed its TLS comment"
    );
    fs::write(src.path().join("agent.toml"), config).unwrap();

    // A private copy of the agent: other suites may rebuild target/debug meanwhile.
    let agent = src.path().join("osprey-agent");
    fs::copy(bin("osprey-agent"), &agent).unwrap();

    let out = succeed(
        Command::new("bash")
            .arg(root_file("deploy/pi/install.sh"))
            .args(sshd.options())
            .arg("--binary")
            .arg(&agent)
            .arg("--config")
            .arg(src.path().join("agent.toml"))
            .arg("--certs")
            .arg(src.path().join("certs"))
            .arg("--root")
            .arg(r)
            .arg(&host),
    );
    let log = stderr(&out);
    assert!(
        log.contains(&format!("{}, glibc", std::env::consts::ARCH)),
        "detection: {log}"
    );

    // The user and groups, in the root's own passwd and group files.
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let osprey = passwd
        .lines()
        .find(|l| l.starts_with("osprey:"))
        .expect("no osprey user");
    assert!(
        osprey.ends_with(":/var/lib/osprey-agent:/usr/sbin/nologin"),
        "{osprey}"
    );
    let group = fs::read_to_string(r.join("etc/group")).unwrap();
    for g in ["i2c", "gpio"] {
        let line = group
            .lines()
            .find(|l| l.starts_with(&format!("{g}:")))
            .unwrap();
        assert!(line.ends_with(":osprey"), "{line}");
    }
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("osprey:x:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .parse()
        .unwrap();

    // Files, modes and owners.
    let binary = r.join("usr/local/bin/osprey-agent");
    assert!(
        fs::read(&binary).unwrap() == fs::read(&agent).unwrap(),
        "the installed binary differs from the one given"
    );
    assert_eq!(
        fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );
    for f in [
        "etc/osprey-agent/agent.toml",
        "etc/osprey-agent/certs/device.key",
    ] {
        let meta = fs::metadata(r.join(f)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{f}");
        assert_eq!((meta.uid(), meta.gid()), (0, gid), "{f}");
    }
    let wants = r.join("etc/systemd/system/multi-user.target.wants/osprey-agent.service");
    assert_eq!(
        fs::read_link(&wants).unwrap(),
        Path::new("/etc/systemd/system/osprey-agent.service")
    );

    // What landed works: the config (with its certificates) checks, the unit verifies.
    let check = agent_check(&r.join("etc/osprey-agent/agent.toml"));
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(stdout(&check).contains("pump-7"));
    let unit = fs::read_to_string(r.join("etc/systemd/system/osprey-agent.service")).unwrap();
    assert_eq!(verify_unit(&unit, &binary), "");
    drop(sshd);
}

/// Runs the installer against `sshd` into the root `r` with `args`; returns its output.
fn install_into<S: AsRef<OsStr>>(sshd: &Sshd, r: &Path, args: &[S]) -> Output {
    let user = String::from_utf8(succeed(Command::new("id").arg("-un")).stdout).unwrap();
    output(
        Command::new("bash")
            .arg(root_file("deploy/pi/install.sh"))
            .args(sshd.options())
            .args(args)
            .arg("--root")
            .arg(r)
            .arg(format!("{}@127.0.0.1", user.trim())),
    )
}

fn installed_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "install.sh failed ({}):\n{}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

#[test]
fn pi_installer_upgrades_keep_the_config_failed_ones_roll_back_and_uninstall_removes() {
    let sshd = Sshd::start();
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    // Two builds: "old" and "new" (the same agent with a trailing marker, still a valid ELF),
    // and a corrupt "new" one (the first 4 KiB: an ELF header that cannot run).
    let agent = fs::read(bin("osprey-agent")).unwrap();
    let (old, new, broken) = (s.join("old"), s.join("new"), s.join("broken"));
    fs::write(&old, &agent).unwrap();
    fs::write(&new, [agent.as_slice(), b"osprey-new-build"].concat()).unwrap();
    fs::write(&broken, &agent[..4096]).unwrap();
    for f in [&old, &new, &broken] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
    }

    // A first install without --config gets the example config.
    let fresh = tempfile::tempdir().unwrap();
    let plan = installed_ok(&install_into(
        &sshd,
        fresh.path(),
        &[OsStr::new("--binary"), old.as_os_str()],
    ));
    assert!(plan.contains(": first install\n"), "{plan}");
    assert_eq!(
        fs::read_to_string(fresh.path().join("etc/osprey-agent/agent.toml")).unwrap(),
        read("deploy/config/simulator.toml")
    );

    // A device with its own config (a different device id) and certificates.
    let dest = tempfile::tempdir().unwrap();
    let r = dest.path();
    let certs = Certs::generate("pump-9");
    place_certs(
        &certs,
        &s.join("certs"),
        "ca.pem",
        "device.pem",
        "device.key",
    );
    let device_config = read("deploy/config/simulator.toml")
        .replace("device_id = \"pump-7\"", "device_id = \"pump-9\"")
        .replace(
            "# [mqtt.tls]\n# ca = \"certs/ca.pem\"\n# cert = \"certs/device.pem\"\n# key = \"certs/device.key\"",
            "[mqtt.tls]\nca = \"certs/ca.pem\"\ncert = \"certs/device.pem\"\nkey = \"certs/device.key\"",
        );
    assert!(device_config.contains("pump-9") && device_config.contains("\n[mqtt.tls]\n"));
    fs::write(s.join("agent.toml"), &device_config).unwrap();
    installed_ok(&install_into(
        &sshd,
        r,
        &[
            OsStr::new("--binary"),
            old.as_os_str(),
            OsStr::new("--config"),
            s.join("agent.toml").as_os_str(),
            OsStr::new("--certs"),
            s.join("certs").as_os_str(),
        ],
    ));
    let binary = r.join("usr/local/bin/osprey-agent");
    let previous = r.join("usr/local/bin/osprey-agent.previous");
    let config = r.join("etc/osprey-agent/agent.toml");
    let key = r.join("etc/osprey-agent/certs/device.key");
    let key_bytes = fs::read(&key).unwrap();
    assert_eq!(fs::read_to_string(&config).unwrap(), device_config);
    assert!(!previous.exists());

    // Upgrade without --config: new binary, the device's config and certificates untouched,
    // the old binary kept.
    let plan = installed_ok(&install_into(
        &sshd,
        r,
        &[OsStr::new("--binary"), new.as_os_str()],
    ));
    assert!(plan.contains(": upgrade\n"), "{plan}");
    assert!(plan.contains("keep      "), "{plan}");
    assert_eq!(fs::read(&binary).unwrap(), fs::read(&new).unwrap());
    assert_eq!(fs::read(&previous).unwrap(), agent);
    assert_eq!(fs::read_to_string(&config).unwrap(), device_config);
    assert_eq!(fs::read(&key).unwrap(), key_bytes);
    let meta = fs::metadata(&config).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let check = agent_check(&config);
    assert!(stdout(&check).contains("pump-9"), "{}", stderr(&check));

    // A broken build: `check` fails on the device, the previous binary comes back, exit 3.
    let out = install_into(&sshd, r, &[OsStr::new("--binary"), broken.as_os_str()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    fails_saying(&out, "rolled back");
    assert_eq!(fs::read(&binary).unwrap(), fs::read(&new).unwrap());
    assert_eq!(
        fs::read(&previous).unwrap(),
        agent,
        "the failed run replaced .previous"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), device_config);

    // A bad config given with a good binary: the device's config comes back too.
    fs::write(
        s.join("bad.toml"),
        "device_id = \"pump-9\"\n[sampling]\ninterval_ms = \"soon\"\n",
    )
    .unwrap();
    let out = install_into(
        &sshd,
        r,
        &[
            OsStr::new("--binary"),
            old.as_os_str(),
            OsStr::new("--config"),
            s.join("bad.toml").as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(fs::read(&binary).unwrap(), fs::read(&new).unwrap());
    assert_eq!(fs::read_to_string(&config).unwrap(), device_config);
    assert_eq!(fs::read(&key).unwrap(), key_bytes);
    let unit = fs::read_to_string(r.join("etc/systemd/system/osprey-agent.service")).unwrap();
    assert_eq!(verify_unit(&unit, &binary), "");

    // A first install that fails leaves nothing behind and says so (exit 1).
    let failed = tempfile::tempdir().unwrap();
    let out = install_into(
        &sshd,
        failed.path(),
        &[OsStr::new("--binary"), broken.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    fails_saying(&out, "first install undone");
    assert!(!failed.path().join("usr/local/bin/osprey-agent").exists());
    assert!(!failed.path().join("etc/osprey-agent").exists());

    // Uninstall: binary, previous binary, unit and its enablement go; config, certs stay.
    let wants = r.join("etc/systemd/system/multi-user.target.wants/osprey-agent.service");
    assert!(wants.symlink_metadata().is_ok());
    installed_ok(&install_into(&sshd, r, &[OsStr::new("--uninstall")]));
    for gone in [
        &binary,
        &previous,
        &r.join("etc/systemd/system/osprey-agent.service"),
        &wants,
    ] {
        assert!(
            gone.symlink_metadata().is_err(),
            "{} is left",
            gone.display()
        );
    }
    assert_eq!(fs::read_to_string(&config).unwrap(), device_config);
    assert_eq!(fs::read(&key).unwrap(), key_bytes);
    // ... and --purge takes config and certificates too.
    installed_ok(&install_into(
        &sshd,
        r,
        &[OsStr::new("--uninstall"), OsStr::new("--purge")],
    ));
    assert!(!r.join("etc/osprey-agent").exists());
    drop(sshd);
}

/// A `systemctl` for a machine without systemd as PID 1: `restart` runs the unit's
/// ExecStartPre and then its ExecStart as a plain background process, `is-active` says whether
/// that process lives (other units count as active), `stop` and `disable --now` stop it; every
/// call is logged to STATE/calls.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
st=@STATE@
mkdir -p "$st"
echo "$*" >>"$st/calls"
now=0; cmd=""; unit=""
for a in "$@"; do
    case "$a" in
        --now) now=1 ;;
        -*) ;;
        *) if [ -z "$cmd" ]; then cmd=$a; elif [ -z "$unit" ]; then unit=$a; fi ;;
    esac
done
pidf=$st/$unit.pid
# Alive and not a zombie (nobody may reap it in a container).
running() {
    [ -f "$pidf" ] && s=$(cut -d' ' -f3 "/proc/$(cat "$pidf")/stat" 2>/dev/null) &&
        [ -n "$s" ] && [ "$s" != Z ]
}
stop() { if running; then kill "$(cat "$pidf")"; while running; do sleep 0.1; done; fi; rm -f "$pidf"; }
case "$cmd" in
    restart)
        stop
        file=/etc/systemd/system/$unit
        sh -c "$(sed -n 's/^ExecStartPre=//p' "$file")" >>"$st/$unit.log" 2>&1 || exit 1
        setsid sh -c "exec $(sed -n 's/^ExecStart=//p' "$file")" </dev/null >>"$st/$unit.log" 2>&1 &
        echo $! >"$pidf" ;;
    is-active) [ "$unit" != osprey-agent.service ] || running ;;
    stop) stop ;;
    disable) [ "$now" = 0 ] || stop ;;
    *) ;;
esac
"#;

#[test]
fn pi_installer_rolls_back_when_the_upgraded_service_does_not_stay_up() {
    // The whole install runs for real on "/", but in sshd's private mount namespace, where
    // /etc, /usr/local/bin and /usr/local/sbin are copies (bind mounts) and /run is a fresh
    // tmpfs with /run/systemd/system (so the installer sees a systemd host), and systemctl is
    // the stand-in above (first on root's PATH in /usr/local/sbin).
    let work = tempfile::tempdir().unwrap();
    let t = work.path();
    let copy = t.join("copy");
    let state = t.join("systemd");
    let systemctl = t.join("systemctl");
    fs::write(
        &systemctl,
        FAKE_SYSTEMCTL.replace("@STATE@", state.to_str().unwrap()),
    )
    .unwrap();
    fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
    let prepare = format!(
        "mount -t tmpfs tmpfs /run\nmkdir -p /run/sshd /run/systemd/system\n\
         for d in /etc /usr/local/bin /usr/local/sbin; do\n\
         mkdir -p '{copy}'$d $d; cp -a $d/. '{copy}'$d/; mount --bind '{copy}'$d $d\ndone\n\
         install -m 0755 '{systemctl}' /usr/local/sbin/systemctl",
        copy = copy.display(),
        systemctl = systemctl.display()
    );
    let sshd = Sshd::start_in(Some(&prepare));
    let install = |args: &[&OsStr]| -> Output {
        output(
            Command::new("bash")
                .arg(root_file("deploy/pi/install.sh"))
                .args(sshd.options())
                .args(["--start-timeout", "10"])
                .args(args)
                .arg("root@127.0.0.1"),
        )
    };
    let running = || -> bool {
        let Ok(pid) = fs::read_to_string(state.join("osprey-agent.service.pid")) else {
            return false;
        };
        let stat = fs::read_to_string(Path::new("/proc").join(pid.trim()).join("stat"));
        stat.is_ok_and(|s| s.split(' ').nth(2).is_some_and(|state| state != "Z"))
    };

    // Configs: one that runs (journal in the work dir), one that passes `check` but stops the
    // agent at once (its journal directory cannot exist).
    let good = read("deploy/config/simulator.toml")
        .replace(
            "/var/lib/osprey-agent/journal",
            t.join("journal").to_str().unwrap(),
        )
        .replace("port = 1883", &format!("port = {}", free_port()));
    let crash = good.replace(
        t.join("journal").to_str().unwrap(),
        "/proc/osprey-none/journal",
    );
    fs::write(t.join("good.toml"), &good).unwrap();
    fs::write(t.join("crash.toml"), &crash).unwrap();
    assert!(agent_check(&t.join("crash.toml")).status.success());
    let agent = fs::read(bin("osprey-agent")).unwrap();
    let new = t.join("new");
    fs::write(&new, [agent.as_slice(), b"osprey-new-build"].concat()).unwrap();
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    let binary = copy.join("usr/local/bin/osprey-agent");
    let config = copy.join("etc/osprey-agent/agent.toml");

    // First install: started, and it stays up.
    let agent_path = bin("osprey-agent");
    let out = install(&[
        OsStr::new("--binary"),
        agent_path.as_os_str(),
        OsStr::new("--config"),
        t.join("good.toml").as_os_str(),
    ]);
    let plan = installed_ok(&out);
    assert!(plan.contains("restart osprey-agent.service"), "{plan}");
    assert!(running(), "not started:\n{}", stderr(&out));
    let first_pid = fs::read_to_string(state.join("osprey-agent.service.pid")).unwrap();

    // Upgrade to a config on which the agent stops at once: not active, rolled back, the old
    // binary and config back and the old agent running again.
    let out = install(&[
        OsStr::new("--binary"),
        new.as_os_str(),
        OsStr::new("--config"),
        t.join("crash.toml").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    fails_saying(&out, "rolled back");
    assert!(
        stderr(&out).contains("osprey-agent.service not active after 10s")
            || stderr(&out).contains("stopped right after starting"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&binary).unwrap(), agent);
    assert_eq!(fs::read_to_string(&config).unwrap(), good);
    assert!(running(), "the previous agent was not restarted");
    assert_ne!(
        fs::read_to_string(state.join("osprey-agent.service.pid")).unwrap(),
        first_pid
    );

    // Uninstall stops it and removes binary and unit; the config stays.
    installed_ok(&install(&[OsStr::new("--uninstall")]));
    assert!(!running());
    assert!(!binary.exists());
    assert!(!copy
        .join("etc/systemd/system/osprey-agent.service")
        .exists());
    assert_eq!(fs::read_to_string(&config).unwrap(), good);
    let calls = fs::read_to_string(state.join("calls")).unwrap();
    assert!(
        calls.contains("disable --now osprey-agent.service"),
        "{calls}"
    );
    drop(sshd);
}

#[test]
fn template_fleet_provisioning_names_things_by_serial_and_the_claim_policy_only_provisions() {
    let t = yaml("deploy/aws/template.yaml");
    let props = at(
        &t,
        &["Resources", "FleetProvisioningTemplate", "Properties"],
    );
    assert_eq!(text(at(props, &["Enabled"])), "true");
    assert!(text(at(props, &["ProvisioningRoleArn"])).contains("FleetProvisioningRole"));
    // The body is JSON once CloudFormation substitutes the stack's names into it.
    let body = text(at(props, &["TemplateBody"]))
        .replace("${DeviceNamePrefix}", "gw-")
        .replace("${FleetThingGroupName}", "osprey-fleet")
        .replace("${DevicePolicy}", "stack-device");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let thing = &body["Resources"]["thing"]["Properties"];
    assert_eq!(
        thing["ThingName"],
        serde_json::json!({"Fn::Join": ["", ["gw-", {"Ref": "SerialNumber"}]]})
    );
    assert_eq!(thing["ThingGroups"], serde_json::json!(["osprey-fleet"]));
    assert!(body["Parameters"]["SerialNumber"].is_object());
    assert_eq!(
        body["Resources"]["certificate"]["Properties"]["Status"],
        "ACTIVE"
    );
    assert_eq!(
        body["Resources"]["policy"]["Properties"]["PolicyName"],
        "stack-device"
    );
    let role = at(&t, &["Resources", "FleetProvisioningRole", "Properties"]);
    let policy = &at(role, &["Policies"])[0];
    let granted = texts(&at(policy, &["PolicyDocument", "Statement"])[0]["Action"]);
    for needed in [
        "iot:CreateThing",
        "iot:AddThingToThingGroup",
        "iot:AttachThingPrincipal",
        "iot:UpdateCertificate",
        "iot:AttachPolicy",
    ] {
        assert!(
            granted.iter().any(|a| a == needed),
            "role lacks {needed}: {granted:?}"
        );
    }

    // The claim policy: every resource it allows is a fleet provisioning topic or the
    // provision-* client ids; nothing under dt/, cmd/ or a shadow.
    let statements = policy_statements(&t, "ClaimPolicy");
    let mut actions = Vec::new();
    for statement in statements {
        assert_eq!(text(at(statement, &["Effect"])), "Allow");
        let action = text(at(statement, &["Action"]));
        for resource in texts(at(statement, &["Resource"])) {
            let allowed = if action == "iot:Connect" {
                resource.ends_with(":client/provision-*")
            } else {
                resource.contains("/$aws/certificates/create")
                    || resource.contains(
                        "/$aws/provisioning-templates/${AWS::StackName}-fleet/provision/json",
                    )
            };
            assert!(allowed, "claim policy allows {action} on {resource}");
        }
        actions.push(action);
    }
    actions.sort();
    assert_eq!(
        actions,
        ["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"]
    );
    for output in [
        "FleetTemplateName",
        "ClaimPolicyName",
        "FleetThingGroupName",
    ] {
        at(&t, &["Outputs", output, "Value"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Device provisioning
// ---------------------------------------------------------------------------------------------

/// Points the AWS CLI in `cmd` at moto (the CLI v1 reads the region from AWS_DEFAULT_REGION).
fn on_moto<'a>(cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
}

fn provision(args: &[&str], out_dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root_file("deploy/aws/provision-device.sh"))
        .args(args)
        .arg("--out")
        .arg(out_dir);
    cmd
}

#[test]
fn provision_dry_run_calls_nothing_and_writes_a_config_the_agent_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pump-9");
    let out = succeed(&mut provision(
        &[
            "--dry-run",
            "--policy",
            "osprey-device",
            "--endpoint",
            "abc-ats.iot.eu-west-1.amazonaws.com",
            "pump-9",
        ],
        &out_dir,
    ));
    let said = stderr(&out);
    for call in [
        "iot create-thing --thing-name pump-9",
        "iot create-keys-and-certificate",
        "iot attach-policy",
        "iot attach-thing-principal",
    ] {
        assert!(said.contains(call), "plan lacks {call}: {said}");
    }
    assert!(
        !out_dir.join("certs").exists(),
        "a dry run must not create certificates"
    );

    // The config names the files a real run writes; with test certificates there it checks.
    place_certs(
        &Certs::generate("pump-9"),
        &out_dir.join("certs"),
        "AmazonRootCA1.pem",
        "device.pem.crt",
        "private.pem.key",
    );
    let check = agent_check(&out_dir.join("agent.toml"));
    assert!(check.status.success(), "{}", stderr(&check));
    let config = Config::load(&out_dir.join("agent.toml")).unwrap();
    assert_eq!(config.device_id, "pump-9");
    assert_eq!(
        (config.mqtt.host.as_str(), config.mqtt.port),
        ("abc-ats.iot.eu-west-1.amazonaws.com", 8883)
    );

    let bad = output(&mut provision(
        &["--dry-run", "--policy", "p", "pump/9"],
        &out_dir,
    ));
    fails_saying(&bad, "invalid thing name");
}

#[test]
fn provision_against_moto_creates_thing_and_certificate_and_a_working_config() {
    let moto = MotoCli::new();
    let (endpoint, path) = (moto.endpoint.clone(), moto.path.clone());
    let aws_cmd = |args: &[&str]| moto.cmd(args);
    let policy = moto.policy();
    let thing = unique_name("pump");

    let certs = Certs::generate(&thing);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join(&thing);
    let mut first = provision(
        &[
            "--policy",
            &policy,
            "--ca-file",
            certs.ca.to_str().unwrap(),
            &thing,
        ],
        &out_dir,
    );
    succeed(on_moto(first.env("PATH", &path), &endpoint));

    // moto now has the thing with one certificate, and the certificate has the policy.
    let principals = stdout(&succeed(&mut aws_cmd(&[
        "iot",
        "list-thing-principals",
        "--thing-name",
        &thing,
        "--query",
        "principals[0]",
        "--output",
        "text",
    ])));
    let cert_arn = principals.trim();
    assert!(cert_arn.starts_with("arn:aws:iot:"), "{principals}");
    let policies = stdout(&succeed(&mut aws_cmd(&[
        "iot",
        "list-attached-policies",
        "--target",
        cert_arn,
        "--query",
        "policies[].policyName",
        "--output",
        "text",
    ])));
    assert_eq!(policies.trim(), policy);

    // The key never left the machine readable by others; the config checks with it.
    let key = out_dir.join("certs/private.pem.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0,
        "key readable by others"
    );
    let check = agent_check(&out_dir.join("agent.toml"));
    assert!(check.status.success(), "{}", stderr(&check));
    let config = Config::load(&out_dir.join("agent.toml")).unwrap();
    assert_eq!(config.device_id, thing);
    assert!(
        config.mqtt.host.ends_with(".amazonaws.com"),
        "{}",
        config.mqtt.host
    );

    // A second run into the same directory refuses instead of overwriting the key.
    let again = output(provision(&["--policy", &policy, &thing], &out_dir).env("PATH", &path));
    fails_saying(&again, "already holds a provisioned device");
}

/// The AWS CLI of the test venv pointed at moto, and a PATH that finds it (for the script).
struct MotoCli {
    endpoint: String,
    aws: PathBuf,
    path: String,
}

impl MotoCli {
    fn new() -> MotoCli {
        let aws = venv_tool("aws");
        let path = format!(
            "{}:{}",
            aws.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        MotoCli {
            endpoint: moto_endpoint(),
            aws,
            path,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.aws);
        cmd.args(args);
        on_moto(&mut cmd, &self.endpoint);
        cmd
    }

    /// `aws ARGS --output text`, trimmed.
    fn text(&self, args: &[&str]) -> String {
        let mut cmd = self.cmd(args);
        cmd.args(["--output", "text"]);
        stdout(&succeed(&mut cmd)).trim().to_owned()
    }

    fn policy(&self) -> String {
        let policy = unique_name("osprey-device");
        self.text(&[
            "iot",
            "create-policy",
            "--policy-name",
            &policy,
            "--policy-document",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#,
            "--query",
            "policyName",
        ]);
        policy
    }

    /// provision-device.sh --csr for `thing` into `out_dir`, joining `group`.
    fn provision_csr(
        &self,
        thing: &str,
        (key, csr): (&Path, &Path),
        policy: &str,
        group: &str,
        ca: &Path,
        out_dir: &Path,
    ) -> Output {
        self.provision(
            &[
                "--policy",
                policy,
                "--csr",
                csr.to_str().unwrap(),
                "--device-key",
                key.to_str().unwrap(),
                "--thing-group",
                group,
                "--ca-file",
                ca.to_str().unwrap(),
                thing,
            ],
            out_dir,
        )
    }

    /// The things in `group`, sorted.
    fn members(&self, group: &str) -> Vec<String> {
        let mut things: Vec<String> = self
            .text(&[
                "iot",
                "list-things-in-thing-group",
                "--thing-group-name",
                group,
                "--query",
                "things",
            ])
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        things.sort();
        things
    }

    /// provision-device.sh with ARGS on moto.
    fn provision(&self, args: &[&str], out_dir: &Path) -> Output {
        let mut cmd = provision(args, out_dir);
        output(on_moto(cmd.env("PATH", &self.path), &self.endpoint))
    }
}

/// `osprey-agent keygen` for `id` into `dir`: (key, CSR).
fn keygen(id: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("device-side/private.pem.key");
    let out = succeed(
        Command::new(bin("osprey-agent"))
            .args(["keygen", "--device-id", id, "--key"])
            .arg(&key),
    );
    assert!(
        stdout(&out).contains("provision-device.sh --csr"),
        "{}",
        stdout(&out)
    );
    (key.clone(), key.parent().unwrap().join("device.csr.pem"))
}

#[test]
fn provision_with_csr_writes_no_key_points_at_the_device_key_and_joins_the_thing_group() {
    let moto = MotoCli::new();
    let policy = moto.policy();
    let thing = unique_name("pump");
    let group = unique_name("line");
    let dir = tempfile::tempdir().unwrap();
    let (device_key, csr) = keygen(&thing, dir.path());
    let certs = Certs::generate(&thing);
    let out_dir = dir.path().join(&thing);
    let out = moto.provision_csr(
        &thing,
        (&device_key, &csr),
        &policy,
        &group,
        &certs.ca,
        &out_dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("create-certificate-from-csr"),
        "{}",
        stderr(&out)
    );

    // Only the certificate is here; the config names the key where keygen left it.
    let written: Vec<String> = fs::read_dir(out_dir.join("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!written.iter().any(|f| f.contains("key")), "{written:?}");
    assert!(out_dir.join("certs/device.pem.crt").is_file());
    let config = Config::load(&out_dir.join("agent.toml")).unwrap();
    let client = config.mqtt.tls.unwrap().client.unwrap();
    assert_eq!(client.key, device_key);
    assert_eq!(client.cert, out_dir.join("certs/device.pem.crt"));

    // In moto: the thing holds one ACTIVE certificate and is in the group (created for it).
    let cert_arn = moto.text(&[
        "iot",
        "list-thing-principals",
        "--thing-name",
        &thing,
        "--query",
        "principals[0]",
    ]);
    let cert_id = cert_arn.rsplit('/').next().unwrap();
    let status = moto.text(&[
        "iot",
        "describe-certificate",
        "--certificate-id",
        cert_id,
        "--query",
        "certificateDescription.status",
    ]);
    assert_eq!(status, "ACTIVE");
    assert_eq!(moto.members(&group), std::slice::from_ref(&thing));

    // A second device joins the existing group.
    let other = unique_name("pump");
    let (other_key, other_csr) = keygen(&other, &dir.path().join("other"));
    let out = moto.provision_csr(
        &other,
        (&other_key, &other_csr),
        &policy,
        &group,
        &certs.ca,
        &dir.path().join(&other),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("create-thing-group"),
        "{}",
        stderr(&out)
    );
    let mut expected = vec![thing.clone(), other];
    expected.sort();
    assert_eq!(moto.members(&group), expected);

    // Bad inputs are refused before any AWS call.
    fs::write(dir.path().join("not.csr"), "hello").unwrap();
    let bad = moto.provision(
        &[
            "--policy",
            &policy,
            "--csr",
            dir.path().join("not.csr").to_str().unwrap(),
            "x1",
        ],
        &dir.path().join("x1"),
    );
    fails_saying(&bad, "is not a PEM certificate signing request");
    let bad = moto.provision(
        &[
            "--policy",
            &policy,
            "--csr",
            csr.to_str().unwrap(),
            "--device-key",
            "rel/key",
            "x2",
        ],
        &dir.path().join("x2"),
    );
    fails_saying(&bad, "absolute path on the device");
}

#[test]
fn provision_failing_after_the_certificate_leaves_no_certificate_or_thing_and_a_rerun_works() {
    let moto = MotoCli::new();
    let thing = unique_name("pump");
    let group = unique_name("line");
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&thing);
    let out_dir = dir.path().join(&thing);
    for csr_mode in [true, false] {
        let (_key, csr) = keygen(
            &format!("{thing}-{csr_mode}"),
            &dir.path().join(csr_mode.to_string()),
        );
        let mut args = vec![
            "--thing-group",
            &group,
            "--ca-file",
            certs.ca.to_str().unwrap(),
        ];
        if csr_mode {
            args.extend(["--csr", csr.to_str().unwrap()]);
        }
        // A policy that does not exist: attach-policy fails after the certificate is made.
        let missing = unique_name("no-such-policy");
        let mut failing = args.clone();
        failing.extend(["--policy", &missing, &thing]);
        let out = moto.provision(&failing, &out_dir);
        assert!(!out.status.success(), "{}", stderr(&out));
        let said = stderr(&out);
        assert!(said.contains("undoing this run's changes"), "{said}");
        let cert_arn = said
            .lines()
            .find_map(|l| l.strip_prefix("provision-device.sh: certificate "))
            .unwrap_or_else(|| panic!("no certificate line: {said}"))
            .trim()
            .to_owned();
        let cert_id = cert_arn.rsplit('/').next().unwrap();
        // The certificate is gone (not merely inactive), and so is the thing this run created.
        let gone =
            output(&mut moto.cmd(&["iot", "describe-certificate", "--certificate-id", cert_id]));
        fails_saying(&gone, "ResourceNotFoundException");
        let gone = output(&mut moto.cmd(&["iot", "describe-thing", "--thing-name", &thing]));
        fails_saying(&gone, "ResourceNotFoundException");
        let active = moto.text(&[
            "iot",
            "list-certificates",
            "--query",
            &format!("certificates[?certificateId=='{cert_id}' && status=='ACTIVE'].certificateId"),
        ]);
        assert_eq!(active, "", "an active certificate was left behind");
        assert!(
            !out_dir.join("certs/device.pem.crt").exists()
                && !out_dir.join("certs/private.pem.key").exists(),
            "files of the failed run were left"
        );

        // The same command with a policy that exists now succeeds in the same directory.
        let policy = moto.policy();
        let mut good = args.clone();
        good.extend(["--policy", &policy, &thing]);
        let out = moto.provision(&good, &out_dir);
        assert!(out.status.success(), "re-run failed: {}", stderr(&out));
        let principals = moto.text(&[
            "iot",
            "list-thing-principals",
            "--thing-name",
            &thing,
            "--query",
            "principals",
        ]);
        assert_eq!(principals.split_whitespace().count(), 1, "{principals}");

        // Over the provisioned directory: a clear refusal, and nothing is created in AWS.
        let again = moto.provision(&good, &out_dir);
        fails_saying(&again, "already holds a provisioned device");
        assert!(!stderr(&again).contains("create-"), "{}", stderr(&again));

        // Clean slate for the other mode.
        for f in [
            "certs/device.pem.crt",
            "certs/private.pem.key",
            "agent.toml",
        ] {
            let _ = fs::remove_file(out_dir.join(f));
        }
        let cert = principals.trim();
        moto.text(&[
            "iot",
            "detach-thing-principal",
            "--thing-name",
            &thing,
            "--principal",
            cert,
        ]);
        moto.text(&["iot", "delete-thing", "--thing-name", &thing]);
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts and docs
// ---------------------------------------------------------------------------------------------

#[test]
fn shellcheck_passes_on_every_script() {
    let mut scripts = Vec::new();
    for dir in [
        "cross",
        "deploy",
        "deploy/pi",
        "deploy/aws",
        "deploy/greengrass",
        "tests",
    ] {
        for entry in fs::read_dir(workspace_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    for expected in [
        "cross/build.sh",
        "deploy/pi/install.sh",
        "deploy/aws/provision-device.sh",
        "deploy/greengrass/render-recipe.sh",
    ] {
        assert!(
            scripts.contains(&workspace_root().join(expected)),
            "{expected} not found"
        );
    }
    succeed(Command::new(system_tool("shellcheck")).args(&scripts));
}

#[test]
fn deploy_readme_names_files_that_exist() {
    let readme = read("deploy/README.md");
    let mut named = 0;
    for token in readme.split('`').skip(1).step_by(2) {
        let path = token.split_whitespace().next().unwrap_or("");
        let is_repo_path = ["deploy/", "cross/", "agent/", "protocol/"]
            .iter()
            .any(|p| path.starts_with(p));
        if !is_repo_path || path.contains(['<', '*', '$']) || path.starts_with("deploy/out/") {
            continue;
        }
        assert!(
            workspace_root().join(path).exists(),
            "deploy/README.md names {path}, which does not exist"
        );
        named += 1;
    }
    assert!(
        named >= 5,
        "deploy/README.md names only {named} repository files"
    );
}
