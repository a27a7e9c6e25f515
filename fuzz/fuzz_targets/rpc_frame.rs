//! Arbitrary text as a device's JSON-RPC frame, through what the server does before it needs
//! a device (`signaling::parse_device_frame`: the envelope, the SDP limits, the params of
//! `offerSdp` and `answerSdp`). Nothing may panic; an accepted offer is within the SDP limits;
//! every error has a JSON-RPC code and renders as a JSON error response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay::signaling::wire::{
    MAX_ANSWER_SDP_BYTES, MAX_OFFER_MEDIA_SECTIONS, MAX_OFFER_SDP_BYTES,
};
use patchbay::signaling::{parse_device_frame, RpcError};
use serde_json::Value;

const CODES: [i64; 6] = [
    RpcError::PARSE,
    RpcError::INVALID_REQUEST,
    RpcError::METHOD_NOT_FOUND,
    RpcError::INVALID_PARAMS,
    RpcError::INTERNAL,
    RpcError::REFUSED,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_device_frame(text) {
        Ok(request) => {
            let sdp = |field: &str| match &request.params {
                Value::Object(map) => map.get(field).and_then(Value::as_str),
                Value::Array(items) => items.first().and_then(Value::as_str),
                _ => None,
            };
            if request.method == "offerSdp" {
                if let Some(offer) = sdp("sdpOffer") {
                    assert!(offer.len() <= MAX_OFFER_SDP_BYTES);
                    let sections = offer.lines().filter(|l| l.starts_with("m=")).count();
                    assert!(sections <= MAX_OFFER_MEDIA_SECTIONS);
                }
            }
            if request.method == "answerSdp" {
                if let Some(answer) = sdp("sdpAnswer") {
                    assert!(answer.len() <= MAX_ANSWER_SDP_BYTES);
                }
            }
        }
        Err(e) => {
            assert!(CODES.contains(&e.code), "unexpected code {}", e.code);
            let rendered = serde_json::to_string(&e).expect("an error serializes");
            serde_json::from_str::<Value>(&rendered).expect("and parses back");
        }
    }
});
