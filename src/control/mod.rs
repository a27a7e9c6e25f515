//! The orchestrator: every verb of the product goes through [`Control`].
//!
//! Control owns the sequence "check, write the store, recompile the affected session's
//! forwarding table, publish the difference". Adapters (REST, signaling, the SIP bridge) call
//! it with domain types and render its results; they never touch the store, and they only see
//! control's own errors ([`ControlError`]), never the store's. After each change to membership
//! or subscriptions, Control recompiles the session with the pure [`Routing`] core and hands
//! the table diff to the media plane through its port ([`port::MediaPort::apply_routes`]), so
//! engines only ever apply differences. The port is control's one door to the media plane:
//! diffs, deletions, disconnects and the stop go through it in order with device commands.
//! [`Control::watch`] is a feed for observers (tests, logs) of what control did; nothing acts
//! on it.
//!
//! Files, by concern:
//! - `mod.rs`: [`Control`], its constructor, readiness and event subscription.
//! - `error.rs`: [`ControlError`] and its vocabulary; the one translation of the store's errors.
//! - `auth.rs`: API credentials ([`Control::create_account`], [`Control::authenticate`]) and
//!   their cache.
//! - `devices.rs`: device-token verification and device lifecycle events.
//! - `connections.rs`: [`DeviceControl`], the verbs of device connections (a browser's
//!   signalling, a phone call), carried out through the media port.
//! - `port.rs`: [`port::MediaPort`], what control needs from the media plane; the runtime
//!   implements it.
//! - `sessions.rs`: the verbs on sessions, participants and membership.
//! - `routes.rs`: published streams, recompiles and tables on request.
//! - `quality.rs`: a member's measured media quality, from this process's media plane.
//! - `routing.rs`: [`Routing`], the pure core: published streams and last tables → diffs.
//! - `serial.rs`: per-session serialization of recompiles (striped locks).
//! - `events.rs`: [`ControlEvent`]s and the bus that carries them to observers.
//! - `layouts.rs`: what a restarted process resumes calls from, in the store: devices'
//!   subscribe layouts and publish credentials, phone calls' dialogs.
//! - `keys.rs`: the device-token keys (current and, after a rotation, previous) and their
//!   reload from the store.
//! - `placement.rs`: which process hosts each session's media when several share the
//!   database ([`Control::host_of`]), and the release of sessions that emptied.
//! - `operator.rs`: the operator's verbs (accounts, credential and secret rotation, session
//!   summaries and inspection) and this process's live state in the store.
//! - `webhooks.rs`: lifecycle events into the webhook outbox (through one ordered feed the
//!   runtime drains), account webhook settings, the delivery log, and the session cleanup.

mod auth;
mod connections;
mod devices;
mod doorbell;
mod error;
mod events;
mod keys;
mod layouts;
mod operator;
mod placement;
pub mod port;
mod quality;
mod routes;
mod routing;
mod serial;
mod sessions;
mod speakers;
mod webhooks;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::domain::LevelWatch;
use crate::store::Store;
use crate::token::{self, TokenKeys};

pub use crate::domain::{CallEndReason, LifecycleEvent};
/// The outbox's vocabulary, as the delivery worker and the delivery log see it.
pub use crate::store::{AccountWebhooks, LiveDevice, WebhookOptIn};
pub use crate::webhooks::{AttemptOutcome, DeliveryAttempt, OutboxEvent};
pub use auth::{NewCredentials, RotatedCredentials, CREDENTIAL_CACHE_TTL};
pub use connections::{
    AdmittedPhone, ConnectError, ConnectedDevice, DeviceControl, Door, Ended, PhoneJoined,
    PhoneRefusal, ResumedPhone,
};
pub use devices::VerifiedDevice;
pub use doorbell::{Doorbell, Ring, UnreadableRing};
pub use error::{Conflict, ControlError, DeviceTokenError, Invalid, Resource, Source};
pub use events::{ControlEvent, RoutingUpdate};
pub use keys::PREVIOUS_SECRET_NAME;
pub use operator::{
    Inspection, LiveDeviceView, LostCalls, DEAD_AFTER_MS, REAP_CLAIM_MS, TAKEN_FOR_DEAD,
};
pub use placement::{Host, RELEASE_AFTER_MS, SESSION_MOVED};
pub use quality::{quality_summary, MemberQuality};
pub use routing::Routing;
pub use sessions::NewParticipant;
pub use speakers::{ActiveSpeaker, SessionSpeaker};
pub use webhooks::{FeedItem, Recorded, Recording, WebhookFeed, EXPIRE_BATCH, SESSION_EXPIRED};

