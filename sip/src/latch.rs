//! Which datagrams on a call's RTP port are the phone's, and where its audio goes back
//! (symmetric RTP, RFC 7362 latching, guarded).
//!
//! A phone behind NAT sends from an address its SDP does not name, so the bridge answers
//! where the phone's RTP actually comes from. Moving on the first datagram from anywhere would
//! hand the call's audio to anyone who can reach the port (one junk datagram every few
//! milliseconds was enough). So: only a datagram that parses as RTP counts; the first one
//! latches its source address and SSRC; afterwards a datagram from another address is taken,
//! and moves the latch, only if it carries the latched SSRC (a NAT rebinding keeps the SSRC; a
//! stranger does not know it). A re-INVITE starts a new negotiation: [`RtpLatch::reset`].
//! Datagrams refused here are neither media nor a sign of life.

use std::net::SocketAddr;

use crate::rtp::RtpPacket;

/// What the latch says about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The phone's: hand it to the phone's media, count it as a sign of life, and send the
    /// call's audio to `reply_to` from now on.
    Phone {
        /// Where the phone's audio goes.
        reply_to: SocketAddr,
    },
    /// Not RTP (too short, wrong version): ignored.
    NotRtp,
    /// RTP from an address that is not the latched one, without the latched SSRC: ignored.
    Stranger,
}

/// The latch of one call.
#[derive(Debug, Clone, Default)]
pub struct RtpLatch {
    latched: Option<(SocketAddr, u32)>,
}

impl RtpLatch {
    /// A latch that has seen nothing yet: the first RTP datagram sets it.
    pub fn new() -> RtpLatch {
        RtpLatch::default()
    }

    /// Judges a datagram from `source`.
    pub fn admit(&mut self, source: SocketAddr, datagram: &[u8]) -> Admission {
        let Ok(packet) = RtpPacket::parse(datagram) else {
            return Admission::NotRtp;
        };
        // RTCP multiplexed on the RTP port (payload types 72-76 seen through an RTP header)
        // has no RTP SSRC at that offset: it counts from the latched address only, and moves
        // nothing.
        let rtcp = (72..=76).contains(&packet.payload_type);
        match self.latched {
            Some((address, _)) if address == source => {
                if !rtcp {
                    self.latched = Some((source, packet.ssrc));
                }
                Admission::Phone { reply_to: source }
            }
            Some((_, ssrc)) if !rtcp && ssrc == packet.ssrc => {
                self.latched = Some((source, ssrc));
                Admission::Phone { reply_to: source }
            }
            Some(_) => Admission::Stranger,
            None if rtcp => Admission::Stranger,
            None => {
                self.latched = Some((source, packet.ssrc));
                Admission::Phone { reply_to: source }
            }
        }
    }

    /// Forgets the latch (a re-INVITE negotiated the media again).
    pub fn reset(&mut self) {
        self.latched = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1, 0, 0, 0, 160];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn junk_never_latches_nor_moves_the_latch() {
        let mut l = RtpLatch::new();
        assert_eq!(l.admit(addr(9), b"hello"), Admission::NotRtp);
        assert_eq!(
            l.admit(addr(1), &rtp(0, 7)),
            Admission::Phone { reply_to: addr(1) }
        );
        assert_eq!(l.admit(addr(9), b"hello"), Admission::NotRtp);
        assert_eq!(
            l.admit(addr(1), &rtp(0, 7)),
            Admission::Phone { reply_to: addr(1) }
        );
    }

    #[test]
    fn another_address_needs_the_latched_ssrc() {
        let mut l = RtpLatch::new();
        l.admit(addr(1), &rtp(0, 7));
        // A stranger's well-formed RTP: refused, the latch stays.
        assert_eq!(l.admit(addr(9), &rtp(0, 8)), Admission::Stranger);
        assert_eq!(
            l.admit(addr(1), &rtp(0, 7)),
            Admission::Phone { reply_to: addr(1) }
        );
        // The phone's NAT binding changed: same SSRC, new address, the latch follows.
        assert_eq!(
            l.admit(addr(2), &rtp(0, 7)),
            Admission::Phone { reply_to: addr(2) }
        );
        assert_eq!(l.admit(addr(1), &rtp(0, 8)), Admission::Stranger);
    }

    #[test]
    fn rtcp_counts_from_the_latched_address_only_and_moves_nothing() {
        let mut l = RtpLatch::new();
        assert_eq!(l.admit(addr(1), &rtp(0xC8, 7)), Admission::Stranger);
        l.admit(addr(1), &rtp(0, 7));
        assert_eq!(
            l.admit(addr(1), &rtp(0xC8, 99)),
            Admission::Phone { reply_to: addr(1) }
        );
        assert_eq!(l.admit(addr(9), &rtp(0xC8, 7)), Admission::Stranger);
        // The RTCP did not replace the latched SSRC.
        assert_eq!(
            l.admit(addr(2), &rtp(0, 7)),
            Admission::Phone { reply_to: addr(2) }
        );
    }

    #[test]
    fn a_reset_latches_anew() {
        let mut l = RtpLatch::new();
        l.admit(addr(1), &rtp(0, 7));
        l.reset();
        assert_eq!(
            l.admit(addr(3), &rtp(0, 8)),
            Admission::Phone { reply_to: addr(3) }
        );
    }
}
