//! Helpers shared by the media load tools (`media_load`, `cc_load`): the CPU and load readings
//! of `/proc`, rounding, the JSON-RPC request line, and RTP classification.

use serde_json::{json, Value};
use str0m::Rtc;

pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime+stime of a process (all threads) or task, in seconds.
pub fn stat_cpu_seconds(path: &str, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

pub fn rtx_pts(rtc: &Rtc) -> Vec<u8> {
    rtc.codec_config()
        .params()
        .iter()
        .filter_map(|p| p.resend().map(|pt| *pt))
        .collect()
}

pub fn rpc_request(id: u64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}).to_string()
}

pub fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && (b[0] & 0xC0) == 0x80 && !(192..=223).contains(&b[1])
}
