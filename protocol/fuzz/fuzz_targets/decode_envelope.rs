//! Any bytes into the envelope decoder and the payload decoder (`decode_any`: a message or a
//! bundle of them): a typed error or a result, never a panic. A message either accepts must
//! encode again, and decode to the same thing (values compared as bits, so NaN payloads
//! count), and is refused with a byte appended; a bundle must re-encode from its re-encoded
//! messages and give them back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::{decode, decode_any, encode_bundle, Body, Decoded, EncodeError, Envelope};

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
            format!("{} {} {} {cols:?}", msg.device, msg.epoch, msg.seq)
        }
        other => format!("{} {} {} {other:?}", msg.device, msg.epoch, msg.seq),
    }
}

fuzz_target!(|data: &[u8]| {
    match decode_any(data) {
        Ok(Decoded::Message(msg)) => {
            assert_eq!(
                bits(&decode(data).expect("decode agrees with decode_any")),
                bits(&msg)
            );
        }
        Ok(Decoded::Bundle(bundle)) => {
            let inner: Vec<Vec<u8>> = bundle
                .messages
                .iter()
                .filter_map(|m| m.encode().ok())
                .collect();
            if inner.len() == bundle.messages.len() {
                let refs: Vec<&[u8]> = inner.iter().map(Vec::as_slice).collect();
                match encode_bundle(&bundle.device, bundle.seq, &refs) {
                    Ok(again) => {
                        let back = decode_any(&again).expect("a re-encoded bundle decodes");
                        let Decoded::Bundle(back) = back else {
                            panic!("a bundle decodes as a message")
                        };
                        let a: Vec<String> = back.messages.iter().map(bits).collect();
                        let b: Vec<String> = bundle.messages.iter().map(bits).collect();
                        assert_eq!(a, b);
                    }
                    Err(EncodeError::TooLarge { .. }) => {}
                    Err(e) => panic!("bundle decoded but does not encode: {e}"),
                }
            }
        }
        Err(_) => assert!(
            decode(data).is_err(),
            "decode accepts what decode_any refuses"
        ),
    }
    // A payload is one CBOR item and nothing after it (1.3): whatever is accepted stops being
    // accepted with a byte appended.
    if decode_any(data).is_ok() {
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode_any(&longer).is_err(), "trailing byte accepted");
    }
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
