//! `Rewrite`: what keeps one outgoing m-line of a subscribe connection a single continuous RTP
//! stream, whatever feeds it. The engine forwards packets, not frames: each packet keeps its
//! payload, marker and timing, and gets the m-line's own SSRC (str0m's send stream owns it),
//! sequence number and timestamp. Owns, per m-line: the *origin* of the packets it carries now
//! (the source track and the publisher's SSRC), the offsets from the origin's numbering to the
//! m-line's, the highest packet sent, and the origin's payload types mapped to the m-line's.
//!
//! When the origin changes (another publisher after a re-wire, the same publisher after a
//! reconnect with a new SSRC, or after a move to another shard), the m-line continues where it
//! stopped: the next sequence number, and a timestamp advanced by the wall-clock time since the
//! last packet, so the receiver sees one stream with a gap, never a jump backwards. Packets of
//! the new origin older than its first forwarded one are dropped (they would reuse numbers).
//!
//! Pure: no clock, no I/O; `now` is passed in. The engine keeps one `Rewrite` per m-line in the
//! subscriber's `Peer`, so it moves with the connection between shards.

use std::time::Instant;

use str0m::media::Pt;

use super::keys::Source;

/// Where the packets of an m-line come from: a source track, and the SSRC its publisher sends
/// it with (a phone's stream has a fixed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) source: Source,
    pub(super) ssrc: u32,
}

/// The numbering of one forwarded packet on the m-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rewritten {
    /// Extended sequence number (starts below 2^16: the receiver's rollover counter is 0).
    pub(super) seq: u64,
    /// RTP timestamp in the codec's clock.
    pub(super) ts: u32,
    /// This packet is the first of a new origin (the caller asks it for a keyframe if video).
    pub(super) switched: bool,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: i64,
    ts: u32,
    at: Instant,
}

/// One outgoing m-line's numbering (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Rewrite {
    origin: Option<Origin>,
    seq_offset: i64,
    ts_offset: u32,
    /// Output numbers at or below this belong to before the last origin change.
    floor: i64,
    last: Option<Last>,
    /// Origin payload type → the m-line's (cleared when the origin changes).
    pts: Vec<(Pt, Pt)>,
    /// The send stream whose retransmission cache was sized (an SSRC of the m-line).
    pub(super) sized_for: Option<u32>,
}

impl Rewrite {
    /// The m-line's numbering for a packet of `origin` with extended sequence number `seq` and
    /// timestamp `ts` (clock `clock_rate` Hz). `None`: drop it (older than the origin's first
    /// forwarded packet).
    pub(super) fn map(
        &mut self,
        origin: Origin,
        seq: u64,
        ts: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Option<Rewritten> {
        let seq = i64::try_from(seq).ok()?;
        let mut switched = false;
        if self.origin != Some(origin) {
            switched = true;
            self.pts.clear();
            match self.last {
                None => {
                    // The first packet keeps its 16-bit number and timestamp.
                    self.seq_offset = (seq & 0xffff) - seq;
                    self.ts_offset = 0;
                    self.floor = -1;
                }
                Some(last) => {
                    let elapsed = now.saturating_duration_since(last.at);
                    let ticks = (elapsed.as_micros() * u128::from(clock_rate) / 1_000_000)
                        .clamp(1, u128::from(u32::MAX / 2)) as u32;
                    self.seq_offset = last.seq + 1 - seq;
                    self.ts_offset = last.ts.wrapping_add(ticks).wrapping_sub(ts);
                    self.floor = last.seq;
                }
            }
            self.origin = Some(origin);
        }
        let out = seq + self.seq_offset;
        if out <= self.floor || out < 0 {
            return None;
        }
        let out_ts = ts.wrapping_add(self.ts_offset);
        if self.last.is_none_or(|l| out > l.seq) {
            self.last = Some(Last {
                seq: out,
                ts: out_ts,
                at: now,
            });
        }
        Some(Rewritten {
            seq: out as u64,
            ts: out_ts,
            switched,
        })
    }

    /// The next packet starts anew as if its origin had changed (a paused track resumed): it
    /// continues the m-line's numbering without a gap and is reported `switched`, so the
    /// caller asks for a keyframe.
    pub(super) fn restart(&mut self) {
        self.origin = None;
    }

    /// The m-line's payload type for the origin's `pt`, found by `lookup` once per origin.
    pub(super) fn pt(&mut self, pt: Pt, lookup: impl FnOnce() -> Option<Pt>) -> Option<Pt> {
        if let Some((_, out)) = self.pts.iter().find(|(p, _)| *p == pt) {
            return Some(*out);
        }
        let out = lookup()?;
        self.pts.push((pt, out));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use str0m::media::Mid;

    use super::*;
    use crate::media::DeviceId;

    fn origin(peer: u64, ssrc: u32) -> Origin {
        Origin {
            source: Source::Peer {
                peer,
                mid: Mid::from("0"),
            },
            ssrc,
        }
    }

    #[test]
    fn a_stream_stays_continuous_across_origin_changes() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut r = Rewrite::default();
        let a = origin(1, 111);
        // First origin: numbers kept (16 bits), timestamps kept.
        let p = r.map(a, 70_000, 5_000, 48_000, t0).unwrap();
        assert_eq!((p.seq, p.ts, p.switched), (70_000 & 0xffff, 5_000, true));
        let p = r.map(a, 70_001, 5_960, 48_000, t0).unwrap();
        assert_eq!((p.seq, p.ts, p.switched), (4_465, 5_960, false));
        // Reordered packet of the same origin still maps.
        assert_eq!(r.map(a, 69_999, 4_040, 48_000, t0).unwrap().seq, 4_463);
        // A new origin 100 ms later, numbered anywhere: continues after the last packet.
        let b = origin(2, 222);
        let t1 = t0 + Duration::from_millis(100);
        let p = r.map(b, 9, 1_000_000, 48_000, t1).unwrap();
        assert_eq!((p.seq, p.ts, p.switched), (4_466, 5_960 + 4_800, true));
        let p = r.map(b, 10, 1_000_960, 48_000, t1).unwrap();
        assert_eq!((p.seq, p.ts), (4_467, 5_960 + 4_800 + 960));
        // An older packet of the new origin would reuse a number: dropped.
        assert_eq!(r.map(b, 8, 999_040, 48_000, t1), None);
        // The same publisher with a new SSRC (a reconnect) is a new origin too.
        let p = r.map(origin(2, 333), 500, 7, 48_000, t1).unwrap();
        assert_eq!((p.seq, p.switched), (4_468, true));
        assert!(p.ts > 5_960 + 4_800 + 960, "never backwards");
    }

    #[test]
    fn timestamps_wrap_and_a_phone_is_an_origin() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let t0 = Instant::now();
        let mut r = Rewrite::default();
        let phone = Origin {
            source: Source::Local(DeviceId(7)),
            ssrc: 0,
        };
        let p = r.map(phone, 0, u32::MAX - 479, 48_000, t0).unwrap();
        assert_eq!(p.seq, 0);
        let p = r.map(phone, 1, 480, 48_000, t0).unwrap();
        assert_eq!((p.seq, p.ts), (1, 480));
        let mut looked_up = 0;
        for _ in 0..3 {
            let pt = r.pt(Pt::from(111), || {
                looked_up += 1;
                Some(Pt::from(100))
            });
            assert_eq!(pt, Some(Pt::from(100)));
        }
        assert_eq!(looked_up, 1, "the mapping is cached per origin");
    }
}
