//! Prints the bytes-per-reading table of the three reference streams (CBOR against two JSON
//! baselines) and the machine it ran on:
//!
//! ```sh
//! cargo run --release -p osprey-protocol --example sizes
//! ```

#[path = "../benches/reference/mod.rs"]
mod reference;

fn main() {
    let minutes = 60;
    println!("reference streams, {minutes} minutes each; bytes per reading, whole messages");
    println!(
        "{:<16} {:>9} {:>9} {:>11} {:>12} {:>9} {:>11}",
        "stream", "readings", "CBOR", "JSON (i)", "CBOR/(i)", "JSON (ii)", "CBOR/(ii)"
    );
    for stream in reference::all(minutes) {
        let (cbor, j1, j2) = reference::sizes(&stream);
        println!(
            "{:<16} {:>9} {:>9.2} {:>11.2} {:>12} {:>9.2} {:>11}",
            stream.name,
            stream.readings(),
            cbor,
            j1,
            format!("1/{:.1}", j1 / cbor),
            j2,
            format!("1/{:.1}", j2 / cbor),
        );
    }
    println!("JSON (i): per-reading objects {{device,sensor,metric,unit,ts,value}} in one array per batch (serde_json)");
    println!("JSON (ii): the same columnar envelope and columns, as JSON (serde_json)");
    println!("machine: {}", machine());
}

/// CPU model and core count, from lscpu.
fn machine() -> String {
    let out = std::process::Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    format!("{}, {} CPUs", field("Model name"), field("CPU(s)"))
}
