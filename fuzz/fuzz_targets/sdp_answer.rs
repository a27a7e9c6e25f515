//! The SDP answerer on arbitrary input: never a panic, whatever the offer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_sip::sdp::{answer, AnswerParams};

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    let local = AnswerParams {
        ip: [127, 0, 0, 1].into(),
        port: 4000,
        session_id: 1,
        session_version: 1,
    };
    let _ = answer(offer, &local);
});
