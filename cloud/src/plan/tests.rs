use super::*;

/// The batch defaults of earlier agents (60 readings, 5 s, no target size).
fn five_s() -> Fleet {
    Fleet {
        max_readings: 60,
        max_age_s: 5.0,
        target_bytes: 131_072,
        ..Fleet::default()
    }
}

fn usd(plan: &Plan, service: &str, item: &str) -> f64 {
    plan.lines
        .iter()
        .find(|l| l.service == service && l.item == item)
        .map_or_else(|| panic!("no line {service} {item}"), |l| l.usd)
}

#[test]
fn the_earlier_defaults_send_a_message_every_five_seconds_and_cost_per_line() {
    let p = plan(&five_s(), &Prices::default()).unwrap();
    let x = &p.facts;
    // 60 readings at most, 5 s at most: 5 readings of each of 10 series.
    assert_eq!(x.readings_per_message, 50.0);
    assert_eq!(x.message_interval_s, 5.0);
    assert!(
        x.bytes_per_reading > 2.0 && x.bytes_per_reading < 20.0,
        "{x:?}"
    );
    assert_eq!(x.iot_units_per_message, 1);
    // Per device and 60 s invocation: 10 series x 2 minutes + the device item, for 12 messages.
    assert!(
        (x.write_units_per_message - 21.0 / 12.0).abs() < 1e-9,
        "{x:?}"
    );
    assert_eq!(x.shards, 1);
    let total: f64 = p.lines.iter().map(|l| l.usd).sum();
    assert!((total - p.total_usd).abs() < 1e-9);
    assert!((p.per_device_usd - p.total_usd / 200.0).abs() < 1e-12);
    // Telemetry and status: 518,400 + 43,200 messages a device.
    assert!(
        (x.messages_per_device_month - 561_600.0).abs() < 1e-6,
        "{x:?}"
    );
    let messaging = usd(&p, "IoT Core", "messaging (5 KB units)");
    assert!((messaging - 200.0 * 561_600.0 * 1.00 / 1e6).abs() < 1e-6);
}

#[test]
fn basic_ingest_drops_the_messaging_line_and_on_demand_replaces_the_shards() {
    let fleet = Fleet {
        basic_ingest: true,
        on_demand: true,
        ..five_s()
    };
    let p = plan(&fleet, &Prices::default()).unwrap();
    assert_eq!(usd(&p, "IoT Core", "messaging (5 KB units)"), 0.0);
    assert!(usd(&p, "IoT Core", "rules triggered") > 0.0);
    assert!(p.lines.iter().all(|l| l.item != "shards"));
    assert!(usd(&p, "Kinesis", "on-demand stream") > 0.0);
}

#[test]
fn longer_batches_and_windows_cost_less_per_device() {
    let short = plan(&five_s(), &Prices::default()).unwrap();
    let minute = plan(&Fleet::default(), &Prices::default()).unwrap();
    assert!(
        minute.facts.message_interval_s == 60.0,
        "{:?}",
        minute.facts
    );
    assert!(minute.facts.bytes_per_reading < short.facts.bytes_per_reading);
    assert!(minute.per_device_usd < short.per_device_usd);
    let no_window = Fleet {
        batching_window_s: 0.0,
        ..five_s()
    };
    let no_window = plan(&no_window, &Prices::default()).unwrap();
    assert!(no_window.facts.write_units_per_message > 2.5 * short.facts.write_units_per_message);
}

#[test]
fn limits_the_fleet_comes_near_are_warned_about() {
    let fast = Fleet {
        devices: 5_000,
        hz: 1_000.0,
        max_age_s: 0.005,
        ..Fleet::default()
    };
    let p = plan(&fast, &Prices::default()).unwrap();
    let all = p.warnings.join("\n");
    assert!(all.contains("per connection"), "{all}");
    assert!(p.facts.shards > 1, "{:?}", p.facts);
    let quiet = plan(
        &Fleet {
            batching_window_s: 0.0,
            ..Fleet::default()
        },
        &Prices::default(),
    )
    .unwrap();
    assert!(!quiet.warnings.join("\n").contains("per connection"));
}

#[test]
fn impossible_fleets_are_refused_with_the_option_to_fix() {
    for (fleet, option) in [
        (
            Fleet {
                devices: 0,
                ..Fleet::default()
            },
            "--devices",
        ),
        (
            Fleet {
                hz: 0.0,
                ..Fleet::default()
            },
            "--hz",
        ),
        (
            Fleet {
                batching_window_s: 301.0,
                ..Fleet::default()
            },
            "--batching-window-s",
        ),
        (
            Fleet {
                ttl_days: f64::NAN,
                ..Fleet::default()
            },
            "--ttl-days",
        ),
    ] {
        let err = plan(&fleet, &Prices::default()).unwrap_err();
        assert!(err.to_string().contains(option), "{err}");
    }
}

#[test]
fn the_table_names_every_line_and_the_total() {
    let p = plan(&Fleet::default(), &Prices::default()).unwrap();
    let text = render(&p);
    for l in &p.lines {
        assert!(text.contains(l.item), "{text}");
    }
    assert!(text.contains("per gateway"), "{text}");
}

#[test]
fn the_agents_defaults_cost_under_a_dollar_a_gateway() {
    let p = plan(&Fleet::default(), &Prices::default()).unwrap();
    assert_eq!(p.facts.message_interval_s, 60.0);
    assert!(p.per_device_usd < 1.0, "{}", render(&p));
    let basic = Fleet {
        basic_ingest: true,
        ..Fleet::default()
    };
    let basic = plan(&basic, &Prices::default()).unwrap();
    assert!(basic.per_device_usd < p.per_device_usd);
}

#[test]
fn at_higher_rates_the_default_batch_is_cut_at_one_billing_unit() {
    for (series, hz) in [(10, 10.0), (3, 1000.0)] {
        let fleet = Fleet {
            series,
            hz,
            ..Fleet::default()
        };
        let p = plan(&fleet, &Prices::default()).unwrap();
        let x = &p.facts;
        assert_eq!(x.iot_units_per_message, 1, "{series} x {hz} Hz: {x:?}");
        assert!(x.message_interval_s < 60.0, "{x:?}");
        assert!(
            x.message_bytes > 3 * IOT_UNIT_BYTES / 4,
            "{series} x {hz} Hz: a unit not filled: {x:?}"
        );
        // Without the target the same fleet sends bigger messages of several units.
        let big = Fleet {
            target_bytes: 131_072,
            ..fleet
        };
        let big = plan(&big, &Prices::default()).unwrap();
        assert!(big.facts.iot_units_per_message > 1, "{:?}", big.facts);
    }
}
