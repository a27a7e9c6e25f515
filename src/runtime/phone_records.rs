//! Phone calls that outlive their process (issue 19): what the SIP bridge stores of each
//! established call over UDP ([`PhoneRecord`]: the dialog, the RTP port, the negotiated codec,
//! the published stream), the one task that writes those records in order, and the parsing of
//! what a previous process stored. The bridge (`runtime::sip`) takes the calls over at start;
//! the calls a stopped process left up for a successor that never came are ended by any live
//! process ([`sweep_orphans`]).
#![allow(clippy::disallowed_methods)] // the runtime owns the tasks

use std::net::SocketAddr;
use std::time::Duration;

use patchbay_sip::endpoint::DialogState;
use patchbay_sip::g711::G711Law;
use patchbay_sip::phone::PhoneConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::control::Control;
use crate::domain::{AccountId, ParticipantId, StreamId};

/// What a process needs to take an established phone call over: stored as JSON by the bridge
/// when the call is established and after each re-INVITE, forgotten when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneRecord {
    /// The participant's account.
    pub account: String,
    /// The call's device id in webhooks and the live state (`sip-N`).
    pub name: String,
    /// The stream the phone publishes (kept, so subscribers see the same stream).
    pub stream: String,
    /// The SIP dialog.
    pub dialog: DialogState,
    /// The local RTP port the phone sends to.
    pub rtp_port: u16,
    /// Where RTP goes to the phone (`None`: on hold).
    pub remote: Option<SocketAddr>,
    /// Whether the phone is meant to send (else its silence is not a dead leg).
    pub phone_sends: bool,
    /// `PCMU` or `PCMA`.
    pub codec: String,
    /// The codec's payload type.
    pub payload_type: u8,
    /// The telephone-event payload type, if negotiated.
    pub dtmf_pt: Option<u8>,
    /// Packetisation interval, milliseconds.
    pub ptime_ms: u32,
    /// The process that answered the call, by the SIP address it advertises (absent in
    /// records stored before there was one: taken for this process's predecessor's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<CallOwner>,
}

/// Whose call a stored record is: the SIP address (`host:port`, `None` when the process
/// advertised none) of the process that answered it. Only a process on that same address, its
/// successor, takes the call over at start: a process starting beside a live one (several on
/// one database, issue 20) leaves the other's calls alone, and a dead process's calls elsewhere
/// are ended by the process that claims its loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallOwner {
    /// The SIP address the phone's dialog is with.
    pub sip: Option<String>,
}

impl PhoneRecord {
    /// Whether a process advertising `sip` is this call's owner or its successor.
    pub fn belongs_to(&self, sip: Option<&str>) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|owner| owner.sip.as_deref() == sip)
    }
}

/// A stored call, parsed: what the bridge needs to take it over.
#[derive(Debug, Clone)]
pub struct StoredCall {
    /// Its participant.
    pub participant: ParticipantId,
    /// Its account.
    pub account: AccountId,
    /// The record.
    pub record: PhoneRecord,
    /// The stream it publishes.
    pub stream: StreamId,
    /// Its codec settings (with a fresh SSRC).
    pub phone: PhoneConfig,
}

impl PhoneRecord {
    /// The codec's name as stored.
    pub fn law_name(law: G711Law) -> &'static str {
        match law {
            G711Law::MuLaw => "PCMU",
            G711Law::ALaw => "PCMA",
        }
    }

    /// Parses a stored record of `participant`; the reason when it is unusable.
    pub fn parse(participant: ParticipantId, json: &str) -> Result<StoredCall, String> {
        let record: PhoneRecord =
            serde_json::from_str(json).map_err(|e| format!("not a phone call record: {e}"))?;
        let account = AccountId::parse(&record.account).map_err(|e| e.to_string())?;
        let stream = StreamId::parse(&record.stream).map_err(|e| e.to_string())?;
        let codec = match record.codec.as_str() {
            "PCMU" => G711Law::MuLaw,
            "PCMA" => G711Law::ALaw,
            other => return Err(format!("unknown codec {other:?}")),
        };
        let phone = PhoneConfig {
            codec,
            payload_type: record.payload_type,
            dtmf_pt: record.dtmf_pt,
            ptime_ms: record.ptime_ms,
            ssrc: rand::random(),
        };
        Ok(StoredCall {
            participant,
            account,
            record,
            stream,
            phone,
        })
    }
}

/// A change to the stored calls, written in order by [`spawn_writer`].
pub enum RecordChange {
    /// Keep (or replace) `participant`'s record; `ack`, if any, learns whether it was written.
    Save(
        ParticipantId,
        Box<PhoneRecord>,
        Option<tokio::sync::oneshot::Sender<bool>>,
    ),
    /// Forget `participant`'s call `name` (it ended).
    Forget(ParticipantId, String),
}

/// One task writes every change, in the order the bridge made them (a call's end is never
/// overtaken by its last save). A failure is logged: the call goes on, and is only not
/// resumable (or, for a lost forget, the next process finds a dead call and ends it).
pub fn spawn_writer(control: Control) -> mpsc::UnboundedSender<RecordChange> {
    let (tx, mut rx) = mpsc::unbounded_channel::<RecordChange>();
    tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            let (done, ack) = match change {
                RecordChange::Save(participant, record, ack) => {
                    let done = match serde_json::to_string(&record) {
                        Ok(json) => control
                            .save_phone_call(participant, &record.name, &json)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(format!("cannot serialize a phone call record: {e}")),
                    };
                    (done, ack)
                }
                RecordChange::Forget(participant, name) => (
                    control
                        .forget_phone_call(participant, &name)
                        .await
                        .map_err(|e| e.to_string()),
                    None,
                ),
            };
            if let Err(e) = &done {
                tracing::warn!(error = %e, "cannot store a phone call's record");
            }
            if let Some(ack) = ack {
                let _ = ack.send(done.is_ok());
            }
        }
    });
    tx
}