/// The orchestrator. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    tokens: keys::DeviceKeys,
    /// This process's id in the live-state tables (see `operator.rs`).
    instance: String,
    events: events::EventBus,
    /// The media plane, once the runtime attached it ([`Control::attach_media`]): before that,
    /// changes reach the observers only.
    media: std::sync::OnceLock<Arc<dyn port::MediaPort>>,
    /// The bus to the other processes sharing the database, if any (see [`Doorbell`]).
    doorbell: std::sync::OnceLock<Arc<dyn doorbell::Doorbell>>,
    /// Where a dead process's phone calls are hung up, once the SIP bridge attached it
    /// ([`LostCalls`]).
    lost_calls: std::sync::OnceLock<Arc<dyn operator::LostCalls>>,
    /// Published streams and the last table of each session.
    routing: Mutex<Routing>,
    /// The account of each session this process keeps a table for (for resynchronization).
    hosted: Mutex<std::collections::HashMap<crate::domain::SessionId, crate::domain::AccountId>>,
    /// Serializes "read the session, compile, publish" per session.
    stripes: serial::Stripes,
    credentials: auth::CredentialCache,
    /// Lifecycle events on their way to the webhook outbox, once the runtime drains them.
    webhooks: webhooks::Recorder,
    /// The devices (browsers and phone calls) connected to this process, by participant and
    /// `uniqueId` (call id for phones), from their lifecycle events.
    live: Mutex<devices::LiveDevices>,
    /// What this process's heartbeats found (see [`Control::heartbeat`]).
    beats: Mutex<devices::BeatState>,
    /// Devices another process had live when this one started (by participant and
    /// `uniqueId`): one reconnecting here resumes its call, and its backend is not told a
    /// second `onConnect`.
    foreign: Mutex<std::collections::HashSet<(crate::domain::ParticipantId, String)>>,
    /// Where webhooks may be delivered: checked when a `callbackUrl` is set (IP literals; host
    /// names are checked when a delivery resolves them).
    destinations: std::sync::RwLock<crate::webhooks::Destinations>,
    /// Set once the process drains before it stops (see [`Control::begin_drain`]).
    draining: std::sync::atomic::AtomicBool,
    /// Each hosted session's dominant speaker, as the media plane last reported it (see
    /// `speakers.rs`; this process's memory only).
    speakers: Mutex<std::collections::HashMap<crate::domain::SessionId, speakers::ActiveSpeaker>>,
    /// Each measured participant's quality level as last reported (`onQualityChanged`;
    /// `quality.rs`; this process's memory only).
    quality_levels: Mutex<std::collections::HashMap<crate::domain::ParticipantId, LevelWatch>>,
    /// Sessions are placed on one process each (see `placement.rs`).
    placing: std::sync::atomic::AtomicBool,
    /// Where the others reach this process, and its hosted sessions found idle.
    placement: Mutex<placement::PlacementState>,
}

impl Control {
    /// Builds the orchestrator on `store`, loading (or creating) the device-token secret.
    pub async fn new(store: Arc<dyn Store>) -> Result<Control, ControlError> {
        let secret = store
            .secret(token::SECRET_NAME, &TokenKeys::generate_secret())
            .await?;
        let previous = store.secret_value(keys::PREVIOUS_SECRET_NAME).await?;
        Ok(Control {
            inner: Arc::new(Inner {
                tokens: keys::DeviceKeys::new(&secret, previous.as_deref()),
                instance: uuid::Uuid::new_v4().to_string(),
                store,
                events: events::EventBus::new(),
                media: std::sync::OnceLock::new(),
                doorbell: std::sync::OnceLock::new(),
                lost_calls: std::sync::OnceLock::new(),
                routing: Mutex::new(Routing::new()),
                hosted: Mutex::default(),
                stripes: serial::Stripes::new(),
                credentials: auth::CredentialCache::default(),
                webhooks: webhooks::Recorder::default(),
                live: Mutex::default(),
                beats: Mutex::default(),
                foreign: Mutex::default(),
                destinations: std::sync::RwLock::default(),
                draining: std::sync::atomic::AtomicBool::new(false),
                speakers: Mutex::default(),
                quality_levels: Mutex::default(),
                placing: std::sync::atomic::AtomicBool::new(false),
                placement: Mutex::default(),
            }),
        })
    }

    /// Can control serve verbs now (its database answers)?
    pub async fn ready(&self) -> Result<(), ControlError> {
        Ok(self.inner.store.ping().await?)
    }

