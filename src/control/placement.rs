//! Placement (issue 20): which serving process hosts a session's media, so that every device
//! and phone of one session meets in one media plane.
//!
//! On a database shared by several processes (PostgreSQL, once [`Control::enable_placement`]
//! was called), a session is placed on one process when a device or call of its members
//! arrives and none hosts it: the least loaded live process that the others can reach (live
//! devices count the load; a tie goes to the process the device reached). A device that
//! reaches another process is carried to the host ([`Control::host_of`] says where); a
//! process that is asked to serve a device of a session hosted elsewhere refuses it, and the
//! device reconnects through the door again. The host releases a session when none of its
//! members has had a device there for [`RELEASE_AFTER_MS`], so the next call is balanced
//! again. A dead host's sessions are taken over by the first process that places them.
//!
//! Alone on its database (SQLite, or placement not enabled) every session is hosted here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Control, ControlError, DEAD_AFTER_MS};
use crate::domain::SessionId;
use crate::store::{InstanceRecord, SessionHost};

/// Why a browser is closed when its session is hosted by another process (it reconnects, and
/// the door carries it there).
pub const SESSION_MOVED: &str = "session moved: reconnect";

/// How long a session hosted here has had no member's device here before it is released
/// (longer than a device's reconnect, so a reconnecting call comes back to its host).
pub const RELEASE_AFTER_MS: i64 = 30_000;

/// Where a session's devices are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// By this process.
    Here,
    /// By another, live process.
    Elsewhere(SessionHost),
    /// By a process that stopped beating and whose loss is not accounted for yet: its
    /// devices' ends are not written. The session is placed again once they are (the reaper
    /// removes the dead process's placements with its rows); until then a device or call that
    /// arrives is asked to try again, so a backend always hears a lost device's
    /// `onDisconnect` before its `onConnect` on the new host.
    Lost,
}

/// This process's placement state.
#[derive(Debug, Default)]
pub(super) struct PlacementState {
    /// Where the others reach this process.
    pub(super) address: InstanceRecord,
    /// The database's clock minus this process's, as last measured (milliseconds).
    pub(super) clock_offset_ms: i64,
    /// When this process first read the database's clock (its start, in that clock).
    pub(super) started_ms: Option<i64>,
    /// Sessions hosted here found idle at the last check, with when they were first found so.
    pub(super) idle: HashMap<SessionId, i64>,
}

impl Control {
    /// This process shares its database with others: sessions are placed (see the module
    /// docs). Until then every session is hosted here.
    pub fn enable_placement(&self) {
        self.inner.placing.store(true, Ordering::SeqCst);
    }

    /// Whether sessions are placed (several processes may share the database).
    pub fn places_sessions(&self) -> bool {
        self.inner.placing.load(Ordering::SeqCst)
    }

    /// Sets where the other processes reach this one (recorded with each heartbeat).
    pub fn set_address(&self, address: InstanceRecord) {
        self.placement().address = address;
    }

    /// Where the other processes reach this one.
    pub fn address(&self) -> InstanceRecord {
        self.placement().address.clone()
    }

    /// Measures how far the database's clock is from this process's (`now_ms`): leases
    /// (heartbeats, claims, placements) are stamped and compared in the database's clock, so
    /// that processes whose clocks disagree still agree on who is alive. Measured before each
    /// beat and each release; placement reads the database's clock itself. The reaper uses the
    /// offset of the last beat: a step of this process's clock by more than 8 s between two
    /// beats (not a suspend: both clocks move then) could make it take live processes for dead
    /// until the next beat.
    pub async fn measure_clock(&self, now_ms: i64) -> Result<(), ControlError> {
        let db = self.inner.store.clock_ms().await?;
        let mut state = self.placement();
        state.clock_offset_ms = db - now_ms;
        state.started_ms.get_or_insert(db);
        Ok(())
    }

    /// The database's clock now (epoch milliseconds).
    pub async fn database_clock(&self) -> Result<i64, ControlError> {
        Ok(self.inner.store.clock_ms().await?)
    }

