use super::api::ApiReader;
use super::*;

const NOW: i64 = 1_767_225_600_000;

fn device(id: &str, status: &str, seen_ago_ms: Option<i64>, readings: u64) -> FleetDevice {
    FleetDevice {
        device: id.to_owned(),
        status: status.to_owned(),
        last_seen_ms: seen_ago_ms.map(|a| NOW - a),
        readings,
        active_alerts: 0,
        health: Some(100),
        latest: Vec::new(),
        events: Vec::new(),
    }
}

#[test]
fn a_device_page_lists_its_replaced_journals() {
    let mut d = device("pump-7", "online", Some(1_000), 20);
    assert!(!render_device(&d, NOW).contains("journal"));
    d.events.push(DeviceEvent {
        kind: "journal_replaced".to_owned(),
        time_ms: NOW - 180_000,
        old_epoch: 0,
        new_epoch: 77,
    });
    let page = render_device(&d, NOW);
    assert!(
        page.contains("journal replaced 3m ago (epoch 0 -> 77)"),
        "{page}"
    );
}

#[test]
fn ages_use_whole_units_and_switch_at_two_of_each() {
    let cases = [
        (0, "0s ago"),
        (999, "0s ago"),
        (59_999, "59s ago"),
        (119_999, "119s ago"),
        (120_000, "2m ago"),
        (7_199_999, "119m ago"),
        (7_200_000, "2h ago"),
        (172_799_999, "47h ago"),
        (172_800_000, "2d ago"),
        (-5_000, "in 5s"),
    ];
    for (ago, want) in cases {
        assert_eq!(age(NOW - ago, NOW), want, "{ago} ms");
    }
    // Nonsense times do not overflow.
    assert_eq!(
        age(i64::MIN, i64::MAX),
        format!("{}d ago", i64::MAX / 86_400_000)
    );
    assert!(age(i64::MAX, i64::MIN).starts_with("in "));
}

#[test]
fn fleet_table_columns_are_as_wide_as_their_widest_cell() {
    let mut long = device(
        "compressor-02-long-name",
        "offline",
        Some(3_600_000),
        1_234_567,
    );
    long.active_alerts = 2;
    long.health = Some(20);
    let mut never = device("fan-1", "unknown", None, 0);
    never.health = None;
    let text = render_fleet(
        &[device("pump-1", "online", Some(4_000), 60), long, never],
        NOW,
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "DEVICE                   CONNECTED  LAST SEEN  READINGS  ALERTS  HEALTH",
            "pump-1                   yes           4s ago        60       0     100",
            "compressor-02-long-name  no           60m ago   1234567       2      20",
            "fan-1                    ?              never         0       0       -",
        ]
    );
    assert_eq!(render_fleet(&[], NOW), "no devices have reported yet\n");
}

#[test]
fn device_view_lists_its_windows_with_ages_and_summaries() {
    let mut d = device("pump-1", "online", Some(1_000), 20);
    d.latest = vec![FleetWindow {
        sensor: "motor".into(),
        metric: "temperature".into(),
        kind: "hopping".into(),
        unit: "Cel".into(),
        start_ms: NOW - 300_000,
        end_ms: NOW,
        count: 20,
        mean: Some(41.25),
        min: Some(40.0),
        max: Some(42.5),
        p95: None,
        version: 3,
    }];
    let text = render_device(&d, NOW);
    assert!(text.starts_with("DEVICE "), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("SENSOR"))
        .expect("a windows table");
    let row = text.lines().last().unwrap();
    assert_eq!(
        header.find("COUNT").map(|i| i + 5),
        row.find("20").map(|i| i + 2)
    );
    for cell in [
        "motor", "hopping", "5m ago", "300s", "41.25", "40.00", "42.50", "-", "Cel",
    ] {
        assert!(row.contains(cell), "{cell} in {row:?}");
    }
    d.latest.clear();
    assert!(render_device(&d, NOW).ends_with("no windows yet\n"));
}

#[test]
fn json_output_leaves_out_windows_it_was_not_asked_for() {
    let v: serde_json::Value =
        serde_json::from_str(&to_json(&device("pump-1", "online", Some(0), 5))).unwrap();
    assert_eq!(v["device"], "pump-1");
    assert_eq!(v["readings"], 5);
    assert!(v.get("latest").is_none(), "{v}");
}

#[test]
fn api_urls_are_checked_with_a_reason() {
    for (url, reason) in [
        ("https://", "no host:port"),
        ("127.0.0.1:8080", "must start with http:// or https://"),
        ("http://", "no host:port"),
    ] {
        let err = ApiReader::new(url).unwrap_err().to_string();
        assert!(err.contains(reason), "{url}: {err}");
        assert!(
            err.contains("http://127.0.0.1:8080"),
            "says what to give: {err}"
        );
    }
    assert!(ApiReader::new("http://127.0.0.1:8080/").is_ok());
    assert!(ApiReader::new("http://localhost").is_ok());
    let missing_ca = super::api::ApiAccess {
        token: None,
        ca_file: Some("/nonexistent/ca.pem".into()),
    };
    let err = ApiReader::with_access("https://127.0.0.1:8443", &missing_ca)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--ca-file /nonexistent/ca.pem"), "{err}");
}

/// A port nobody listens on: bind one, then let it go.
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_unreachable_api_says_to_start_serve() {
    let port = unused_port();
    let options = FleetOptions {
        source: FleetSource::Api(format!("http://127.0.0.1:{port}")),
        access: Default::default(),
        device: None,
        json: false,
        watch: None,
    };
    let err = run(&options, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is `osprey serve` running there?"), "{err}");
    let bad_device = FleetOptions {
        device: Some("not a device".into()),
        ..options
    };
    let err = run(&bad_device, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::InvalidDevice { .. }), "{err}");
}

/// Output that resolves `second` once the screen has been cleared twice.
struct Probe {
    text: Vec<u8>,
    second: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Write for Probe {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        if String::from_utf8_lossy(&self.text)
            .matches("\x1b[2J")
            .count()
            >= 2
        {
            if let Some(tx) = self.second.take() {
                let _ = tx.send(());
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn watch_mode_reports_a_failed_read_and_keeps_going_until_stopped() {
    let port = unused_port();
    let options = FleetOptions {
        source: FleetSource::Api(format!("http://127.0.0.1:{port}")),
        access: Default::default(),
        device: None,
        json: false,
        watch: Some(Duration::from_secs(1)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut out = Probe {
        text: Vec::new(),
        second: Some(tx),
    };
    let stop = async {
        let _ = rx.await;
    };
    run(&options, &mut out, stop).await.unwrap();
    let text = String::from_utf8(out.text).unwrap();
    // Two refreshes, each clearing the screen and naming the failure; then the stop.
    assert_eq!(text.matches("\x1b[2J\x1b[H").count(), 2, "{text:?}");
    assert_eq!(text.matches("(retrying every 1s)").count(), 2, "{text:?}");
}
