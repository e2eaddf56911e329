//! The agent as a Greengrass v2 component, against the stand-in nucleus (tests/src/greengrass.rs):
//! first the stand-in itself against AWS's own IPC client (awsiotsdk), then the recipe's
//! component configuration (floats for integers) and its Run step, run as an unprivileged user,
//! publishing through the nucleus while publishes are refused, the configuration changes and the
//! nucleus goes away and comes back, with every reading counted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use osprey_agent::greengrass::config_from_component;
use osprey_protocol::{AlertEvent, Body, Envelope};
use osprey_tests::{bin, log_field, wait_until, workspace_root, Nucleus, Proc, COMPONENT};
use serde_json::{json, Value};

const THING: &str = "gg-core-1";

/// The recipe rendered for this version (deploy/greengrass/render-recipe.sh), as JSON.
fn rendered_recipe(dir: &Path) -> Value {
    let out = Command::new("sh")
        .arg(workspace_root().join("deploy/greengrass/render-recipe.sh"))
        .arg(dir)
        .output()
        .expect("run render-recipe.sh");
    assert!(
        out.status.success(),
        "render-recipe.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("recipe.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// Every integer in `value` as a float, the way Greengrass may hand configuration back.
fn floats(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.into_iter().map(floats).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, floats(v))).collect()),
        other => other,
    }
}

#[test]
fn the_recipe_carries_the_agent_version_and_its_configuration_loads_with_floats() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = rendered_recipe(dir.path());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(recipe["ComponentVersion"], version);
    assert_eq!(recipe["ComponentName"], COMPONENT);
    for manifest in recipe["Manifests"].as_array().unwrap() {
        for artifact in manifest["Artifacts"].as_array().unwrap() {
            let uri = artifact["URI"].as_str().unwrap();
            assert!(
                uri.contains(&format!("/com.osprey.Agent/{version}/osprey-agent-")),
                "{uri}"
            );
        }
        let run = manifest["Lifecycle"]["Run"]["Script"].as_str().unwrap();
        assert!(run.contains(" greengrass --work \"{work:path}\""), "{run}");
    }
    let text = std::fs::read_to_string(dir.path().join("recipe.yaml")).unwrap();
    assert!(
        !text.contains("{{"),
        "a placeholder is left in the rendered recipe"
    );

    let defaults = &recipe["ComponentConfiguration"]["DefaultConfiguration"];
    let work = Path::new("/greengrass/v2/work/com.osprey.Agent");
    let (as_written, _) = config_from_component(&defaults["agent"], Some(THING), work).unwrap();
    let as_floats = floats(defaults["agent"].clone());
    assert_eq!(as_floats["mqtt"]["inflight"], json!(32.0));
    let (from_floats, _) = config_from_component(&as_floats, Some(THING), work).unwrap();
    assert_eq!(
        from_floats, as_written,
        "floats for integers change the config"
    );
    assert_eq!(as_written.device_id, THING);
    assert_eq!(as_written.journal_path, work.join("journal"));
    assert_eq!(
        as_written.mqtt.transport,
        osprey_agent::config::Transport::Greengrass
    );
    assert_eq!(as_written.rules.len(), 2);
    // The five values the old install step refused, each as a float.
    for (section, key, value) in [
        ("mqtt", "port", 8883.0),
        ("sampling", "interval_ms", 1000.0),
        ("journal", "flush_interval_ms", 0.0),
        ("status", "interval_s", 60.0),
        ("batch", "max_age_ms", 5000.0),
    ] {
        let mut agent = defaults["agent"].clone();
        agent[section][key] = json!(value);
        config_from_component(&agent, Some(THING), work)
            .unwrap_or_else(|e| panic!("{section}.{key} = {value}: {e}"));
    }
    // IPC publishing needs the component allowed to publish under its own topics.
    let mqttproxy = &defaults["accessControl"]["aws.greengrass.ipc.mqttproxy"];
    let policy = mqttproxy.as_object().unwrap().values().next().unwrap();
    assert_eq!(
        policy["operations"],
        json!(["aws.greengrass#PublishToIoTCore"])
    );
    assert_eq!(policy["resources"], json!(["dt/osprey/{iot:thingName}/*"]));
}

