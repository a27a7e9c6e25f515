//! A small packet jitter buffer for the phone's incoming RTP.
//!
//! This module owns reordering and playout timing *in packets*, not in wall time: the caller
//! pushes packets as they arrive and pops exactly one slot per packet interval (the phone
//! pipeline pops as many as it needs to fill each 20 ms uplink frame). There is no clock.
//!
//! Policy:
//! - **Order**: slots are keyed by the sequence number extended to 64 bits against the highest
//!   one seen, so 16-bit wraparound is invisible.
//! - **Playout delay**: after a start, a reset or an underrun, nothing plays until the buffer
//!   spans [`JitterConfig::playout_delay`] packets (counting any holes). That is the jitter
//!   the buffer absorbs.
//! - **Late and duplicate** packets (behind the playout point, or already held) are dropped
//!   and counted.
//! - **Loss**: a missing packet with later ones already buffered plays as
//!   [`Playout::Lost`], so the decoder can conceal it. A missing packet with *nothing* after it
//!   is an underrun ([`Playout::Empty`]): the playout point stays put (the packet may still
//!   arrive) and the buffer goes back to pre-buffering.
//! - **Bounded latency and memory**: when the buffered span exceeds
//!   [`JitterConfig::max_latency`] the oldest slots are skipped; no more than
//!   [`JitterConfig::capacity`] slots are ever held.
//! - **Restarts**: a new SSRC resets the buffer at once. A sequence jump beyond
//!   [`JitterConfig::max_dropout`] forward or [`JitterConfig::max_misorder`] backward is
//!   taken as a sender restart only when the next packet continues from it (RFC 3550 A.1
//!   probation); a lone stray packet is dropped.

use std::collections::BTreeMap;

/// Tuning of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Packets (span, holes included) buffered before playout starts or resumes. At least 1.
    pub playout_delay: usize,
    /// Largest span kept once playing; older slots are skipped beyond it. At least
    /// `playout_delay`.
    pub max_latency: usize,
    /// Hard bound on the span held (memory bound). At least `max_latency`.
    pub capacity: usize,
    /// Largest forward sequence jump treated as loss rather than a restart.
    pub max_dropout: u16,
    /// Largest backward sequence jump treated as a late packet rather than a restart.
    pub max_misorder: u16,
}

impl Default for JitterConfig {
    /// 3 packets of delay (60 ms at 20 ms ptime), latency capped at 6, 64 slots, RFC 3550's
    /// 3000/100 restart thresholds.
    fn default() -> Self {
        JitterConfig {
            playout_delay: 3,
            max_latency: 6,
            capacity: 64,
            max_dropout: 3000,
            max_misorder: 100,
        }
    }
}

impl JitterConfig {
    fn normalised(mut self) -> Self {
        self.playout_delay = self.playout_delay.max(1);
        self.max_latency = self.max_latency.max(self.playout_delay);
        self.capacity = self.capacity.max(self.max_latency);
        self
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered.
    Accepted,
    /// Buffered after clearing the buffer (first packet, new SSRC, or confirmed restart).
    Reset,
    /// Dropped: its slot already holds a packet.
    Duplicate,
    /// Dropped: its slot has already been played or skipped.
    Late,
    /// Dropped: a large sequence jump, held on probation until the next packet confirms it.
    Discontinuity,
}

/// One slot of playout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout<T> {
    /// The packet for this slot.
    Packet(T),
    /// This slot's packet is missing and later ones are here: conceal it.
    Lost,
    /// Nothing to play: not started, pre-buffering, or an underrun.
    Empty,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets buffered.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late packets dropped.
    pub late: u64,
    /// Slots played as [`Playout::Lost`].
    pub lost: u64,
    /// Pops that found the buffer empty while playing.
    pub underruns: u64,
    /// Buffered packets skipped to bound latency or memory.
    pub skipped: u64,
    /// Resets for a new SSRC or a confirmed sequence restart.
    pub resets: u64,
}

/// The buffer itself, generic over what a packet carries.
#[derive(Debug, Clone)]
pub struct JitterBuffer<T> {
    config: JitterConfig,
    ssrc: Option<u32>,
    /// Extended sequence number of the next slot to play.
    next: u64,
    /// Highest extended sequence number accepted.
    highest: u64,
    slots: BTreeMap<u64, T>,
    buffering: bool,
    /// After a big jump: the sequence number that would confirm a restart.
    probation: Option<u16>,
    stats: JitterStats,
}

/// Extended sequence numbers start here so that a backward step never goes below zero.
const EXTENDED_BASE: u64 = 1 << 32;

