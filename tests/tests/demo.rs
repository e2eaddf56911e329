//! `osprey demo`, the README's first command, as a user meets it: the embedded broker, the
//! simulated fleet and the cloud in one process; the API lists the devices with recent windows,
//! the degrading machine raises its alert, the dashboard page (rendered by headless Chromium)
//! shows every device, and Ctrl-C (SIGTERM here) stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::time::Duration;

use osprey_tests::{http_get_json, rendered_dom, start_demo, wait_until};

const DEVICES: usize = 4;

#[test]
fn demo_serves_the_simulated_fleet_with_windows_alerts_and_a_dashboard() {
    let (mut demo, url) = start_demo(DEVICES, 50);

    let devices = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let devices = http_get_json(&format!("{url}/api/devices"));
        let list = devices.as_array()?.clone();
        let ready = list.len() == DEVICES
            && list.iter().all(|d| {
                d["status"] == "online"
                    && d["latest"].as_array().is_some_and(|w| w.len() == 3)
                    && d["readings"].as_u64().unwrap_or(0) > 0
            });
        ready.then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "the demo's API never listed {DEVICES} reporting devices\n{}",
            demo.logs()
        )
    });

    // The second machine has a failing bearing: at 50 ms per sample it crosses 80 °C in ~7 s.
    let degrading = devices[..]
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .find(|d| d.ends_with("-02"))
        .unwrap();
    let alert = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let alerts = http_get_json(&format!("{url}/api/alerts?device={degrading}"));
        alerts
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "bearing-hot" && a["event"] == "raise")
            .cloned()
    })
    .unwrap_or_else(|| panic!("{degrading} never raised bearing-hot\n{}", demo.logs()));
    assert!(alert["value"].as_f64().unwrap() >= 80.0, "{alert}");

    let dom = rendered_dom(&format!("{url}/"));
    for d in &devices {
        let id = d["device"].as_str().unwrap();
        assert!(dom.contains(id), "dashboard does not show {id}:\n{dom}");
    }
    assert!(dom.contains("bearing"), "dashboard shows no series:\n{dom}");
    assert!(
        !dom.contains("Waiting for data"),
        "dashboard never loaded the fleet:\n{dom}"
    );

    let status = demo
        .terminate(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("demo did not stop on SIGTERM\n{}", demo.logs()));
    assert!(
        status.success(),
        "demo exited with {status}\n{}",
        demo.logs()
    );
}