    /// The process is stopping: from now on readiness fails, and new device connections and
    /// phone calls are refused; what is connected stays until [`Control::stop_devices`].
    pub fn begin_drain(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where webhooks may be delivered (public addresses only until this is called): a
    /// `callbackUrl` whose host is an address outside it is refused when it is set.
    pub fn set_webhook_destinations(&self, destinations: crate::webhooks::Destinations) {
        *self
            .inner
            .destinations
            .write()
            .unwrap_or_else(|e| e.into_inner()) = destinations;
    }

    /// Refuses a `callbackUrl` webhooks could not be delivered to (see
    /// [`Control::set_webhook_destinations`]).
    fn check_callback(&self, url: &crate::domain::CallbackUrl) -> Result<(), ControlError> {
        self.inner
            .destinations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check_url(url.as_str())
            .map_err(|refusal| error::Invalid::CallbackDestination(refusal.to_string()).into())
    }

    /// Is the process draining?
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tells the media plane to let every device go: browsers' WebSockets are closed with
    /// 1001 "server shutting down" (the SDK keeps reconnecting; the next process on the same
    /// ports and database resumes the call).
    pub fn stop_devices(&self) {
        if let Some(media) = self.media() {
            media.stop();
        }
        self.inner.events.send(ControlEvent::Shutdown);
    }

    /// Attaches the media plane: routing changes, deletions, disconnects and the stop go to it
    /// from now on. Once per control: false (and `media` is not attached) if one was already.
    #[must_use]
    pub fn attach_media(&self, media: Arc<dyn port::MediaPort>) -> bool {
        self.inner.media.set(media).is_ok()
    }

    fn media(&self) -> Option<&Arc<dyn port::MediaPort>> {
        self.inner.media.get()
    }

    /// A session's table changed by `diff`: the media plane applies it, observers see it.
    fn publish_routes(
        &self,
        session: crate::domain::SessionId,
        diff: crate::forwarding::TableDiff,
    ) {
        let diff = Arc::new(diff);
        if let Some(media) = self.media() {
            media.apply_routes(session, diff.clone());
        }
        self.inner
            .events
            .send(ControlEvent::Routes(RoutingUpdate { session, diff }));
    }

    /// The participant was deleted: its devices are closed.
    fn participant_deleted(&self, participant: crate::domain::ParticipantId) {
        if let Some(media) = self.media() {
            media.participant_deleted(participant);
        }
        self.inner
            .events
            .send(ControlEvent::ParticipantDeleted(participant));
    }

    /// `participant` was deleted: what it published is forgotten, its devices here end (their
    /// end events recorded now: the receipts) and the media plane closes them.
    fn participant_gone(&self, participant: crate::domain::ParticipantId) -> Vec<Recorded> {
        self.lock_routing().forget_participant(participant);
        let ended = self.end_devices_of(participant);
        self.participant_deleted(participant);
        ended
    }

    /// `participant`'s devices are closed, told `reason`; the participant stays.
    fn disconnect_participant(
        &self,
        participant: crate::domain::ParticipantId,
        reason: &'static str,
    ) {
        if let Some(media) = self.media() {
            media.disconnect_participant(participant, reason);
        }
        self.inner.events.send(ControlEvent::Disconnect {
            participant,
            reason,
        });
    }

    /// How many devices (browsers and phone calls) are connected to this process.
    pub fn live_devices(&self) -> usize {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count()
    }

    /// What control did (routing updates, deletions, lifecycle events), in order, for
    /// observers: tests and logs. The media plane does not act on it (it has the port).
    pub fn watch(&self) -> broadcast::Receiver<ControlEvent> {
        self.inner.events.watch()
    }

    fn lock_routing(&self) -> MutexGuard<'_, Routing> {
        self.inner.routing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
async fn test_control() -> (Control, crate::domain::AccountId) {
    let store = crate::store::SqlStore::open("sqlite::memory:")
        .await
        .unwrap();
    let control = Control::new(Arc::new(store)).await.unwrap();
    let creds = control
        .create_account(crate::domain::AccountId::parse("acct").unwrap())
        .await
        .unwrap();
    (control, creds.account)
}

/// A control on a fresh database, an account, one of its sessions and two of its participants
/// (not members yet).
#[cfg(test)]
async fn test_session_of_two() -> (
    Control,
    crate::domain::AccountId,
    crate::domain::Session,
    crate::domain::Participant,
    crate::domain::Participant,
) {
    let (control, account) = test_control().await;
    let session = control.create_session(&account, None).await.unwrap();
    let (a, _) = control
        .create_participant(&account, NewParticipant::default())
        .await
        .unwrap();
    let (b, _) = control
        .create_participant(&account, NewParticipant::default())
        .await
        .unwrap();
    (control, account, session, a, b)
}