    /// `local_ms` (this process's clock) in the database's clock, as last measured.
    pub fn lease_ms(&self, local_ms: i64) -> i64 {
        local_ms + self.placement().clock_offset_ms
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, PlacementState> {
        self.inner
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The process that serves `session`'s devices, placing the session if no live process
    /// hosts it. A host the others cannot reach (it has no cluster address) is answered
    /// [`Host::Here`], logged: the device is served where it arrived, apart from the session's
    /// other devices, rather than refused there and sent back forever. A host on this
    /// process's own cluster address is this process's predecessor (a restart): its sessions
    /// are taken over at once, however recent its last beat.
    pub async fn host_of(&self, session: SessionId) -> Result<Host, ControlError> {
        if !self.places_sessions() {
            return Ok(Host::Here);
        }
        let me = self.inner.instance.as_str();
        let my_address = self.address().cluster;
        let store = &self.inner.store;
        let now_ms = self.inner.store.clock_ms().await?;
        let alive_since = now_ms - DEAD_AFTER_MS;
        let current = store.session_host(session).await?;
        if let Some(host) = &current {
            if host.instance == me && store.confirm_session(session, me, now_ms).await? {
                return Ok(Host::Here);
            }
        }
        let replacing = current
            .as_ref()
            .filter(|h| self.is_predecessor(h, my_address.as_deref()))
            .map(|h| h.instance.clone());
        if replacing.is_none()
            && current
                .as_ref()
                .is_some_and(|h| is_lost(h, me, alive_since))
        {
            return Ok(Host::Lost);
        }
        let candidate = match replacing {
            Some(_) => me.to_owned(),
            None => self.candidate(now_ms).await?,
        };
        let host = store
            .place_session(
                session,
                &candidate,
                replacing.as_deref(),
                alive_since,
                now_ms,
            )
            .await?;
        Ok(self.host(session, host))
    }

    /// Whether `host` is this process's predecessor: another process on this one's cluster
    /// address that has not beaten since this one started (two live processes given one
    /// address do not take sessions from each other).
    fn is_predecessor(&self, host: &SessionHost, my_address: Option<&str>) -> bool {
        let started = self.placement().started_ms;
        host.instance != self.inner.instance
            && my_address.is_some()
            && host.cluster_address.as_deref() == my_address
            && match (host.host_seen_ms, started) {
                (Some(seen), Some(started)) => seen < started,
                (None, _) => true,
                (Some(_), None) => false,
            }
    }

    fn host(&self, session: SessionId, host: SessionHost) -> Host {
        if host.instance == self.inner.instance {
            Host::Here
        } else if host.cluster_address.is_none() {
            tracing::warn!(
                %session,
                host = %host.instance,
                "the session's host gave no cluster address (--cluster-address): its devices \
                 that reach this process are served here, apart from the others"
            );
            Host::Here
        } else {
            Host::Elsewhere(host)
        }
    }

    /// Where a new session goes: the live process with the fewest devices among those the
    /// others can reach and that do not drain; this one on a tie, or when no other qualifies.
    async fn candidate(&self, now_ms: i64) -> Result<String, ControlError> {
        let me = self.inner.instance.as_str();
        let loads = self
            .inner
            .store
            .instance_loads(now_ms - DEAD_AFTER_MS, now_ms)
            .await?;
        let mine = loads
            .iter()
            .find(|l| l.instance == me)
            .map_or(0, |l| l.devices);
        // A process that drains, or that the others cannot reach, takes a new session only
        // when no other can.
        let i_qualify = !self.is_draining() && self.address().cluster.is_some();
        Ok(loads
            .iter()
            .filter(|l| l.instance != me && l.cluster_address.is_some() && !l.draining)
            .filter(|l| !i_qualify || l.devices < mine)
            .min_by_key(|l| (l.devices, l.instance.clone()))
            .map_or(me, |l| l.instance.as_str())
            .to_owned())
    }

    /// The members of `session` with a device here (`here`) belong on its host: the session
    /// is placed here if no live process hosts it; if another one does, their browsers are
    /// closed with [`SESSION_MOVED`] (they reconnect and are carried there). A phone cannot
    /// move: a participant with a call here stays here, apart from the session's other
    /// devices (logged).
    pub(super) async fn keep_on_host(
        &self,
        session: SessionId,
        here: &[crate::domain::ParticipantId],
    ) {
        if !self.places_sessions() || here.is_empty() || self.is_draining() {
            return;
        }
        let host = match self.host_of_devices_here(session).await {
            // (Lost does not come from here: a lost host is replaced by the devices here.)
            Ok(Host::Here | Host::Lost) => return,
            Ok(Host::Elsewhere(host)) => host,
            Err(e) => {
                tracing::warn!(%session, error = %e, "cannot read or place a session's host");
                return;
            }
        };
        for participant in here {
            if self.has_phone_here(*participant) {
                tracing::warn!(
                    %session, %participant, host = %host.instance,
                    "a phone call here is in a session hosted by another process: it hears \
                     and is heard only by the devices here"
                );
                continue;
            }
            tracing::info!(%session, %participant, host = %host.instance, "session hosted by another process: its device here reconnects there");
            self.disconnect_participant(*participant, SESSION_MOVED);
        }
    }

    /// As [`Control::host_of`], for a session some of whose devices are here already: with
    /// no live host, it is placed here (where its devices are), not on the least loaded.
    async fn host_of_devices_here(&self, session: SessionId) -> Result<Host, ControlError> {
        let me = self.inner.instance.as_str();
        let store = &self.inner.store;
        let now_ms = self.inner.store.clock_ms().await?;
        if let Some(host) = store.session_host(session).await? {
            if host.instance == me {
                return Ok(Host::Here);
            }
            if self.is_predecessor(&host, self.address().cluster.as_deref()) {
                return self.host_of(session).await; // the predecessor's: taken over
            }
        }
        // Where its devices are, unless the others cannot reach this process.
        let candidate = if self.address().cluster.is_some() {
            me.to_owned()
        } else {
            self.candidate(now_ms).await?
        };
        let host = store
            .place_session(session, &candidate, None, now_ms - DEAD_AFTER_MS, now_ms)
            .await?;
        Ok(self.host(session, host))
    }

    /// Every serving process recorded on the database, oldest first, each with whether it
    /// counts as alive now, and the database's clock it was judged by (for `patchbay cluster
    /// status`).
    pub async fn cluster_status(
        &self,
    ) -> Result<(Vec<(crate::store::InstanceStatus, bool)>, i64), ControlError> {
        let now_ms = self.inner.store.clock_ms().await?;
        let list = self
            .inner
            .store
            .instances()
            .await?
            .into_iter()
            .map(|i| {
                let alive = i.seen_at_ms >= now_ms - DEAD_AFTER_MS && i.claimed_until_ms <= now_ms;
                (i, alive)
            })
            .collect();
        Ok((list, now_ms))
    }

    /// The IP addresses of the other live processes' cluster addresses (those given as IP
    /// literals): their connections carry devices here. Empty when sessions are not placed.
    pub async fn cluster_peers(&self) -> Result<Vec<std::net::IpAddr>, ControlError> {
        if !self.places_sessions() {
            return Ok(Vec::new());
        }
        let now_ms = self.inner.store.clock_ms().await?;
        let loads = self
            .inner
            .store
            .instance_loads(now_ms - DEAD_AFTER_MS, now_ms)
            .await?;
        Ok(loads
            .iter()
            .filter(|l| l.instance != self.inner.instance)
            .filter_map(|l| l.cluster_address.as_deref())
            .filter_map(|a| match url::Url::parse(a).ok()?.host()? {
                url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
                url::Host::Domain(_) => None,
            })
            .collect())
    }

    /// Releases the sessions hosted here whose members have had no device here for
    /// [`RELEASE_AFTER_MS`] (checked every few seconds by the runtime, with `now_ms`). The
    /// sessions released.
    pub async fn release_idle_sessions(&self, now_ms: i64) -> Result<usize, ControlError> {
        if !self.places_sessions() {
            return Ok(0);
        }
        // Measured now: a step of this process's clock since the last beat counts for nothing.
        self.measure_clock(now_ms).await?;
        let now_ms = self.lease_ms(now_ms);
        let idle = self
            .inner
            .store
            .idle_sessions(&self.inner.instance, now_ms - RELEASE_AFTER_MS)
            .await?;
        let due: Vec<SessionId> = {
            let mut state = self.placement();
            let before = std::mem::take(&mut state.idle);
            for session in idle {
                let since = before.get(&session).copied().unwrap_or(now_ms);
                state.idle.insert(session, since);
            }
            state
                .idle
                .iter()
                .filter(|(_, since)| now_ms - **since >= RELEASE_AFTER_MS)
                .map(|(session, _)| *session)
                .collect()
        };
        let mut released = 0;
        for session in due {
            if self
                .inner
                .store
                .release_session(session, &self.inner.instance, now_ms - RELEASE_AFTER_MS)
                .await?
            {
                tracing::debug!(%session, "session released: no device of its members here");
                released += 1;
            }
            self.placement().idle.remove(&session);
        }
        Ok(released)
    }

    /// Takes or renews the duty `name` for this process until `lease_ms` from `now_ms` (this
    /// process's clock; the lease is in the database's): true if this process is the one to
    /// do it now. On SQLite (one serving process) too: the same table says who does it.
    pub async fn take_duty(
        &self,
        name: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, ControlError> {
        let now_ms = self.lease_ms(now_ms);
        Ok(self
            .inner
            .store
            .take_duty(name, &self.inner.instance, now_ms, now_ms + lease_ms)
            .await?)
    }
}

/// Whether `host`, another process the others can reach, stopped beating (last seen before
/// `alive_since`) and still has its row: dead, its loss not yet accounted for. A host without
/// a cluster address is not a cluster member (its sessions' devices are served where they
/// arrive), and one whose row is gone was accounted for.
fn is_lost(host: &SessionHost, me: &str, alive_since: i64) -> bool {
    host.instance != me
        && host.cluster_address.is_some()
        && host.host_seen_ms.is_some_and(|seen| seen < alive_since)
}
