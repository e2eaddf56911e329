//! The agent on (fake) real sensors, with no network at all: local alerts fire, a GPIO action
//! follows them, SIGHUP reloads rules without raising a live alarm twice, a CRC failure
//! becomes a sensor fault, and a restart keeps the raised alarm so that only its clear comes.
//!
//! The sensors are a hwmon chip and a DS18B20 in a fake sysfs tree (the config's `root` keys);
//! the broker port is one nothing listens on, so every alert here is local.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use osprey_tests::{bin, free_port, wait_until, Proc};

const GOOD_W1: &str =
    "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
const BAD_W1: &str = "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn config(dir: &Path, port: u16, extra_rules: &str) -> String {
    format!(
        "device_id = \"pi-e2e\"\n\
         [sampling]\ninterval_ms = 50\n\
         [journal]\npath = \"journal\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [[sensors]]\nname = \"soc\"\nkind = \"hwmon\"\nchip = \"cpu_thermal\"\nroot = \"sys/hwmon\"\n\
         [[sensors]]\nname = \"tank\"\nkind = \"ds18b20\"\nid = \"28-01\"\nroot = \"sys/w1\"\nfault_after = 2\n\
         [[rules]]\nid = \"soc-hot\"\nsensor = \"soc\"\nmetric = \"temp1\"\nwhen = \"above\"\nthreshold = 80.0\nclear = 75.0\nseverity = \"critical\"\n\
         {extra_rules}\
         [[actions]]\nrule = \"soc-hot\"\ngpio = 18\nroot = {:?}\n",
        dir.join("sys/gpio")
    )
}

fn start(config: &Path) -> Proc {
    Proc::spawn(
        Command::new(bin("osprey-agent"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
    )
}

/// How many log lines say `what` for `rule`.
fn count(agent: &Proc, what: &str, rule: &str) -> usize {
    agent
        .stderr()
        .lines()
        .filter(|l| l.contains(what) && l.contains(&format!("rule={rule} ")))
        .count()
}

fn wait_for(agent: &Proc, what: &str, rule: &str, n: usize) {
    assert!(
        wait_until(WAIT, POLL, || (count(agent, what, rule) >= n).then_some(())).is_some(),
        "no {what:?} for {rule}\n{}",
        agent.logs()
    );
}

#[test]
fn local_alerts_actions_reload_faults_and_restart_with_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hwmon = d.join("sys/hwmon/hwmon0");
    write(&hwmon.join("name"), "cpu_thermal\n");
    write(&hwmon.join("temp1_input"), "50000\n");
    write(&d.join("sys/w1/28-01/w1_slave"), GOOD_W1);
    let gpio = d.join("sys/gpio/gpio18/value");
    write(&gpio, "0");
    write(&d.join("sys/gpio/gpio18/direction"), "out");
    let port = free_port();
    let config_path = d.join("agent.toml");
    write(&config_path, &config(d, port, ""));
    let gpio_is = |level: &str| {
        wait_until(WAIT, POLL, || {
            (std::fs::read_to_string(&gpio).unwrap_or_default() == level).then_some(())
        })
        .is_some()
    };

    let mut agent = start(&config_path);
    // Hot: raised locally, the relay goes on, the alarm is on disk.
    write(&hwmon.join("temp1_input"), "90000\n");
    wait_for(&agent, "alert raised", "soc-hot", 1);
    assert!(gpio_is("1"), "GPIO 18 not set\n{}", agent.logs());
    let alarms = d.join("journal.alarms.json");
    // Written right after the local alert fired.
    assert!(
        wait_until(WAIT, POLL, || std::fs::read_to_string(&alarms)
            .is_ok_and(|t| t.contains("soc-hot"))
            .then_some(()))
        .is_some(),
        "no alarm file\n{}",
        agent.logs()
    );

    // SIGHUP with one more rule: it applies at once, and soc-hot (still hot) is not raised
    // again.
    let tank_cold = "[[rules]]\nid = \"tank-cold\"\nsensor = \"tank\"\nmetric = \"temperature\"\nwhen = \"below\"\nthreshold = 30.0\n";
    write(&config_path, &config(d, port, tank_cold));
    agent.signal("HUP");
    wait_for(&agent, "alert raised", "tank-cold", 1);
    assert_eq!(
        count(&agent, "alert raised", "soc-hot"),
        1,
        "{}",
        agent.logs()
    );

    // The DS18B20's CRC fails twice in a row: a sensor fault.
    write(&d.join("sys/w1/28-01/w1_slave"), BAD_W1);
    wait_for(&agent, "alert raised", "sensor-fault", 1);
    write(&d.join("sys/w1/28-01/w1_slave"), GOOD_W1);
    wait_for(&agent, "alert cleared", "sensor-fault", 1);
    assert!(
        agent.terminate(WAIT).is_some(),
        "agent did not stop\n{}",
        agent.logs()
    );

    // Restart while still hot: the alarm is restored, not raised again; cooling clears it and
    // the relay goes off.
    let mut agent = start(&config_path);
    wait_until(WAIT, POLL, || {
        agent
            .stderr()
            .contains("raised alarms restored")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("alarms not restored\n{}", agent.logs()));
    write(&hwmon.join("temp1_input"), "40000\n");
    wait_for(&agent, "alert cleared", "soc-hot", 1);
    assert!(gpio_is("0"), "GPIO 18 not cleared\n{}", agent.logs());
    assert_eq!(
        count(&agent, "alert raised", "soc-hot"),
        0,
        "{}",
        agent.logs()
    );
    assert!(agent.terminate(WAIT).is_some());
}