impl<T> JitterBuffer<T> {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        JitterBuffer {
            config: config.normalised(),
            ssrc: None,
            next: 0,
            highest: 0,
            slots: BTreeMap::new(),
            buffering: true,
            probation: None,
            stats: JitterStats::default(),
        }
    }

    /// The configuration in force (after normalisation).
    pub fn config(&self) -> JitterConfig {
        self.config
    }

    /// Counters.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The SSRC being played, once a packet has arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets everything buffered; the next packet starts afresh.
    pub fn clear(&mut self) {
        self.ssrc = None;
        self.slots.clear();
        self.buffering = true;
        self.probation = None;
    }

    fn restart(&mut self, ssrc: u32, seq: u16, item: T) {
        self.slots.clear();
        self.ssrc = Some(ssrc);
        let ext = EXTENDED_BASE + u64::from(seq);
        self.next = ext;
        self.highest = ext;
        self.slots.insert(ext, item);
        self.buffering = true;
        self.probation = None;
        self.stats.accepted += 1;
    }

    /// Buffers one packet.
    pub fn push(&mut self, ssrc: u32, seq: u16, item: T) -> PushOutcome {
        match self.ssrc {
            None => {
                self.restart(ssrc, seq, item);
                return PushOutcome::Reset;
            }
            Some(current) if current != ssrc => {
                self.stats.resets += 1;
                self.restart(ssrc, seq, item);
                return PushOutcome::Reset;
            }
            Some(_) => {}
        }
        // Distance from the highest accepted, in -32768..=32767 (wraparound-safe).
        let delta = i64::from(seq.wrapping_sub(self.highest as u16) as i16);
        if delta > i64::from(self.config.max_dropout)
            || -delta > i64::from(self.config.max_misorder)
        {
            if self.probation == Some(seq) {
                self.stats.resets += 1;
                self.restart(ssrc, seq, item);
                return PushOutcome::Reset;
            }
            self.probation = Some(seq.wrapping_add(1));
            return PushOutcome::Discontinuity;
        }
        self.probation = None;
        // highest >= EXTENDED_BASE and |delta| < 2^15, so this stays positive.
        let ext = self.highest.saturating_add_signed(delta);
        if ext < self.next {
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        if self.slots.contains_key(&ext) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        self.slots.insert(ext, item);
        self.stats.accepted += 1;
        if ext > self.highest {
            self.highest = ext;
        }
        let span = self.highest + 1 - self.next;
        if span > self.config.capacity as u64 {
            self.skip_to(self.highest + 1 - self.config.capacity as u64);
        }
        PushOutcome::Accepted
    }

    /// Drops every slot before `new_next` and moves the playout point there.
    fn skip_to(&mut self, new_next: u64) {
        if new_next <= self.next {
            return;
        }
        let kept = self.slots.split_off(&new_next);
        self.stats.skipped += self.slots.len() as u64;
        self.slots = kept;
        self.next = new_next;
    }

    /// Plays the next slot; call once per packet interval.
    pub fn pop(&mut self) -> Playout<T> {
        // `highest` is always held until played, so an empty map means nothing at or after
        // `next` has arrived.
        if self.ssrc.is_none() || self.slots.is_empty() {
            if !self.buffering {
                self.stats.underruns += 1;
                self.buffering = true;
            }
            return Playout::Empty;
        }
        let span = self.highest + 1 - self.next;
        if self.buffering {
            if span < self.config.playout_delay as u64 {
                return Playout::Empty;
            }
            self.buffering = false;
        }
        if span > self.config.max_latency as u64 {
            self.skip_to(self.highest + 1 - self.config.max_latency as u64);
        }
        let slot = self.next;
        self.next += 1;
        match self.slots.remove(&slot) {
            Some(item) => Playout::Packet(item),
            None => {
                self.stats.lost += 1;
                Playout::Lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(delay: usize) -> JitterConfig {
        JitterConfig {
            playout_delay: delay,
            max_latency: 8,
            capacity: 16,
            ..JitterConfig::default()
        }
    }

    #[test]
    fn underrun_keeps_the_slot_for_a_late_packet() {
        let mut jb = JitterBuffer::new(config(1));
        jb.push(1, 10, 10);
        assert_eq!(jb.pop(), Playout::Packet(10));
        assert_eq!(jb.pop(), Playout::Empty);
        assert_eq!(jb.stats().underruns, 1);
        jb.push(1, 11, 11);
        assert_eq!(jb.pop(), Playout::Packet(11));
    }

    #[test]
    fn latency_is_capped() {
        let mut jb = JitterBuffer::new(config(2));
        for seq in 0..12u16 {
            jb.push(1, seq, seq);
        }
        // Span 12 > max_latency 8: the four oldest are skipped.
        assert_eq!(jb.pop(), Playout::Packet(4));
        assert_eq!(jb.stats().skipped, 4);
    }
}
