//! A test phone: dials patchbay's SIP bridge with a participant token (as Bandwidth's
//! transfer helper would), sends a tone as G.711 µ-law RTP, and reports what it heard.
//!
//! ```text
//! cargo run --example phone -- --sip 127.0.0.1:5060 --token <device token> --tone 1000 --seconds 10
//! ```
//!
//! It prints one JSON line when done: the strongest frequency it heard (among 200..3400 Hz in
//! 10 Hz steps, after the first second), the share of power at `--probe` frequencies, and the
//! number of samples heard. Exit status 2 if the call was refused (code and reason printed).
#![allow(clippy::disallowed_methods)] // a test phone that listens for a while

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use patchbay_sip::tone::{goertzel_power, scan_dominant};
use patchbay_testkit::phone_ua;

#[derive(Parser, Debug)]
#[command(
    about = "Dial patchbay over SIP with a participant token, send a tone, report what is heard"
)]
struct Args {
    /// The SIP address of patchbay (UDP).
    #[arg(long)]
    sip: SocketAddr,
    /// The participant's device token.
    #[arg(long)]
    token: String,
    /// Tone to send, in Hz (0: silence).
    #[arg(long, default_value_t = 1000.0)]
    tone: f64,
    /// How long to stay in the call.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Frequencies whose share of the heard power to report.
    #[arg(long, value_delimiter = ',')]
    probe: Vec<f64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let phone = match phone_ua::dial(args.sip, &phone_ua::Dial::with_token(&args.token)).await {
        Ok(p) => p,
        Err(r) => {
            println!(
                "{}",
                serde_json::json!({"refused": r.code, "reason": r.reason})
            );
            std::process::exit(2);
        }
    };
    eprintln!("phone: answered; sending RTP to {}", phone.remote_rtp);
    phone.play_tone(args.tone);
    // The first second is settling (jitter buffers, first keyframes elsewhere).
    tokio::time::sleep(Duration::from_secs(1)).await;
    phone.clear_heard();
    tokio::time::sleep(Duration::from_secs_f64((args.seconds - 1.0).max(0.5))).await;
    let heard = phone.heard();
    let hung_up_by_server = phone.bye_received();
    let digits: Vec<serde_json::Value> = phone
        .digits_heard()
        .into_iter()
        .map(|(digit, samples)| serde_json::json!({"digit": digit, "ms": u32::from(samples) / 8}))
        .collect();
    phone.hangup().await;
    let mean_square =
        heard.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / heard.len().max(1) as f64;
    let share = |hz: f64| {
        if mean_square == 0.0 {
            0.0
        } else {
            goertzel_power(&heard, hz, 8000) / mean_square
        }
    };
    let dominant = (mean_square > 0.0).then(|| scan_dominant(&heard, 8000, 200.0, 3400.0, 10.0));
    let probes: serde_json::Map<String, serde_json::Value> = args
        .probe
        .iter()
        .map(|&hz| (format!("{hz}"), serde_json::json!(share(hz))))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "samples": heard.len(),
            "rms": mean_square.sqrt(),
            "dominant_hz": dominant,
            "share": probes,
            "bye_from_server": hung_up_by_server,
            // RFC 4733 keys received (one per event), with their duration in ms.
            "digits": digits,
        })
    );
}
