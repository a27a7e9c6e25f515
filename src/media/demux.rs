//! `Demux`: which peer a datagram belongs to. Owns the remote address → peer map, the ICE
//! ufrag → peer map, and each peer's known addresses and ufrags (so forgetting a peer is not
//! a scan of the whole map).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::keys::PeerId;

/// Remote addresses remembered per peer (a client may switch paths, e.g. on ICE restart).
const MAX_PATHS_PER_PEER: usize = 8;

#[derive(Default)]
pub(super) struct Demux {
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    addrs_of: HashMap<PeerId, Vec<SocketAddr>>,
    ufrags_of: HashMap<PeerId, Vec<String>>,
}

impl Demux {
    /// The peer a known remote address belongs to.
    pub(super) fn lookup(&self, addr: SocketAddr) -> Option<PeerId> {
        self.by_addr.get(&addr).copied()
    }

    /// The peer whose local ICE ufrag this is.
    pub(super) fn by_ufrag(&self, ufrag: &str) -> Option<PeerId> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// Our ufrag `ufrag` now names `peer` (a new peer, or an ICE restart).
    pub(super) fn add_ufrag(&mut self, peer: PeerId, ufrag: String) {
        self.by_ufrag.insert(ufrag.clone(), peer);
        self.ufrags_of.entry(peer).or_default().push(ufrag);
    }

    /// `addr` is a path of `peer` from now on. A peer with too many paths forgets them first.
    pub(super) fn learn(&mut self, addr: SocketAddr, peer: PeerId) {
        if let Some(old) = self.by_addr.insert(addr, peer) {
            if old != peer {
                if let Some(list) = self.addrs_of.get_mut(&old) {
                    list.retain(|a| *a != addr);
                }
            }
        }
        let list = self.addrs_of.entry(peer).or_default();
        if list.contains(&addr) {
            return;
        }
        if list.len() >= MAX_PATHS_PER_PEER {
            for old in list.drain(..) {
                self.by_addr.remove(&old);
            }
            self.by_addr.insert(addr, peer);
        }
        list.push(addr);
    }

    /// An address that turned out to lead nowhere.
    pub(super) fn forget_addr(&mut self, addr: SocketAddr) {
        if let Some(peer) = self.by_addr.remove(&addr) {
            if let Some(list) = self.addrs_of.get_mut(&peer) {
                list.retain(|a| *a != addr);
            }
        }
    }

    /// The remote addresses `peer` was reached at.
    pub(super) fn paths(&self, peer: PeerId) -> &[SocketAddr] {
        self.addrs_of.get(&peer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Forgets everything about `peer`; returns the paths it had.
    pub(super) fn forget_peer(&mut self, peer: PeerId) -> Vec<SocketAddr> {
        for ufrag in self.ufrags_of.remove(&peer).unwrap_or_default() {
            if self.by_ufrag.get(&ufrag) == Some(&peer) {
                self.by_ufrag.remove(&ufrag);
            }
        }
        let addrs = self.addrs_of.remove(&peer).unwrap_or_default();
        for addr in &addrs {
            if self.by_addr.get(addr) == Some(&peer) {
                self.by_addr.remove(addr);
            }
        }
        addrs
    }

    /// Counts of the maps (for consistency checks in tests).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.by_addr.len(), self.by_ufrag.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], port))
    }

    #[test]
    fn a_peer_with_too_many_paths_starts_over() {
        let mut d = Demux::default();
        for port in 0..MAX_PATHS_PER_PEER as u16 {
            d.learn(addr(port), 1);
        }
        assert_eq!(d.paths(1).len(), MAX_PATHS_PER_PEER);
        d.learn(addr(100), 1);
        assert_eq!(d.paths(1), &[addr(100)]);
        assert_eq!(d.lookup(addr(0)), None);
        assert_eq!(d.lookup(addr(100)), Some(1));
    }

    #[test]
    fn forgetting_a_peer_leaves_other_peers_alone() {
        let mut d = Demux::default();
        d.add_ufrag(1, "a".into());
        d.add_ufrag(1, "a2".into());
        d.add_ufrag(2, "b".into());
        d.learn(addr(1), 1);
        d.learn(addr(2), 2);
        // An address moving to another peer leaves the first one's list.
        d.learn(addr(3), 1);
        d.learn(addr(3), 2);
        assert_eq!(d.forget_peer(1), vec![addr(1)]);
        assert_eq!(d.by_ufrag("a"), None);
        assert_eq!(d.by_ufrag("b"), Some(2));
        assert_eq!(d.lookup(addr(3)), Some(2));
        assert_eq!(d.sizes(), (2, 1));
    }
}
