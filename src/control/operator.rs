//! The operator's verbs, for the `patchbay` commands that work on a running server's database
//! (`account list|rotate`, `token-secret rotate`, `session list|inspect`), and this process's
//! part of the live state they read: its heartbeat, the devices connected to it and the
//! streams they publish (written from the lifecycle feed, in order, by the runtime).

use super::{CallEndReason, Control, ControlError, LifecycleEvent};
use crate::domain::{AccountId, Participant, ParticipantId, SessionId};
use crate::forwarding::{self, ForwardingTable, PublishedStream, SessionState};
use crate::store::{
    AccountSummary, Beat, DeviceKind, LiveChange, LiveDevice, LiveQuality, LiveStream,
    SessionSummary, STALE_AFTER_MS,
};

/// A live device as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDeviceView {
    /// The device.
    pub device: LiveDevice,
    /// Its process has not been seen for a while (it may have died): not to be trusted.
    pub stale: bool,
}

/// What `patchbay session inspect` shows.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The session's summary.
    pub summary: SessionSummary,
    /// Its members with their rules.
    pub members: Vec<Participant>,
    /// Their live devices.
    pub devices: Vec<LiveDeviceView>,
    /// The streams they publish now.
    pub streams: Vec<LiveStream>,
    /// Who hears whom: the session compiled from its rules and the streams published now.
    pub table: ForwardingTable,
    /// What the processes serving the members' devices last measured of their media quality
    /// (issue 21; written every few seconds, `runtime::media::QUALITY_RECORD_EVERY`).
    pub quality: Vec<LiveQuality>,
}

/// A process not seen for this long (milliseconds) is taken for dead by the processes alive,
/// which account for its devices ([`Control::reap_dead`]): four missed heartbeats.
pub const DEAD_AFTER_MS: i64 = 8_000;

/// Why the devices of a process taken for dead are closed (their close reason).
pub const TAKEN_FOR_DEAD: &str = "server taken for dead: reconnect";

/// How long a claim on a dead process lasts before another process may take it again.
pub const REAP_CLAIM_MS: i64 = 60_000;

/// A process seen within this long (milliseconds) counts as alive for readers: a few
/// heartbeats.
const ALIVE_WITHIN_MS: i64 = 30_000;

fn view(device: LiveDevice, now_ms: i64) -> LiveDeviceView {
    let stale = now_ms - device.instance_seen_ms > ALIVE_WITHIN_MS;
    LiveDeviceView { device, stale }
}

/// What `event` changes in its process's live state, if anything.
pub(super) fn live_change(event: &LifecycleEvent) -> Option<LiveChange> {
    Some(match event {
        LifecycleEvent::Connected {
            participant,
            device,
            ..
        } => LiveChange::Connected {
            participant: *participant,
            device: device.clone(),
        },
        LifecycleEvent::CallAnswered { participant, call }
        | LifecycleEvent::CallResumed { participant, call } => LiveChange::IsPhone {
            participant: *participant,
            device: call.clone(),
        },
        LifecycleEvent::Disconnected {
            participant,
            device,
            ..
        } => LiveChange::Disconnected {
            participant: *participant,
            device: device.clone(),
        },
        LifecycleEvent::StreamPublished {
            participant,
            stream,
            alias,
            kinds,
        } => LiveChange::Published(LiveStream {
            participant: *participant,
            stream: stream.clone(),
            alias: alias.clone(),
            kinds: *kinds,
        }),
        LifecycleEvent::StreamUnpublished {
            participant,
            stream,
        } => LiveChange::Unpublished {
            participant: *participant,
            stream: stream.clone(),
        },
        LifecycleEvent::CallEnded { .. }
        | LifecycleEvent::PhoneDtmf { .. }
        | LifecycleEvent::ActiveSpeaker { .. }
        | LifecycleEvent::QualityChanged { .. } => return None,
    })
}

