//! Document parsing, the size limit, the overlay on the TOML base and its check, the hash, the
//! kept file.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::config::Config;

/// The simulator's rules: bearing-hot (above 80, clear 75, critical) and vibration-high.
fn base() -> Config {
    Config::simulated(
        "pump-7",
        0,
        crate::sim::Scenario::Steady,
        "/var/lib/osprey-agent/journal",
        "127.0.0.1",
        1883,
    )
    .unwrap()
}

/// The example config's text (the same two rules, in TOML).
fn example_toml() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/simulator.toml"))
        .unwrap()
}

fn doc(value: serde_json::Value) -> Document {
    Document::from_value(value).unwrap()
}

fn problem(value: serde_json::Value) -> Problem {
    let parsed = Document::from_value(value).map_err(|(_, p)| p);
    match parsed.and_then(|d| effective(&base(), &d, Mode::Topic)) {
        Ok(_) => panic!("document should be rejected"),
        Err(problem) => problem,
    }
}

fn hot(threshold: f64) -> serde_json::Value {
    json!({"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
           "when": "above", "threshold": threshold, "clear": threshold - 5.0,
           "severity": "critical"})
}

#[test]
fn a_document_rule_overrides_the_file_rule_of_its_id_and_new_ones_are_added() {
    let extra = json!({"id": "motor-cold", "sensor": "motor", "metric": "temperature",
                       "when": "below", "threshold": 5.0});
    let laid = effective(
        &base(),
        &doc(json!({"rules": [extra, hot(70.0)]})),
        Mode::Topic,
    )
    .unwrap();
    let ids: Vec<&str> = laid.config.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["bearing-hot", "vibration-high", "motor-cold"]);
    assert_eq!(laid.config.rules[0].threshold, 70.0);
    assert_eq!(
        laid.sources,
        [
            RuleSource::Document(1),
            RuleSource::File,
            RuleSource::Document(0)
        ]
    );
    // Everything but the rules stays the file's.
    assert_eq!(laid.config.sensors, base().sensors);
    assert_eq!(laid.config.mqtt, base().mqtt);
}

#[test]
fn an_empty_rules_array_is_the_file_alone() {
    let laid = effective(&base(), &doc(json!({"rules": []})), Mode::Shadow).unwrap();
    assert_eq!(laid.config, base());
}

#[test]
fn an_invalid_rule_is_refused_with_its_index_and_checks_words() {
    // clear above the threshold of an `above` rule: the check's own message.
    let mut bad = hot(70.0);
    bad["clear"] = json!(90.0);
    let p = problem(json!({"rules": [hot(60.0), bad]}));
    assert_eq!(p.field, "rules[1]");
    let checked = Config::from_toml_str(
        &example_toml().replace("clear = 75.0", "clear = 90.0"),
        Path::new("/etc/osprey"),
    )
    .unwrap_err()
    .to_string();
    // The same validator words both: "rule bearing-hot: clear level 90 must be at or below
    // the threshold 80" in the file, with the document's levels here.
    assert!(
        p.reason
            .starts_with("rule bearing-hot: clear level 90 must be at or below the threshold"),
        "{p}"
    );
    assert!(
        checked.contains("rule bearing-hot: clear level 90 must be at or below the threshold 80"),
        "{checked}"
    );
}

#[test]
fn typos_missing_fields_and_unknown_keys_are_refused() {
    let mut typo = hot(70.0);
    typo["thresold"] = json!(1.0);
    let p = problem(json!({"rules": [typo]}));
    assert_eq!(p.field, "rules[0]");
    assert!(p.reason.contains("unknown field `thresold`"), "{p}");

    let p = problem(json!({"rules": [{"id": "x", "sensor": "s", "metric": "m", "when": "above"}]}));
    assert_eq!(p.field, "rules[0]");
    assert!(p.reason.contains("needs `threshold`"), "{p}");

    let p = problem(json!({"rules": [], "sensors": []}));
    assert_eq!(p.field, "sensors");
    let p = problem(json!({"rule": []}));
    assert_eq!(p.field, "rule");
    let p = problem(json!({"device": "pump-7"}));
    assert_eq!(p.field, "rules");
    let p = problem(json!({"rules": {"bearing-hot": hot(1.0)}}));
    assert_eq!(p.field, "rules");
    let p = problem(json!([hot(1.0)]));
    assert_eq!(p.field, "document");
    let p = problem(json!({"rules": [], "version": -1}));
    assert_eq!(p.field, "version");
}

