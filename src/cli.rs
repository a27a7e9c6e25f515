//! The operator commands of the `patchbay` binary that work on a database, while servers run
//! on it: `account create|list|rotate`, `token-secret rotate`, `session list|inspect`,
//! `cluster status`. Each
//! opens the store, calls control's verbs and prints text (or JSON with `--json`). Secrets
//! are printed only when they are new (created or rotated), once.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{
    AccountCommand, ClusterCommand, DatabaseArgs, SessionCommand, TokenSecretCommand,
};
use crate::control::{Control, Inspection, LiveDeviceView};
use crate::domain::{AccountId, Participant, ParticipantId, SessionId};
use crate::store::{DeviceKind, SessionSummary, STALE_AFTER_MS};

/// Control on the database the server uses, which must exist (see
/// [`DatabaseArgs::resolve_existing`]); `account create` alone may create it.
async fn control(database: &DatabaseArgs) -> anyhow::Result<Control> {
    open(database.resolve_existing()?).await
}

async fn open(url: String) -> anyhow::Result<Control> {
    let store = crate::store::open(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", crate::app::redact(&url)))?;
    Ok(Control::new(Arc::new(store)).await?)
}

/// An epoch-milliseconds time as RFC 3339 (UTC, seconds).
fn time(ms: i64) -> String {
    let format = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Runs `patchbay account …`; what to print.
pub async fn account(command: AccountCommand) -> anyhow::Result<String> {
    match command {
        AccountCommand::Create {
            account_id,
            json,
            database,
        } => {
            let account = AccountId::parse(&account_id)?;
            let (url, _) = database.resolve()?;
            let creds = open(url).await?.create_account(account).await?;
            Ok(if json {
                json!({"accountId": creds.account.as_str(), "username": creds.username, "password": creds.password, "webhookSecret": creds.webhook_secret}).to_string() + "\n"
            } else {
                format!(
                    "account:  {}\nusername: {}\npassword: {}\nwebhook secret: {}\n",
                    creds.account, creds.username, creds.password, creds.webhook_secret
                )
            })
        }
        AccountCommand::List { json, database } => {
            let accounts = control(&database).await?.accounts().await?;
            if json {
                let list: Vec<Value> = accounts
                    .iter()
                    .map(|a| {
                        json!({"accountId": a.account.as_str(), "username": a.username, "createdAt": time(a.created_at_ms), "sessions": a.sessions, "participants": a.participants})
                    })
                    .collect();
                return Ok(Value::Array(list).to_string() + "\n");
            }
            let mut out = format!(
                "{:<12}  {:<24}  {:>8}  {:>12}  CREATED\n",
                "ACCOUNT", "USERNAME", "SESSIONS", "PARTICIPANTS"
            );
            for a in &accounts {
                let _ = writeln!(
                    out,
                    "{:<12}  {:<24}  {:>8}  {:>12}  {}",
                    a.account.as_str(),
                    a.username,
                    a.sessions,
                    a.participants,
                    time(a.created_at_ms)
                );
            }
            Ok(out)
        }
        AccountCommand::RotateWebhookSecret {
            account_id,
            grace,
            json,
            database,
        } => {
            let account = AccountId::parse(&account_id)?;
            let secret = control(&database)
                .await?
                .rotate_webhook_secret(&account, Duration::from_secs(grace))
                .await?;
            Ok(if json {
                json!({"accountId": account.as_str(), "webhookSecret": secret}).to_string() + "\n"
            } else if grace == 0 {
                format!("account:        {account}\nwebhook secret: {secret}\n(shown once; deliveries are signed with it alone from now on)\n")
            } else {
                format!("account:        {account}\nwebhook secret: {secret}\n(shown once; deliveries carry a signature with the old secret too for {grace} s)\n")
            })
        }
        AccountCommand::Rotate {
            account_id,
            json,
            database,
        } => {
            let account = AccountId::parse(&account_id)?;
            let creds = control(&database)
                .await?
                .rotate_credentials(account)
                .await?;
            Ok(if json {
                json!({"accountId": creds.account.as_str(), "username": creds.username, "password": creds.password}).to_string() + "\n"
            } else {
                format!(
                    "account:  {}\nusername: {}\npassword: {}\n(shown once; the old credentials stop working within {} s on running servers)\n",
                    creds.account,
                    creds.username,
                    creds.password,
                    crate::control::CREDENTIAL_CACHE_TTL.as_secs()
                )
            })
        }
    }
}

/// Runs `patchbay token-secret …`; what to print.
pub async fn token_secret(command: TokenSecretCommand) -> anyhow::Result<String> {
    match command {
        TokenSecretCommand::Rotate { grace, database } => {
            control(&database)
                .await?
                .rotate_token_secret(Duration::from_secs(grace))
                .await?;
            Ok(if grace == 0 {
                "device-token secret rotated: tokens signed with the old one no longer verify\n"
                    .to_owned()
            } else {
                format!("device-token secret rotated: tokens signed with the old one verify for {grace} s more\n")
            })
        }
    }
}

fn device_json(d: &LiveDeviceView) -> Value {
    json!({
        "participantId": d.device.participant.to_string(),
        "device": d.device.device,
        "kind": match d.device.kind { DeviceKind::Browser => "browser", DeviceKind::Phone => "phone" },
        "connectedAt": time(d.device.connected_at_ms),
        "server": d.device.instance,
        "stale": d.stale,
    })
}

fn live_counts(devices: &[LiveDeviceView]) -> (usize, usize, usize) {
    let live = devices.iter().filter(|d| !d.stale);
    let browsers = live
        .clone()
        .filter(|d| d.device.kind == DeviceKind::Browser)
        .count();
    let phones = live.filter(|d| d.device.kind == DeviceKind::Phone).count();
    let stale = devices.iter().filter(|d| d.stale).count();
    (browsers, phones, stale)
}

fn summary_json(s: &SessionSummary) -> Value {
    json!({
        "accountId": s.account.as_str(),
        "sessionId": s.session.to_string(),
        "tag": s.tag.as_ref().map(|t| t.as_str()),
        "createdAt": time(s.created_at_ms),
        "members": s.members,
    })
}

/// Runs `patchbay cluster …`; what to print.
/// Times are judged by the database's clock (the one the processes' leases are in).
pub async fn cluster(command: ClusterCommand) -> anyhow::Result<String> {
    let ClusterCommand::Status { json, database } = command;
    let (processes, now_ms) = control(&database).await?.cluster_status().await?;
    let state = |i: &crate::store::InstanceStatus, alive: bool| {
        if i.claimed_until_ms > now_ms {
            "taken for dead"
        } else if !alive {
            "not seen lately"
        } else if i.record.draining {
            "draining"
        } else {
            "alive"
        }
    };
    if json {
        let list: Vec<Value> = processes
            .iter()
            .map(|(i, alive)| {
                json!({
                    "process": i.instance,
                    "state": state(i, *alive),
                    "http": i.record.http,
                    "clusterAddress": i.record.cluster,
                    "sipAddress": i.record.sip,
                    "startedAt": time(i.started_at_ms),
                    "seenAt": time(i.seen_at_ms),
                    "seenMsAgo": now_ms - i.seen_at_ms,
                    "devices": i.devices,
                    "sessions": i.sessions,
                })
            })
            .collect();
        return Ok(Value::Array(list).to_string() + "\n");
    }
    let mut out = format!(
        "{:<36}  {:<15}  {:>9}  {:>7}  {:>8}  {:<28}  SIP\n",
        "PROCESS", "STATE", "SEEN", "DEVICES", "SESSIONS", "CLUSTER ADDRESS"
    );
    for (i, alive) in &processes {
        let _ = writeln!(
            out,
            "{:<36}  {:<15}  {:>8}s  {:>7}  {:>8}  {:<28}  {}",
            i.instance,
            state(i, *alive),
            (now_ms - i.seen_at_ms).max(0) / 1000,
            i.devices,
            i.sessions,
            i.record.cluster.as_deref().unwrap_or("-"),
            i.record.sip.as_deref().unwrap_or("-"),
        );
    }
    if processes.is_empty() {
        out.push_str("(no serving process recorded on this database)\n");
    }
    Ok(out)
}

/// Runs `patchbay session …`; what to print. Devices' processes are judged alive by the
/// database's clock (`now_ms`, this machine's, if it cannot be read).
pub async fn session(command: SessionCommand, now_ms: i64) -> anyhow::Result<String> {
    match command {
        SessionCommand::List {
            account,
            json,
            database,
        } => {
            let account = account.as_deref().map(AccountId::parse).transpose()?;
            let control = control(&database).await?;
            // Judged by the database's clock, the one the processes' beats are stamped in.
            let now_ms = control.database_clock().await.unwrap_or(now_ms);
            let sessions = control.session_summaries(account.as_ref(), now_ms).await?;
            if json {
                let list: Vec<Value> = sessions
                    .iter()
                    .map(|(s, devices)| {
                        let mut v = summary_json(s);
                        let (browsers, phones, _) = live_counts(devices);
                        v["browsers"] = json!(browsers);
                        v["phones"] = json!(phones);
                        v["devices"] = devices.iter().map(device_json).collect();
                        v
                    })
                    .collect();
                return Ok(Value::Array(list).to_string() + "\n");
            }
            let mut out = format!(
                "{:<12}  {:<36}  {:<16}  {:>7}  {:>8}  {:>6}  CREATED\n",
                "ACCOUNT", "SESSION", "TAG", "MEMBERS", "BROWSERS", "PHONES"
            );
            for (s, devices) in &sessions {
                let (browsers, phones, stale) = live_counts(devices);
                let stale = if stale > 0 {
                    format!("  ({stale} on a server not seen lately)")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{:<12}  {:<36}  {:<16}  {:>7}  {:>8}  {:>6}  {}{stale}",
                    s.account.as_str(),
                    s.session.to_string(),
                    s.tag.as_ref().map_or("-", |t| t.as_str()),
                    s.members,
                    browsers,
                    phones,
                    time(s.created_at_ms)
                );
            }
            Ok(out)
        }
        SessionCommand::Inspect {
            account_id,
            session_id,
            json,
            database,
        } => {
            let account = AccountId::parse(&account_id)?;
            let session: SessionId = session_id
                .parse()
                .map_err(|e| anyhow::anyhow!("{session_id:?} is not a session id: {e}"))?;
            let control = control(&database).await?;
            let now_ms = control.database_clock().await.unwrap_or(now_ms);
            let inspection = control.inspect(&account, session, now_ms).await?;
            Ok(if json {
                inspection_json(&inspection, now_ms).to_string() + "\n"
            } else {
                inspection_text(&inspection, now_ms)
            })
        }
    }
}

fn inspection_json(i: &Inspection, now_ms: i64) -> Value {
    let mut v = summary_json(&i.summary);
    v["participants"] = i
        .members
        .iter()
        .map(|p| json!({"participantId": p.id.to_string(), "tag": p.tag.as_ref().map(|t| t.as_str())}))
        .collect();
    v["devices"] = i.devices.iter().map(device_json).collect();
    v["streams"] = i
        .streams
        .iter()
        .map(|s| json!({"participantId": s.participant.to_string(), "streamId": s.stream.as_str(), "alias": s.alias.as_ref().map(|a| a.as_str()), "audio": s.kinds.audio, "video": s.kinds.video}))
        .collect();
    v["routes"] = crate::api::routes_json(i.summary.session, &i.members, &i.table);
    v["quality"] = i
        .quality
        .iter()
        .map(|q| {
            json!({
                "participantId": q.participant.to_string(),
                "instance": q.instance,
                "measuredAt": time(q.measured_at_ms),
                "ageMs": now_ms - q.measured_at_ms,
                "stale": now_ms - q.instance_seen_ms > STALE_AFTER_MS,
                "summary": serde_json::from_str::<Value>(&q.summary).unwrap_or(Value::Null),
            })
        })
        .collect();
    v
}

/// A participant's recorded quality summary (`control::quality_summary`'s shape) as one line.
fn quality_line(summary: &Value, age_ms: i64) -> String {
    let rate = |c: &Value| match c["bitrateBps"].as_f64() {
        Some(bps) => format!("{:.0} kbit/s", bps / 1000.0),
        None => "? kbit/s".to_owned(),
    };
    let ms = |c: &Value, field: &str| match c[field].as_f64() {
        Some(v) => format!("{v:.1} ms"),
        None => "-".to_owned(),
    };
    let loss = |c: &Value| match c["lossFraction"].as_f64() {
        Some(f) => format!("{:.1} %", f * 100.0),
        None => "-".to_owned(),
    };
    let n = |c: &Value, field: &str| c[field].as_u64().unwrap_or(0);
    let mut parts = Vec::new();
    let publish = &summary["publish"];
    if publish.is_object() {
        parts.push(format!(
            "in {}, loss {}, jitter {}, rtt {}; sent NACKs {}, PLIs {}, FIRs {}; keyframes asked {}",
            rate(publish),
            loss(publish),
            ms(publish, "jitterMs"),
            ms(publish, "rttMs"),
            n(publish, "nacks"),
            n(publish, "plis"),
            n(publish, "firs"),
            n(publish, "keyframeRequests")
        ));
    }
    let subscribe = &summary["subscribe"];
    if subscribe.is_object() {
        parts.push(format!(
            "out {}, loss {} ({} lost), jitter {}, rtt {}; got NACKs {}, PLIs {}, FIRs {}; keyframe requests passed on {}, suppressed {}",
            rate(subscribe),
            loss(subscribe),
            n(subscribe, "packetsLost"),
            ms(subscribe, "jitterMs"),
            ms(subscribe, "rttMs"),
            n(subscribe, "nacks"),
            n(subscribe, "plis"),
            n(subscribe, "firs"),
            n(subscribe, "keyframeRequests"),
            n(subscribe, "keyframeRequestsSuppressed")
        ));
        if let Some(bps) = subscribe["estimateBps"].as_f64() {
            parts.push(format!(
                "link estimate {:.0} kbit/s, video paused {}",
                bps / 1000.0,
                n(subscribe, "pausedVideoTracks")
            ));
        }
    }
    if parts.is_empty() {
        parts.push(format!(
            "{} device, no media connection measured",
            summary["device"].as_str().unwrap_or("a")
        ));
    }
    let level = summary["level"]
        .as_str()
        .map(|l| format!("{l}: "))
        .unwrap_or_default();
    format!(
        "{level}{} (measured {:.0} s ago)",
        parts.join(" | "),
        age_ms as f64 / 1000.0
    )
}

/// A participant as people read it: its tag, or its id.
fn name(members: &[Participant], id: &str) -> String {
    members
        .iter()
        .find(|p| p.id.to_string() == id)
        .and_then(|p| p.tag.as_ref())
        .map_or_else(|| id.to_owned(), |t| format!("{} ({id})", t.as_str()))
}

fn inspection_text(i: &Inspection, now_ms: i64) -> String {
    let s = &i.summary;
    let mut out = format!(
        "session {} of account {}{}, created {}, {} member(s)\n",
        s.session,
        s.account.as_str(),
        s.tag
            .as_ref()
            .map_or(String::new(), |t| format!(" (tag {:?})", t.as_str())),
        time(s.created_at_ms),
        s.members
    );
    out.push_str("\nmembers:\n");
    for p in &i.members {
        let id: ParticipantId = p.id;
        let devices: Vec<String> = i
            .devices
            .iter()
            .filter(|d| d.device.participant == id)
            .map(|d| {
                let kind = match d.device.kind {
                    DeviceKind::Browser => "browser",
                    DeviceKind::Phone => "phone call",
                };
                let stale = if d.stale {
                    ", server not seen lately"
                } else {
                    ""
                };
                format!(
                    "{kind} {} since {}{stale}",
                    d.device.device,
                    time(d.device.connected_at_ms)
                )
            })
            .collect();
        let streams: Vec<String> = i
            .streams
            .iter()
            .filter(|st| st.participant == id)
            .map(|st| {
                let kinds = match (st.kinds.audio, st.kinds.video) {
                    (true, true) => "audio+video",
                    (true, false) => "audio",
                    (false, true) => "video",
                    (false, false) => "nothing",
                };
                match &st.alias {
                    Some(a) => format!("{} ({kinds})", a.as_str()),
                    None => format!("{} ({kinds})", st.stream.as_str()),
                }
            })
            .collect();
        let quality = i
            .quality
            .iter()
            .find(|q| q.participant == id)
            .and_then(|q| {
                let summary = serde_json::from_str::<Value>(&q.summary).ok()?;
                Some(quality_line(&summary, now_ms - q.measured_at_ms))
            })
            .unwrap_or_else(|| "not measured".to_owned());
        let _ = writeln!(
            out,
            "  {}\n    devices: {}\n    publishes: {}\n    quality: {quality}",
            name(&i.members, &id.to_string()),
            if devices.is_empty() {
                "none".to_owned()
            } else {
                devices.join("; ")
            },
            if streams.is_empty() {
                "nothing".to_owned()
            } else {
                streams.join(", ")
            }
        );
    }
    out.push_str("\nwho hears whom (rules, and the streams forwarded now):\n");
    let routes = crate::api::routes_json(s.session, &i.members, &i.table);
    for sub in routes["subscribers"].as_array().into_iter().flatten() {
        let who = name(
            &i.members,
            sub["participantId"].as_str().unwrap_or_default(),
        );
        let receives = sub["receives"].as_array().cloned().unwrap_or_default();
        if receives.is_empty() {
            let _ = writeln!(out, "  {who} hears nobody");
            continue;
        }
        let _ = writeln!(out, "  {who} hears:");
        for r in receives {
            let from = name(&i.members, r["publisherId"].as_str().unwrap_or_default());
            let cause = r["cause"].as_str().unwrap_or_default();
            let aliases = r["streamAliases"]
                .as_array()
                .map(|a| {
                    let list: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                    format!(" {list:?}")
                })
                .unwrap_or_default();
            let streams: Vec<String> = r["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|st| {
                    let kinds: Vec<&str> = st["mediaTypes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{} [{}]",
                        st["alias"]
                            .as_str()
                            .or(st["streamId"].as_str())
                            .unwrap_or_default(),
                        kinds.join("+")
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "    {from}  by {cause}{aliases}: {}",
                if streams.is_empty() {
                    "nothing published now".to_owned()
                } else {
                    streams.join(", ")
                }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quality_line_says_each_direction_in_units() {
        let summary = json!({
            "device": "browser",
            "level": "fair",
            "publish": {"bitrateBps": 1_250_000, "lossFraction": 0.012, "jitterMs": 3.3,
                "rttMs": null, "nacks": 4, "plis": 2, "firs": 0, "keyframeRequests": 2},
            "subscribe": {"bitrateBps": 800_000, "lossFraction": 0.0, "packetsLost": 7,
                "jitterMs": 1.0, "rttMs": 20.5, "nacks": 1, "plis": 3, "firs": 0,
                "keyframeRequests": 1, "keyframeRequestsSuppressed": 2,
                "estimateBps": 290_000, "pausedVideoTracks": 1},
        });
        assert_eq!(
            quality_line(&summary, 2_400),
            "fair: in 1250 kbit/s, loss 1.2 %, jitter 3.3 ms, rtt -; sent NACKs 4, PLIs 2, FIRs 0; \
             keyframes asked 2 | out 800 kbit/s, loss 0.0 % (7 lost), jitter 1.0 ms, rtt 20.5 ms; \
             got NACKs 1, PLIs 3, FIRs 0; keyframe requests passed on 1, suppressed 2 | \
             link estimate 290 kbit/s, video paused 1 (measured 2 s ago)"
        );
    }

    #[test]
    fn a_phone_has_no_media_connection_measured() {
        let summary = json!({"device": "phone", "publish": null, "subscribe": null});
        assert_eq!(
            quality_line(&summary, 400),
            "phone device, no media connection measured (measured 0 s ago)"
        );
    }
}