#[test]
fn the_stand_in_nucleus_agrees_with_awsiotsdk() {
    let python = std::env::var("OSPREY_TEST_AWSIOT_PYTHON")
        .expect("OSPREY_TEST_AWSIOT_PYTHON is not set: run through bash tests/run.sh");
    let rule = json!({"id": "hot", "sensor": "bearing", "metric": "temperature",
                      "when": "above", "threshold": 80.0, "severity": "critical"});
    let nucleus =
        Nucleus::start(json!({"agent": {"sampling": {"interval_ms": 1000}, "rules": []}}));
    nucleus.refuse_publishes(1);
    let mut script = Proc::spawn(
        Command::new(python)
            .arg(workspace_root().join("tests/sdk/greengrass_check.py"))
            .envs(nucleus.env()),
    );
    let subscribed = wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
        (nucleus.subscriptions() > 0).then_some(())
    });
    assert!(
        subscribed.is_some(),
        "the SDK never subscribed:\n{}",
        script.logs()
    );
    nucleus
        .set_configuration(json!({"agent": {"sampling": {"interval_ms": 1000}, "rules": [rule]}}));
    let status = script.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", script.logs());
    let out: Value = serde_json::from_str(script.stdout().lines().last().unwrap_or("")).unwrap();

    assert_eq!(out["refused"], "the spooler is full (stand-in refusal)");
    let published = nucleus.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].topic, "dt/osprey/sdk-check/telemetry");
    assert_eq!(published[0].payload, b"\x00\x01binary\xff");
    assert_eq!(published[0].qos, "1");
    assert_eq!(out["component"], COMPONENT);
    assert_eq!(out["whole"]["agent"]["sampling"]["interval_ms"], 1000);
    assert_eq!(out["container"], json!({"interval_ms": 1000}));
    assert_eq!(out["leaf"], json!({"interval_ms": 1000}));
    assert!(out["missing"].is_string(), "{out}");
    assert_eq!(out["event_key_path"], json!(["agent"]));
    // A list is a leaf: GetConfiguration wraps it in an object named by its key.
    assert_eq!(out["after_update"], json!({"rules": [rule]}));
    assert_eq!(out["state"], true);
    assert_eq!(nucleus.states(), ["RUNNING"]);
    assert_ne!(out["wrong_token"], "connected");
    let (accepted, rejected) = nucleus.connections();
    assert_eq!((accepted, rejected), (1, 1));
}

/// The uid of `user`, if it exists.
fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// The agent's messages among `published`, decoded (bundles opened), deduplicated by seq.
fn messages(nucleus: &Nucleus) -> Vec<Envelope> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in nucleus.published() {
        assert!(
            p.topic.starts_with(&format!("dt/osprey/{THING}/")),
            "{}",
            p.topic
        );
        assert_eq!(p.qos, "1");
        for m in osprey_protocol::decode_messages(&p.payload).unwrap() {
            if seen.insert(m.seq) {
                out.push(m);
            }
        }
    }
    out
}

/// Readings in the agent's telemetry that the nucleus accepted (each message counted once).
fn readings(nucleus: &Nucleus) -> u64 {
    messages(nucleus)
        .iter()
        .map(|m| match &m.body {
            Body::Telemetry(b) => b.reading_count() as u64,
            _ => 0,
        })
        .sum()
}

fn wait_for_log(agent: &Proc, says: &str) {
    let seen = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        agent.stderr().contains(says).then_some(())
    });
    assert!(
        seen.is_some(),
        "the agent never logged {says:?}:\n{}",
        agent.logs()
    );
}

