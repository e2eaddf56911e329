//! Any bytes into the envelope decoder: it returns a typed error or a message, never panics.
//! A message it accepts must encode again, and decode to the same thing (values compared as
//! bits, so NaN payloads count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::{decode, Body, EncodeError, Envelope};

fn bits(msg: &Envelope) -> String {
    match &msg.body {
        Body::Telemetry(b) => {
            let cols: Vec<_> = b
                .series
                .iter()
                .map(|s| {
                    let v: Vec<u64> = s.values.iter().map(|x| x.to_bits()).collect();
                    (
                        s.sensor.clone(),
                        s.metric.clone(),
                        s.unit.clone(),
                        s.t0_ms,
                        s.dt_ms.clone(),
                        v,
                    )
                })
                .collect();
            format!("{} {} {cols:?}", msg.device, msg.seq)
        }
        other => format!("{} {} {other:?}", msg.device, msg.seq),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(data) {
        // What the decoder accepts, the encoder accepts, except that the re-encoding may be a
        // few bytes longer (a missing "u" is written as ""), so over the size limit.
        match msg.encode() {
            Ok(again) => {
                let back = decode(&again).expect("a re-encoded message decodes");
                assert_eq!(bits(&back), bits(&msg));
            }
            Err(EncodeError::TooLarge { .. }) => {}
            Err(e) => panic!("decoded but does not encode: {e}"),
        }
    }
});