impl Control {
    /// This process's id in the live-state tables.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// This process is alive (reached where [`Control::set_address`] says), at `now_ms` on
    /// its own clock, stamped in the database's (measured first). Also
    /// reloads the device-token keys, so a rotation reaches this process within a heartbeat.
    ///
    /// A process that finds it was taken for dead (another process claimed its row, or
    /// removed it, after it could not beat for [`DEAD_AFTER_MS`]) is fenced: that process
    /// writes the end events of its devices, so it closes every device it holds, announcing
    /// nothing more; a device that reconnects is a new one (`onConnect`).
    pub async fn heartbeat(&self, now_ms: i64) -> Result<(), ControlError> {
        if self.beats().stopped {
            return Ok(());
        }
        // Beats are stamped in the database's clock (see `Control::lease_ms`).
        if let Err(e) = self.measure_clock(now_ms).await {
            self.beats().ok_since = None;
            return Err(e);
        }
        let now_ms = self.lease_ms(now_ms);
        let mut address = self.address();
        address.draining = self.is_draining();
        let beat = self
            .inner
            .store
            .heartbeat(&self.inner.instance, &address, now_ms)
            .await;
        if self.beats().stopped {
            // The stop removed the row while this beat was on its way: remove it again.
            self.inner
                .store
                .forget_instance(&self.inner.instance)
                .await?;
            return Ok(());
        }
        let beat = {
            let mut state = self.beats();
            match beat {
                Ok(beat) => {
                    state.ok_since.get_or_insert(now_ms);
                    beat
                }
                Err(e) => {
                    state.ok_since = None;
                    return Err(e.into());
                }
            }
        };
        let fence = {
            let mut state = self.beats();
            let fence = match beat.found {
                Beat::Alive => {
                    state.fenced = false;
                    false
                }
                Beat::Claimed => !state.fenced,
                Beat::Absent => state.beaten && !state.fenced,
            };
            state.beaten = true;
            state.fenced |= fence;
            if !fence {
                state.epoch = Some(beat.epoch);
            }
            fence
        };
        if fence {
            // The events of the devices closed now, and those raised before, carry the old
            // generation: they are not written under the new registration.
            self.fence(Some(beat.epoch));
        }
        self.reload_token_keys().await?;
        Ok(())
    }

    /// Another process took this one for dead and accounts for its devices: each is closed
    /// here without an event of its own. The generation grows (the events raised before are
    /// stale), and the registration becomes `epoch` (the one the beat wrote; `None` keeps
    /// the current one, which the store refuses while it is claimed).
    fn fence(&self, epoch: Option<i64>) {
        // Under the live lock (then the beats lock, the order of `record_device_event`): a
        // device connecting meanwhile is either among those closed or of the new generation.
        let participants = {
            let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
            // Their ends are forgotten (what their closing reports is not recorded), and what
            // was raised until now is stale.
            let participants = live.forget_all();
            let mut state = self.beats();
            state.generation += 1;
            if epoch.is_some() {
                state.epoch = epoch;
            }
            participants
        };
        tracing::error!(
            participants = participants.len(),
            "another process took this one for dead (no heartbeat for {DEAD_AFTER_MS} ms): \
             it has announced the end of this process's devices, which are closed now"
        );
        for participant in participants {
            self.disconnect_participant(participant, TAKEN_FOR_DEAD);
        }
    }

    /// What this process's heartbeats found.
    pub(super) fn beats(&self) -> std::sync::MutexGuard<'_, super::devices::BeatState> {
        self.inner.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store refused a write made with `generation` and `epoch`: this process was taken
    /// for dead before its heartbeat could tell. Fences now, unless it was fenced since.
    pub(super) fn fenced_by_store(&self, generation: u64, epoch: i64) {
        {
            let mut state = self.beats();
            if state.stopped || state.generation != generation || state.epoch != Some(epoch) {
                return;
            }
            state.fenced = true;
        }
        self.fence(None);
    }

    /// Whether an event raised in `generation` is stale: this process was fenced since, and
    /// the process that took it for dead accounted for what it was about.
    pub fn is_stale(&self, generation: u64) -> bool {
        generation < self.beats().generation
    }

    /// The generation of the events raised now (see [`Control::is_stale`]).
    pub fn generation(&self) -> u64 {
        self.beats().generation
    }

    /// The devices other processes have live now, each with its process's last heartbeat:
    /// read at start, they are the devices that may resume their call here
    /// ([`Control::note_foreign_devices`]).
    pub async fn foreign_live_devices(&self) -> Result<Vec<LiveDevice>, ControlError> {
        Ok(self
            .inner
            .store
            .foreign_live_devices(&self.inner.instance)
            .await?)
    }

    /// Notes the devices of `snapshot` (other processes' at start): one that reconnects here
    /// within the reconnect grace resumes its call (see [`Control::resumes_foreign`] and
    /// [`Control::end_resumption_window`]).
    pub fn note_foreign_devices(&self, snapshot: &[LiveDevice]) {
        let mut foreign = self.inner.foreign.lock().unwrap_or_else(|e| e.into_inner());
        foreign.extend(snapshot.iter().map(|d| (d.participant, d.device.clone())));
    }