#[test]
fn duplicate_ids_in_a_document_are_refused() {
    let p = problem(json!({"rules": [hot(70.0), hot(60.0)]}));
    assert_eq!(p.field, "rules[1]");
    assert!(p.reason.contains("duplicate rule id"), "{p}");
}

#[test]
fn a_document_for_another_device_is_refused() {
    let p = problem(json!({"device": "pump-8", "rules": [hot(70.0)]}));
    assert_eq!(p.field, "device");
    assert!(p.reason.contains("pump-8"), "{p}");
    assert!(effective(
        &base(),
        &doc(json!({"device": "pump-7", "rules": [hot(70.0)]})),
        Mode::Topic
    )
    .is_ok());
}

#[test]
fn a_shadow_document_has_no_version_of_its_own() {
    let d = doc(json!({"rules": [], "version": 3}));
    assert_eq!(d.version, Some(3));
    assert!(effective(&base(), &d, Mode::Topic).is_ok());
    let p = effective(&base(), &d, Mode::Shadow).unwrap_err();
    assert_eq!(p.field, "version");
}

#[test]
fn size_limit_and_non_json() {
    let big = json!({"rules": [], "device": "x".repeat(MAX_DOCUMENT_BYTES)});
    let (hash, p) = Document::from_value(big.clone()).unwrap_err();
    assert_eq!(p.field, "document");
    assert!(p.reason.contains("more than the 16384 allowed"), "{p}");
    assert!(hash.starts_with("sha256:"));
    let bytes = big.to_string().into_bytes();
    assert!(Document::from_bytes(&bytes).is_err());
    let (_, p) = Document::from_bytes(b"{\"rules\": [").unwrap_err();
    assert_eq!(p.field, "document");
    assert!(p.reason.starts_with("not JSON"), "{p}");
    // Just under the limit passes the size check.
    let pad = MAX_DOCUMENT_BYTES - json!({"device": "", "rules": []}).to_string().len();
    let fits = json!({"rules": [], "device": "x".repeat(pad)});
    assert_eq!(canonical_json(&fits).len(), MAX_DOCUMENT_BYTES);
    assert!(Document::from_value(fits).is_ok());
}

#[test]
fn the_hash_ignores_key_order_and_spacing() {
    let a = Document::from_bytes(br#"{"rules": [{"id": "a", "sensor": "s", "metric": "m", "when": "above", "threshold": 1.5}]}"#).unwrap();
    let b = Document::from_bytes(
        br#"{"rules":[{"when":"above","threshold":1.5,"metric":"m","sensor":"s","id":"a"}]}"#,
    )
    .unwrap();
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash.len(), "sha256:".len() + 64);
    let c = Document::from_bytes(
        br#"{"rules":[{"when":"above","threshold":1.25,"metric":"m","sensor":"s","id":"a"}]}"#,
    )
    .unwrap();
    assert_ne!(a.hash, c.hash);
    assert_eq!(
        canonical_json(&json!({"b": [1, {"d": null, "c": "x"}], "a": true})),
        br#"{"a":true,"b":[1,{"c":"x","d":null}]}"#
    );
}

#[test]
fn the_kept_document_round_trips_and_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("state/doc.json"));
    assert_eq!(store.load().unwrap(), Persisted::default());
    let persisted = Persisted {
        applied: Some(Applied {
            origin: Origin::Shadow {
                shadow: "osprey-config".into(),
                version: 12,
            },
            hash: "sha256:00".into(),
            time_ms: 1,
            document: json!({"rules": [hot(70.0)]}),
        }),
        rejected: Some(Rejected {
            origin: Origin::Topic {
                topic: "cmd/osprey/pump-7/config".into(),
                version: None,
            },
            hash: "sha256:11".into(),
            field: "rules[0]".into(),
            reason: "bad".into(),
            time_ms: 2,
        }),
    };
    store.save(&persisted).unwrap();
    assert_eq!(store.load().unwrap(), persisted);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::write(store.path(), "{\"format\": 9}").unwrap();
    assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn remote_config_section_is_checked_at_its_line() {
    let text =
        "device_id = \"pump-7\"\n[remote_config]\nmode = \"shadow\"\nshadow = \"bad name!\"\n";
    let err = Config::from_toml_str(text, Path::new("/etc/osprey")).unwrap_err();
    let loc = err.location().unwrap();
    assert_eq!(loc.line, text.lines().count());
    assert!(
        err.to_string()
            .contains("remote_config.shadow: invalid shadow name"),
        "{err}"
    );

    let text = "device_id = \"pump-7\"\n[remote_config]\nmode = \"shaddow\"\n".to_owned();
    let err = Config::from_toml_str(&text, Path::new("/etc/osprey")).unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `shaddow`"),
        "{err}"
    );

    let text = "device_id = \"pump-7\"\n[remote_config]\nmode = \"topic\"\n".to_owned();
    let config = Config::from_toml_str(&text, Path::new("/etc/osprey")).unwrap();
    assert_eq!(config.remote.mode, Mode::Topic);
    assert_eq!(config.remote.shadow, DEFAULT_SHADOW);
    assert_eq!(
        config.remote.path,
        Path::new("/var/lib/osprey-agent/journal.remote-config.json")
    );
    assert_eq!(base().remote.mode, Mode::Off);
}