/// Where the calls nobody took over are ended: the SIP bridge, which sends each its BYE in
/// the stored dialog and announces its device's end.
pub trait Orphans: Send + Sync + 'static {
    /// Ends `call`; false once the bridge is gone.
    fn end(&self, call: StoredCall) -> bool;
}

/// How often the stored calls are looked over for orphans.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Ends the calls that processes which stopped left up for a successor that never came.
///
/// A graceful stop leaves its established calls up (`--drain-phones keep`) for the next
/// process on the same SIP address and database, and removes its process row. Every
/// [`SWEEP_EVERY`], a stored call is an orphan when its owner's SIP address is that of no
/// process row on the database (live, or dead and not yet accounted for: the reaper ends
/// those), it is not this process's own (this process took its predecessor's calls over at
/// start), and its record has not been written for `wait` (in the writer's clock: processes'
/// clocks may differ by that much less). Of the processes alive, the first to forget the
/// record as read ends the call; a successor that starts meanwhile takes the record first or
/// finds it gone ([`Control::take_phone_call`]), so a call is never both ended and taken over.
pub async fn sweep_orphans(control: Control, wait: Duration, orphans: impl Orphans) {
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep_once(&control, wait_ms, &orphans).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look the stored phone calls over for orphans now")
            }
        }
    }
}

/// One look over the stored calls: how many were ended, `None` once the bridge is gone.
async fn sweep_once(
    control: &Control,
    wait_ms: i64,
    orphans: &impl Orphans,
) -> Result<Option<usize>, crate::control::ControlError> {
    let calls = control.phone_calls().await?;
    if calls.is_empty() {
        return Ok(Some(0));
    }
    let here = control.address().sip;
    let processes = control.process_sip_addresses().await?;
    let now = super::epoch_ms();
    let mut ended = 0;
    for stored in calls {
        let Ok(call) = PhoneRecord::parse(stored.participant, &stored.record) else {
            continue; // unreadable: its owner's successor forgets it
        };
        let Some(owner) = call.record.owner.as_ref() else {
            continue; // stored before owners were: its predecessor's, taken over at start
        };
        if call.record.belongs_to(here.as_deref())
            || processes.contains(&owner.sip)
            || now.saturating_sub(stored.updated_at_ms) < wait_ms
        {
            continue;
        }
        if control.end_phone_call(&stored).await? {
            tracing::info!(
                participant = %stored.participant,
                call = %stored.call,
                owner = ?owner.sip,
                "a phone call left up by a process that stopped has no successor: ending it"
            );
            if !orphans.end(call) {
                return Ok(None);
            }
            ended += 1;
        }
    }
    Ok(Some(ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let record = PhoneRecord {
            account: "acct".into(),
            name: "sip-3".into(),
            stream: "phone-1".into(),
            dialog: DialogState {
                call_id: "c@phone".into(),
                local_tag: "t1".into(),
                remote_tag: "t2".into(),
                local_party: "<sip:a@b>".into(),
                remote_party: "<sip:c@d>;tag=t2".into(),
                remote_target: "sip:c@198.51.100.7".into(),
                route_set: vec![],
                local_cseq: 0,
                remote_cseq: 1,
                peer: "198.51.100.7:5060".parse().unwrap(),
                local_sdp: None,
                session_expires: Some(1800),
            },
            rtp_port: 40000,
            remote: Some("198.51.100.7:40002".parse().unwrap()),
            phone_sends: true,
            codec: "PCMA".into(),
            payload_type: 8,
            dtmf_pt: Some(101),
            ptime_ms: 20,
            owner: Some(CallOwner {
                sip: Some("10.0.0.11:5060".into()),
            }),
        };
        let json = serde_json::to_string(&record).unwrap();
        let participant = ParticipantId::random();
        let parsed = PhoneRecord::parse(participant, &json).expect("parses");
        assert_eq!(parsed.record, record);
        assert_eq!(parsed.phone.codec, G711Law::ALaw);
        assert!(PhoneRecord::parse(participant, "{").is_err());
        let bad = json.replace("PCMA", "GSM");
        assert!(PhoneRecord::parse(participant, &bad)
            .unwrap_err()
            .contains("codec"));

        // Whose call it is: only its owner's SIP address takes it over; a record stored
        // before owners were recorded is the predecessor's.
        assert!(record.belongs_to(Some("10.0.0.11:5060")));
        assert!(!record.belongs_to(Some("10.0.0.12:5060")));
        assert!(!record.belongs_to(None));
        let legacy = serde_json::to_value(&record).map(|mut v| {
            v.as_object_mut().map(|o| o.remove("owner"));
            v
        });
        let legacy: PhoneRecord = serde_json::from_value(legacy.unwrap()).unwrap();
        assert!(legacy.owner.is_none());
        assert!(legacy.belongs_to(Some("10.0.0.12:5060")));
        assert!(legacy.belongs_to(None));
    }
}
