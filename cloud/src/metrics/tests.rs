use std::collections::BTreeMap;

use super::*;

fn samples(metrics: &Metrics) -> BTreeMap<String, f64> {
    let text = metrics.render();
    assert!(text.ends_with("# EOF\n"), "{text}");
    parse_samples(&text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .into_iter()
        .collect()
}

#[test]
fn serve_exposition_parses_and_has_per_shard_series() {
    let stats = IngestStats::default();
    stats.count_mqtt_message();
    stats.count_mqtt_message();
    stats.update_shard("shardId-000000000000", |p| {
        p.state = "reading";
        p.millis_behind_latest = 1500;
        p.records = 42;
        p.throttled = 3;
        p.expired_iterators = 1;
        p.checkpoints = 7;
    });
    stats.update_shard("shardId-000000000001", |p| p.state = "waiting");
    let metrics = Metrics::serve(stats);
    let text = metrics.render();
    assert!(
        text.contains("# TYPE osprey_kinesis_iterator_age_milliseconds gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE osprey_kinesis_records counter"),
        "{text}"
    );
    let s = samples(&metrics);
    let shard0 = |name: &str| s[&format!("{name}{{shard=\"shardId-000000000000\"}}")];
    assert_eq!(shard0("osprey_kinesis_iterator_age_milliseconds"), 1500.0);
    assert_eq!(shard0("osprey_kinesis_records_total"), 42.0);
    assert_eq!(shard0("osprey_kinesis_get_records_throttled_total"), 3.0);
    assert_eq!(shard0("osprey_kinesis_expired_iterators_total"), 1.0);
    assert_eq!(shard0("osprey_kinesis_checkpoint_writes_total"), 7.0);
    assert_eq!(
        s["osprey_kinesis_iterator_age_milliseconds{shard=\"shardId-000000000001\"}"],
        0.0
    );
    assert_eq!(
        s["osprey_kinesis_shard_state{shard=\"shardId-000000000001\",state=\"waiting\"}"],
        1.0
    );
    assert_eq!(s["osprey_mqtt_messages_received_total"], 2.0);
    for name in [
        "osprey_messages_applied_total",
        "osprey_messages_duplicate_total",
        "osprey_dead_letters_total",
    ] {
        assert_eq!(s.get(name), Some(&0.0), "{name} missing from {s:?}");
    }
}

#[test]
fn serve_without_shards_has_no_shard_series() {
    let s = samples(&Metrics::serve(IngestStats::default()));
    assert!(s.keys().all(|k| !k.starts_with("osprey_kinesis_")), "{s:?}");
    assert!(s.contains_key("osprey_messages_applied_total"), "{s:?}");
}

#[test]
fn bridge_exposition_parses_and_has_every_series() {
    let stats = BridgeStats {
        received: 10,
        forwarded: 8,
        bytes: 800,
        retried: 2,
        throttled: 1,
        failed_calls: 1,
        dropped: 0,
        off_topic: 3,
        buffered_bytes: 200,
        put_calls: 4,
        retries: 2,
        buffered_records: 2,
        max_buffered_bytes: 600,
        budget_bytes: 1 << 20,
        held_back: 5,
        held_back_micros: 2_500_000,
    };
    let s = samples(&Metrics::bridge(move || stats));
    let expected = [
        ("osprey_bridge_mqtt_messages_received_total", 10.0),
        ("osprey_bridge_records_put_total", 8.0),
        ("osprey_bridge_records_put_bytes_total", 800.0),
        ("osprey_bridge_put_records_calls_total", 4.0),
        ("osprey_bridge_put_records_failed_calls_total", 1.0),
        ("osprey_bridge_put_retries_total", 2.0),
        ("osprey_bridge_records_retried_total", 2.0),
        ("osprey_bridge_records_throttled_total", 1.0),
        ("osprey_bridge_records_dropped_total", 0.0),
        ("osprey_bridge_records_off_topic_total", 3.0),
        ("osprey_bridge_buffered_bytes", 200.0),
        ("osprey_bridge_buffered_records", 2.0),
        ("osprey_bridge_buffered_max_bytes", 600.0),
        ("osprey_bridge_buffer_budget_bytes", 1_048_576.0),
        ("osprey_bridge_backpressure_waits_total", 5.0),
        ("osprey_bridge_backpressure_seconds_total", 2.5),
    ];
    for (name, value) in expected {
        assert_eq!(s.get(name), Some(&value), "{name} in {s:?}");
    }
    assert_eq!(s.len(), expected.len(), "unexpected series in {s:?}");
}

#[test]
fn parse_samples_reads_labels_with_spaces_and_rejects_garbage() {
    let text = "# HELP x y\nx_total{state=\"leased elsewhere\"} 1\nplain 2.5\n# EOF\n";
    assert_eq!(
        parse_samples(text).unwrap(),
        [
            ("x_total{state=\"leased elsewhere\"}".to_owned(), 1.0),
            ("plain".to_owned(), 2.5)
        ]
    );
    assert!(parse_samples("name not-a-number\n").is_err());
    assert!(parse_samples("lonely\n").is_err());
}

#[test]
fn identity_mismatches_are_labelled_by_claimed_and_source_device() {
    let stats = IngestStats::default();
    let s = samples(&Metrics::serve(stats.clone()));
    assert!(
        s.keys()
            .all(|k| !k.starts_with("osprey_identity_mismatches")),
        "{s:?}"
    );
    let m = crate::pipeline::IdentityMismatch {
        claimed: "pump-7".into(),
        source: "intruder-9".into(),
    };
    stats.count_identity_mismatch(&m);
    stats.count_identity_mismatch(&m);
    let s = samples(&Metrics::serve(stats));
    assert_eq!(
        s.get("osprey_identity_mismatches_total{claimed=\"pump-7\",source=\"intruder-9\"}"),
        Some(&2.0),
        "{s:?}"
    );
}
