//! A test phone: dials patchbay's SIP bridge with a participant token (as Bandwidth's
//! transfer helper would), sends a tone as G.711 µ-law RTP, and reports what it heard.
//!
//! ```text
//! cargo run --release --example phone -- --sip 127.0.0.1:5060 --token <device token> --tone 1000 --seconds 10
//! ```
//!
//! It prints one JSON line when done: the strongest frequency it heard (among 200..3400 Hz in
//! 10 Hz steps, after the first second), the share of power at `--probe` frequencies, the
//! number of samples heard, the RFC 4733 keys it received (once per key, with its duration),
//! its `Call-ID` and the methods of the requests the server sent it (`["BYE"]` when the server
//! hung up; a transfer between sessions sends none). Exit status 2 if the call was refused
//! (code and reason printed).
//!
//! With `--commands` it also reads commands from stdin, one per line, while the call lasts
//! (`--seconds` still bounds it; end of input does not end the call, a BYE from the server
//! does):
//!
//! ```text
//! press 12#     press keys (RFC 4733 events, each held 100 ms)
//! report        print a report line of what was heard since the last one, and the keys
//!               received so far ({"report": {...}})
//! hangup        hang up now (the final report follows; it covers what was heard since the
//!               last report line)
//! ```
#![allow(clippy::disallowed_methods)] // a test phone that listens for a while

use std::io::Write;
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
    /// Read commands (`press DIGITS`, `report`, `hangup`) from stdin during the call.
    #[arg(long)]
    commands: bool,
}

/// What was heard: its level, dominant frequency and the share of power at each probe.
fn heard_report(heard: &[i16], probe: &[f64]) -> serde_json::Value {
    let mean_square =
        heard.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / heard.len().max(1) as f64;
    let share = |hz: f64| {
        if mean_square == 0.0 {
            0.0
        } else {
            goertzel_power(heard, hz, 8000) / mean_square
        }
    };
    let dominant = (mean_square > 0.0).then(|| scan_dominant(heard, 8000, 200.0, 3400.0, 10.0));
    let probes: serde_json::Map<String, serde_json::Value> = probe
        .iter()
        .map(|&hz| (format!("{hz}"), serde_json::json!(share(hz))))
        .collect();
    serde_json::json!({
        "samples": heard.len(),
        "rms": mean_square.sqrt(),
        "dominant_hz": dominant,
        "share": probes,
    })
}

/// The RFC 4733 keys received so far (one per event), with their duration in ms.
fn digits_report(phone: &phone_ua::Phone) -> Vec<serde_json::Value> {
    phone
        .digits_heard()
        .into_iter()
        .map(|(digit, samples)| serde_json::json!({"digit": digit, "ms": u32::from(samples) / 8}))
        .collect()
}

/// Runs stdin commands until `hangup` (returns then) or the end of input (never returns).
async fn run_commands(phone: &phone_ua::Phone, probe: &[f64]) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("press"), Some(keys)) => {
                for key in keys.chars() {
                    phone.press(key);
                }
            }
            (Some("report"), None) => {
                let heard = phone.heard();
                phone.clear_heard();
                let mut report = heard_report(&heard, probe);
                if let Some(fields) = report.as_object_mut() {
                    fields.insert("digits".into(), digits_report(phone).into());
                }
                println!("{}", serde_json::json!({ "report": report }));
            }
            (Some("hangup"), None) => return,
            (None, _) => {}
            _ => eprintln!("phone: unknown command {line:?} (press DIGITS | report | hangup)"),
        }
    }
    std::future::pending::<()>().await;
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
    // One write: a test reading stderr sees the whole line or none of it.
    let answered = format!(
        "phone: answered by {} (dialled {}); sending RTP to {}\n",
        phone.answered_by(),
        phone.dialled(),
        phone.remote_rtp
    );
    let _ = std::io::stderr().write_all(answered.as_bytes());
    phone.play_tone(args.tone);
    // The first second is settling (jitter buffers, first keyframes elsewhere).
    tokio::time::sleep(Duration::from_secs(1)).await;
    phone.clear_heard();
    let call = tokio::time::sleep(Duration::from_secs_f64((args.seconds - 1.0).max(0.5)));
    if args.commands {
        let hung_up = async {
            while !phone.bye_received() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            () = call => {}
            () = run_commands(&phone, &args.probe) => {}
            () = hung_up => {}
        }
    } else {
        call.await;
    }
    let heard = phone.heard();
    let hung_up_by_server = phone.bye_received();
    let digits = digits_report(&phone);
    let requests = phone.requests_received();
    if !hung_up_by_server {
        phone.hangup().await;
    }
    let mut report = heard_report(&heard, &args.probe);
    if let Some(fields) = report.as_object_mut() {
        fields.insert("bye_from_server".into(), hung_up_by_server.into());
        // RFC 4733 keys received (one per event), with their duration in ms.
        fields.insert("digits".into(), digits.into());
        fields.insert("call_id".into(), phone.call_id().into());
        // Where the dialog went (the 2xx's Contact): another server when the one dialled
        // proxied the INVITE.
        fields.insert("answered_by".into(), phone.answered_by().to_string().into());
        fields.insert("server_requests".into(), requests.into());
    }
    println!("{report}");
    // A stdin read may still be pending (the call ended otherwise than by `hangup`); the
    // runtime would wait for it on shutdown.
    if args.commands {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    }
}