#[test]
fn shadow_topics_follow_the_named_shadow_layout() {
    let t = shadow::Topics::new("pump-7", "osprey-config");
    assert_eq!(t.get(), "$aws/things/pump-7/shadow/name/osprey-config/get");
    assert_eq!(
        t.update(),
        "$aws/things/pump-7/shadow/name/osprey-config/update"
    );
    assert_eq!(
        t.filters()[2],
        "$aws/things/pump-7/shadow/name/osprey-config/update/delta"
    );
    let accepted = json!({"state": {"desired": {"rules": []}}, "version": 4,
                          "clientToken": "t1", "timestamp": 1});
    let topic = format!("{}/accepted", t.get());
    match t.parse(&topic, accepted.to_string().as_bytes()) {
        Some(shadow::Response::GetAccepted {
            token,
            version,
            desired,
            ..
        }) => {
            assert_eq!(token.as_deref(), Some("t1"));
            assert_eq!(version, 4);
            assert_eq!(desired, Some(json!({"rules": []})));
        }
        other => panic!("{other:?}"),
    }
    let rejected = json!({"code": 404, "message": "No shadow exists with name: 'osprey-config'",
                          "clientToken": "t2", "timestamp": 1});
    let topic = format!("{}/rejected", t.get());
    assert!(matches!(
        t.parse(&topic, rejected.to_string().as_bytes()),
        Some(shadow::Response::GetRejected(shadow::Error {
            code: 404,
            ..
        }))
    ));
    // Another thing's shadow is not ours.
    assert_eq!(
        t.parse(
            "$aws/things/pump-8/shadow/name/osprey-config/update/delta",
            b"{\"version\": 1, \"state\": {}}"
        ),
        None
    );
}

#[test]
fn reported_matching_treats_null_as_absent() {
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(json!({"a": 1, "gone": null})).unwrap();
    assert!(shadow::reported_matches(
        Some(&json!({"a": 1, "other": 2})),
        &want
    ));
    assert!(!shadow::reported_matches(
        Some(&json!({"a": 1, "gone": 3})),
        &want
    ));
    assert!(!shadow::reported_matches(Some(&json!({"a": 2})), &want));
    assert!(!shadow::reported_matches(None, &want));
}

/// The coordinator on its own: link events in, configs and publishes out, no broker.
mod coordinator {
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::sync::mpsc;

    use super::{base, hot};
    use crate::config::Config;
    use crate::remote_config::{start, LinkEvent, Mode, Outgoing};

    struct Harness {
        events: mpsc::Sender<LinkEvent>,
        outgoing: mpsc::Receiver<Outgoing>,
        apply: mpsc::Receiver<Config>,
        _task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn harness(mode: Mode) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = base();
        config.remote.mode = mode;
        config.remote.path = dir.path().join("doc.json");
        let started = start(config, None);
        let link = started.link.unwrap();
        let outgoing = link.outgoing.into_inner();
        Harness {
            events: link.events,
            outgoing,
            apply: started.apply_rx,
            _task: tokio::spawn(started.coordinator.run()),
            _dir: dir,
        }
    }

    impl Harness {
        async fn send(&self, event: LinkEvent) {
            self.events.send(event).await.unwrap();
        }

        /// A connection comes up and its subscription is granted.
        async fn connect(&self, session: u64) {
            self.send(LinkEvent::Connected(session)).await;
            let granted = true;
            self.send(LinkEvent::Subscribed { session, granted }).await;
        }

        async fn message(&self, topic: &str, payload: Value) {
            let payload = payload.to_string().into_bytes();
            self.send(LinkEvent::Message {
                topic: topic.to_owned(),
                payload,
            })
            .await;
        }

        async fn next_out(&mut self) -> Outgoing {
            tokio::time::timeout(Duration::from_secs(60), self.outgoing.recv())
                .await
                .expect("a publish")
                .unwrap()
        }

        /// Lets the coordinator run, then says whether anything was published.
        async fn quiet(&mut self) -> bool {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.outgoing.try_recv().is_err()
        }
    }