#[test]
fn the_component_publishes_through_the_nucleus_follows_its_configuration_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = rendered_recipe(&dir.path().join("dist"));
    let manifest = &recipe["Manifests"][0];
    let defaults = &recipe["ComponentConfiguration"]["DefaultConfiguration"];

    // The component configuration as a deployment would merge it, every number a float.
    let mut configuration = floats(defaults.clone());
    let agent = &mut configuration["agent"];
    agent["sampling"] = json!({"interval_ms": 10.0, "max_samples": 1500.0});
    agent["batch"]["max_age_ms"] = json!(200.0);
    agent["mqtt"]["inflight"] = json!(8.0);
    let nucleus = Nucleus::start(configuration.clone());
    // The nucleus refuses the first publishes: they must stay in the journal and be retried.
    nucleus.refuse_publishes(3);

    // The component's directories, readable by its user; the work directory is its own.
    let root = dir.path().join("gg");
    let (artifacts, work) = (root.join("artifacts"), root.join("work"));
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    for path in [dir.path(), root.as_path(), artifacts.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let artifact = manifest["Artifacts"][0]["URI"].as_str().unwrap();
    let name = artifact.rsplit('/').next().unwrap();
    std::fs::copy(bin("osprey-agent"), artifacts.join(name)).unwrap();
    let interpolate = |s: &str| {
        s.replace("{artifacts:path}", &artifacts.display().to_string())
            .replace("{work:path}", &work.display().to_string())
            .replace("{configuration:/logLevel}", "info")
    };
    let nobody = match (is_root(), uid_of("nobody"), which("runuser")) {
        (true, Some(uid), Some(runuser)) => {
            std::os::unix::fs::chown(&work, Some(uid), None).unwrap();
            Some(runuser)
        }
        _ => {
            eprintln!("NOTE: not root or no runuser/nobody here: the component runs as this user");
            None
        }
    };
    let step = |name: &str| {
        let script = interpolate(manifest["Lifecycle"][name]["Script"].as_str().unwrap());
        let mut cmd = match &nobody {
            Some(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", "nobody", "--", "sh", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            }
        };
        cmd.current_dir(&work)
            .envs(nucleus.env())
            .env("AWS_IOT_THING_NAME", THING)
            .env("NO_COLOR", "1");
        for (k, v) in manifest["Lifecycle"]["Setenv"].as_object().unwrap() {
            cmd.env(k, interpolate(v.as_str().unwrap()));
        }
        cmd
    };

    let install = step("Install").output().unwrap();
    assert!(install.status.success(), "{install:?}");
    let mut agent = Proc::spawn(&mut step("Run"));
    let pid = agent.pid();

    // Telemetry arrives through the nucleus after the refusals.
    let delivered = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        let telemetry = messages(&nucleus)
            .iter()
            .any(|m| matches!(m.body, Body::Telemetry(_)));
        (nucleus.refused() == 3 && telemetry).then_some(())
    });
    assert!(delivered.is_some(), "{}", agent.logs());
    assert!(nucleus.states().contains(&"RUNNING".to_owned()));
    if nobody.is_some() {
        let owner =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(work.join("journal")).unwrap());
        assert_eq!(
            Some(owner),
            uid_of("nobody"),
            "the journal is not the component user's"
        );
    }

    // A configuration `check` refuses is logged; the running one stays.
    let mut refused = configuration.clone();
    refused["agent"]["mqtt"]["port"] = json!(8883.5);
    nucleus.set_configuration(refused);
    wait_for_log(&agent, "component configuration refused");

    // A valid one applies live: a new rule that holds at once raises its alert.
    let mut live = configuration.clone();
    live["agent"]["rules"].as_array_mut().unwrap().push(
        json!({"id": "gg-live", "sensor": "bearing", "metric": "temperature",
                     "when": "above", "threshold": -1000.0, "severity": "info"}),
    );
    nucleus.set_configuration(live);
    let raised = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        messages(&nucleus)
            .iter()
            .any(|m| matches!(&m.body, Body::Alert(a) if a.rule == "gg-live" && a.event == AlertEvent::Raise))
            .then_some(())
    });
    assert!(
        raised.is_some(),
        "the new rule never fired:\n{}",
        agent.logs()
    );
    assert!(
        agent.is_running(),
        "the agent restarted or died:\n{}",
        agent.logs()
    );
    assert_eq!(agent.pid(), pid);
    let in_effect = std::fs::read_to_string(work.join("agent.toml")).unwrap();
    assert!(in_effect.contains("gg-live"), "{in_effect}");

    // The nucleus goes away (the agent keeps sampling into its journal) and comes back.
    nucleus.stop();
    wait_for_log(&agent, "cannot connect");
    nucleus.restart();

    // max_samples: the agent exits once every sample is taken and acknowledged.
    let status = agent.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "{status}\n{}", agent.logs());
    let logs = agent.logs();
    let taken = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let received = readings(&nucleus);
    assert_eq!(received, taken, "readings lost or duplicated\n{logs}");
    assert_eq!(log_field(&logs, " done", "samples"), Some(1500));
    assert_eq!(log_field(&logs, " done", "backlog"), Some(0));
    let (accepted, rejected) = nucleus.connections();
    assert!(
        accepted >= 5,
        "the uplink and the follower reconnect: {accepted}"
    );
    assert_eq!(rejected, 0);
    assert!(
        !logs.contains(&nucleus.env()[1].1),
        "the auth token was logged"
    );

    // The configuration in effect, kept in the work directory, is what `check` and `rules` read.
    let kept = work.join("agent.toml");
    let check = Command::new(bin("osprey-agent"))
        .args(["check", "--no-device-checks"])
        .arg(&kept)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        said.contains("through the Greengrass nucleus (IPC)"),
        "{said}"
    );
    let rules = Command::new(bin("osprey-agent"))
        .args(["rules", "--config"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("gg-live"),
        "{rules:?}"
    );
}

