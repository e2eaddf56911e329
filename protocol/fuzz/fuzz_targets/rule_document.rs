//! Rule documents as the agent (TOML) and the API (JSON) read them: parse, validate, and
//! evaluate a valid rule against some values. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::ThresholdRule;

fn exercise(rule: &ThresholdRule) {
    if rule.validate().is_ok() {
        for v in [
            f64::NAN,
            f64::INFINITY,
            -1.0e300,
            -1.0,
            0.0,
            0.5,
            80.0,
            1.0e300,
        ] {
            let _ = (rule.breached(v), rule.cleared(v));
        }
        let _ = (rule.clear_level(), rule.clear_band());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = serde_json::from_str::<ThresholdRule>(text) {
        exercise(&rule);
    }
    if let Ok(rule) = toml::from_str::<ThresholdRule>(text) {
        exercise(&rule);
    }
});