    const PREFIX: &str = "$aws/things/pump-7/shadow/name/osprey-config";

    fn token(out: &Outgoing) -> String {
        let doc: Value = serde_json::from_slice(&out.payload).unwrap();
        doc["clientToken"].as_str().unwrap().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_answers_are_matched_by_token_and_version() {
        let mut h = harness(Mode::Shadow);
        h.connect(1).await;
        let get = h.next_out().await;
        assert_eq!(get.topic, format!("{PREFIX}/get"));
        assert_eq!(get.session, 1);
        let desired = json!({"rules": [hot(30.0)]});
        // Another client's get answer (the response topic is shared): ignored.
        let answer = |token: &str, version: u64| {
            json!({"state": {"desired": desired}, "version": version, "clientToken": token,
                   "timestamp": 1})
        };
        h.message(&format!("{PREFIX}/get/accepted"), answer("cloud-9", 5))
            .await;
        assert!(h.quiet().await);
        assert!(h.apply.try_recv().is_err());
        // Ours: applied, then reported with the version and hash.
        h.message(&format!("{PREFIX}/get/accepted"), answer(&token(&get), 5))
            .await;
        let applied = h.apply.recv().await.unwrap();
        assert_eq!(applied.rules[0].threshold, 30.0);
        let report = h.next_out().await;
        assert_eq!(report.topic, format!("{PREFIX}/update"));
        let doc: Value = serde_json::from_slice(&report.payload).unwrap();
        let reported = &doc["state"]["reported"];
        assert_eq!(reported["rules"], desired["rules"]);
        assert_eq!(reported["applied"]["version"], 5);
        assert!(reported["rejected"].is_null());
        // A delta no newer than the document in effect: nothing; a newer one: a get.
        h.message(
            &format!("{PREFIX}/update/delta"),
            json!({"state": {}, "version": 5}),
        )
        .await;
        assert!(h.quiet().await);
        h.message(
            &format!("{PREFIX}/update/delta"),
            json!({"state": {}, "version": 7}),
        )
        .await;
        assert_eq!(h.next_out().await.topic, format!("{PREFIX}/get"));
        // A new connection starts over: a get on it (the uplink drops what was meant for the
        // old one).
        h.send(LinkEvent::Disconnected(1)).await;
        h.connect(2).await;
        assert_eq!(h.next_out().await.session, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_get_is_retried_and_404_creates_the_shadow() {
        let mut h = harness(Mode::Shadow);
        h.connect(1).await;
        let get = h.next_out().await;
        h.message(
            &format!("{PREFIX}/get/rejected"),
            json!({"code": 500, "message": "Internal service failure", "clientToken": token(&get)}),
        )
        .await;
        assert!(h.quiet().await);
        // Paused time: the 30 s retry comes at once.
        let again = h.next_out().await;
        assert_eq!(again.topic, format!("{PREFIX}/get"));
        h.message(
            &format!("{PREFIX}/get/rejected"),
            json!({"code": 404, "message": "No shadow exists with name: 'osprey-config'",
                   "clientToken": token(&again)}),
        )
        .await;
        let report = h.next_out().await;
        let doc: Value = serde_json::from_slice(&report.payload).unwrap();
        assert_eq!(
            doc["state"]["reported"]["local_rules"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(h.apply.try_recv().is_err(), "nothing to apply");
    }

    #[tokio::test(start_paused = true)]
    async fn topic_documents_redelivered_or_cleared_change_nothing() {
        let mut h = harness(Mode::Topic);
        let topic = "cmd/osprey/pump-7/config";
        h.connect(1).await;
        let first = h.next_out().await;
        assert_eq!(first.topic, "dt/osprey/pump-7/config/reported");
        assert!(first.retain);
        let document = json!({"version": 2, "rules": [hot(30.0)]});
        h.message(topic, document.clone()).await;
        assert_eq!(h.apply.recv().await.unwrap().rules[0].threshold, 30.0);
        let report: Value = serde_json::from_slice(&h.next_out().await.payload).unwrap();
        assert_eq!(report["applied"]["version"], 2);
        // The retained message again (a reconnect), and an empty one (cleared): no change.
        h.message(topic, document).await;
        h.send(LinkEvent::Message {
            topic: topic.to_owned(),
            payload: Vec::new(),
        })
        .await;
        assert!(h.quiet().await);
        assert!(h.apply.try_recv().is_err());
        // Another device's topic is not ours.
        h.message("cmd/osprey/pump-8/config", json!({"rules": [hot(20.0)]}))
            .await;
        assert!(h.quiet().await);
        assert!(h.apply.try_recv().is_err());
    }
}
