//! `MediaCounters`: what an engine counts for the metrics, owned by the engine and read by
//! its driver once a second.

/// What an engine counts, cumulative since it started: plain integers, no allocation or lock
/// per packet; the driver reads them ([`super::Engine::counters`]) and publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCounters {
    /// Media packets written to subscribers (peers and local devices).
    pub forwarded_packets: u64,
    /// Their payload bytes.
    pub forwarded_bytes: u64,
    /// Frames that could not be written to a subscriber (no matching codec, write refused).
    pub forward_failures: u64,
    /// Datagrams from a known peer that the WebRTC stack refused.
    pub unusable_datagrams: u64,
    /// Keyframe requests (PLI, FIR) received from subscribers.
    pub keyframe_requests_received: u64,
    /// Keyframe requests sent to publishers (for subscribers, and on source switches).
    pub keyframe_requests: u64,
    /// Keyframe requests not sent because one had just been sent to the same track.
    pub keyframe_requests_merged: u64,
    /// NACK feedback messages received from subscribers (counted from the statistics, once
    /// a second per connection).
    pub nacks_received: u64,
    /// NACK feedback messages sent to publishers (likewise).
    pub nacks_sent: u64,
    /// Connectivity checks addressed to another process, answered with an error
    /// (`Engine::refuse_check`; counted, not yet exported as a metric).
    pub refused_checks: u64,
    /// Subscribers' keyframe requests held back: for a paused track, or while the
    /// subscriber's link is short (`allocation`).
    pub keyframe_requests_held: u64,
    /// Video tracks paused for a subscriber whose link is short.
    pub video_pauses: u64,
    /// Paused video tracks resumed.
    pub video_resumes: u64,
    /// REMB ceilings sent to publishers whose video track has one viewer (`cap.rs`), every
    /// second while the cap holds.
    pub publisher_caps: u64,
    /// Subscribers' estimators restarted, lagging or stalled (`Allocation::restart_due`).
    pub estimate_restarts: u64,
}

impl MediaCounters {
    pub(super) fn forwarded(&mut self, bytes: usize) {
        self.forwarded_packets += 1;
        self.forwarded_bytes += bytes as u64;
    }
}