fn is_root() -> bool {
    uid_of(&std::env::var("USER").unwrap_or_default()) == Some(0)
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[test]
fn run_detects_the_nucleus_requires_it_when_told_and_keeps_remote_config_off_it() {
    let nucleus = Nucleus::start(json!({}));
    let dir = tempfile::tempdir().unwrap();
    let config = |transport: &str, remote: &str| {
        let path = dir.path().join(format!("{transport}-{remote}.toml"));
        let text = format!(
            "device_id = \"{THING}\"\n[sampling]\ninterval_ms = 10\nmax_samples = 20\n\
             [journal]\npath = \"journal-{transport}-{remote}\"\n\
             [mqtt]\ntransport = \"{transport}\"\n[remote_config]\nmode = \"{remote}\"\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |file: &Path, with_nucleus: bool| {
        let mut cmd = Command::new(bin("osprey-agent"));
        cmd.args(["run", "--config"]).arg(file).env("NO_COLOR", "1");
        cmd.env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
            .env_remove("SVCUID");
        if with_nucleus {
            cmd.envs(nucleus.env());
        }
        let mut agent = Proc::spawn(&mut cmd);
        let status = agent.wait_exit(Duration::from_secs(60));
        (status, agent.logs())
    };

    // `greengrass` without the nucleus's environment: refused at start, saying what is missing.
    let (status, logs) = run(&config("greengrass", "off"), false);
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"),
        "{logs}"
    );
    // Rules from a shadow and from the component configuration at once: refused.
    let (status, logs) = run(&config("auto", "shadow"), true);
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("remote_config.mode"), "{logs}");
    assert!(nucleus.published().is_empty());
    // `auto` with the nucleus's environment: every sample goes through the nucleus.
    let (status, logs) = run(&config("auto", "off"), true);
    assert!(status.success(), "{logs}");
    assert!(
        logs.contains("publishing through the Greengrass nucleus"),
        "{logs}"
    );
    let taken = log_field(&logs, " done", "readings").expect("the agent's summary line");
    let received = readings(&nucleus);
    assert_eq!(received, taken);
}