    /// Whether a device connecting now (`participant`, `unique_id`) was live in another
    /// process at this one's start: its backend was told `onConnect` then. Asked once per
    /// device (the answer is forgotten).
    pub fn resumes_foreign(&self, participant: ParticipantId, unique_id: &str) -> bool {
        !unique_id.is_empty()
            && self
                .inner
                .foreign
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(participant, unique_id.to_owned()))
    }

    /// Accounts for the processes that died: one not seen for [`DEAD_AFTER_MS`] at `now_ms`
    /// is claimed in the store (of the processes alive, one gets it; a claim unfinished after
    /// [`REAP_CLAIM_MS`] is taken again), and each device it still holds (one that reconnected
    /// to a live process holds its row there) gets the events of its end, through the ordered
    /// feed like every lifecycle event: `onDisconnect`, and for a phone `onCallEnded` (its
    /// stored call is forgotten: no process takes it over). Once they are in the outbox, the
    /// dead process's rows are removed. A device of it that reconnects afterwards is a new
    /// device (`onConnect`). Returns how many devices ended.
    ///
    /// Only a process whose own beats have all succeeded for [`DEAD_AFTER_MS`] reaps: after a
    /// database outage every process has missed beats, and none takes the others for dead
    /// before they have had the time to beat again.
    ///
    /// With `seen_since_ms` (this process's start, in its own clock) only processes seen
    /// alive since then are claimed: during its reconnect grace a new process leaves the
    /// processes dead before it started (a restarted process's predecessor, whose devices
    /// resume here without a new `onConnect`) for later, and accounts at once for a process
    /// that dies beside it (whose devices were never this one's to resume).
    pub async fn reap_dead(
        &self,
        now_ms: i64,
        seen_since_ms: Option<i64>,
    ) -> Result<usize, ControlError> {
        let mut stored_calls = None;
        // In the database's clock, as measured at the last beat (within 2 s).
        let now_ms = self.lease_ms(now_ms);
        let seen_since_ms = seen_since_ms.map(|t| self.lease_ms(t));
        let beating = {
            let state = self.beats();
            // Registered, not fenced, not stopping, every beat good for DEAD_AFTER_MS (the
            // runtime also reaps only right after a beat: a process resumed after a pause does
            // not reap before a beat has told it whether it was taken for dead).
            state.epoch.is_some()
                && !state.fenced
                && !state.stopped
                && state
                    .ok_since
                    .is_some_and(|since| now_ms - since >= DEAD_AFTER_MS)
        };
        if !beating {
            return Ok(0);
        }
        let dead = self
            .inner
            .store
            .claim_dead_instances(
                &self.inner.instance,
                now_ms - DEAD_AFTER_MS,
                seen_since_ms,
                now_ms,
                now_ms + REAP_CLAIM_MS,
            )
            .await?;
        let mut ended = 0;
        for instance in dead {
            let devices = self.inner.store.instance_devices(&instance).await?;
            let mut receipts = Vec::new();
            for device in devices {
                let key = (device.participant, device.device.clone());
                // Claimed from the start snapshot: a reconnect from now on is a new device.
                self.inner
                    .foreign
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                let back = self
                    .inner
                    .live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&key);
                if back {
                    continue;
                }
                tracing::info!(
                    participant = %device.participant,
                    device = %device.device,
                    process = %instance,
                    "a device of a process that died did not come back: it is disconnected"
                );
                receipts.push(self.device_event(LifecycleEvent::Disconnected {
                    participant: device.participant,
                    device: device.device.clone(),
                    left: false,
                }));
                if device.kind == DeviceKind::Phone {
                    receipts.push(self.device_event(LifecycleEvent::CallEnded {
                        participant: device.participant,
                        call: device.device.clone(),
                        reason: CallEndReason::Ended,
                    }));
                    // Its BYE, in the dead process's dialog, from this process's bridge: the
                    // phone (or the carrier) would otherwise keep a call nobody serves.
                    if let Some(lost) = self.inner.lost_calls.get() {
                        if stored_calls.is_none() {
                            stored_calls = Some(self.inner.store.phone_calls().await?);
                        }
                        let record = stored_calls.iter().flatten().find(|c| {
                            c.participant == device.participant && c.call == device.device
                        });
                        if let Some(c) = record {
                            lost.hang_up(c.participant, c.record.clone());
                        }
                    }
                    self.inner
                        .store
                        .forget_phone_call(device.participant, &device.device)
                        .await?;
                }
                ended += 1;
            }
            let mut written = true;
            for receipt in receipts {
                written &= receipt.wait().await;
            }
            if !written {
                // Not in the outbox (yet, or ever: this process was fenced meanwhile). The
                // rows stay; once this claim lapses, a process claims them again and writes
                // the ends (an end may then be written twice, never lost).
                tracing::warn!(
                    process = %instance,
                    "the ends of a dead process's devices are not all written: its rows stay \
                     until the claim lapses"
                );
                continue;
            }
            self.inner.store.forget_instance(&instance).await?;
        }
        Ok(ended)
    }

    /// Attaches where a dead process's phone calls are hung up (the SIP bridge, once); false
    /// if one is attached.
    pub fn attach_lost_calls(&self, lost: std::sync::Arc<dyn LostCalls>) -> bool {
        self.inner.lost_calls.set(lost).is_ok()
    }

    /// The devices other processes had live at this one's start no longer resume their call
    /// here (no `onConnect` held back): the reconnect grace is over. A device that moves here
    /// from a process alive later (a drain elsewhere) is a new device.
    pub fn end_resumption_window(&self) {
        self.inner
            .foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// This process stops: its live rows go, and it beats, fences and reaps no more.
    pub async fn forget_live(&self) -> Result<(), ControlError> {
        self.beats().stopped = true;
        Ok(self
            .inner
            .store
            .forget_instance(&self.inner.instance)
            .await?)
    }

    /// Every account with its counts.
    pub async fn accounts(&self) -> Result<Vec<AccountSummary>, ControlError> {
        Ok(self.inner.store.accounts().await?)
    }

    /// Sessions (of one account, or all) with their live devices.
    pub async fn session_summaries(
        &self,
        account: Option<&AccountId>,
        now_ms: i64,
    ) -> Result<Vec<(SessionSummary, Vec<LiveDeviceView>)>, ControlError> {
        let sessions = self.inner.store.session_summaries(account).await?;
        let mut out = Vec::with_capacity(sessions.len());
        for s in sessions {
            let members = self.inner.store.members(&s.account, s.session).await?;
            let ids: Vec<_> = members.iter().map(|m| m.id).collect();
            let devices = self.inner.store.live_devices(&ids).await?;
            out.push((s, devices.into_iter().map(|d| view(d, now_ms)).collect()));
        }
        Ok(out)
    }

    /// A session's members, live devices, published streams and who hears whom.
    pub async fn inspect(
        &self,
        account: &AccountId,
        session: SessionId,
        now_ms: i64,
    ) -> Result<Inspection, ControlError> {
        let summary = self
            .inner
            .store
            .session_summaries(Some(account))
            .await?
            .into_iter()
            .find(|s| s.session == session)
            .ok_or(ControlError::NotFound(super::Resource::Session))?;
        let members = self.inner.store.members(account, session).await?;
        let ids: Vec<_> = members.iter().map(|m| m.id).collect();
        let devices = self.inner.store.live_devices(&ids).await?;
        // Streams of a dead process are not forwarded by anyone.
        let alive: std::collections::HashSet<_> = devices
            .iter()
            .filter(|d| now_ms - d.instance_seen_ms <= ALIVE_WITHIN_MS.max(STALE_AFTER_MS))
            .map(|d| d.participant)
            .collect();
        let streams: Vec<LiveStream> = self
            .inner
            .store
            .live_streams(&ids)
            .await?
            .into_iter()
            .filter(|s| alive.contains(&s.participant))
            .collect();
        let table = forwarding::compile(&SessionState {
            session: Some(session),
            members: super::routes::rules_of(&members),
            streams: streams
                .iter()
                .map(|s| PublishedStream {
                    publisher: s.participant,
                    stream: s.stream.clone(),
                    alias: s.alias.clone(),
                    kinds: s.kinds,
                })
                .collect(),
        });
        let quality = self.inner.store.live_quality(&ids).await?;
        Ok(Inspection {
            summary,
            members,
            devices: devices.into_iter().map(|d| view(d, now_ms)).collect(),
            streams,
            table,
            quality,
        })
    }
}

/// Where the phone calls of a process that died are hung up: the SIP bridge of the process that
/// claims the loss sends each a BYE in the dead process's dialog, from its own address (a phone
/// or carrier would otherwise keep a call nobody serves until its own RTP timeout, if it has
/// one). Hanging up never waits.
pub trait LostCalls: Send + Sync + 'static {
    /// Hangs up the call whose stored record (the bridge's JSON) is `record`.
    fn hang_up(&self, participant: ParticipantId, record: String);
}
