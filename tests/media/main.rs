//! Media engine tests, in memory: browser-like str0m clients talk to `patchbay::media::Engine`
//! through a simulated network on a virtual clock (see `peer.rs`). Every assertion is about
//! frames the clients' subscribe connections actually received, decoded to their origin.
//!
//! Frames are synthetic: Opus is opaque to str0m, and for VP8 the first payload byte is a VP8
//! payload header whose P bit marks keyframes (str0m's packetizer adds the payload descriptor
//! and its depacketizer strips it), so the bytes round-trip and `is_keyframe` follows.
//!
//! Run with `cargo test --test media`.
#![allow(clippy::disallowed_methods)] // the harness runs a virtual clock that starts at the real time

mod alias;
mod peer;
mod resume;
mod rtp;
mod shard;

use std::time::Duration;

use patchbay::domain::MediaKinds;
use patchbay::media::{Engine, EngineConfig};
use peer::{Kind, Net, Rules};

/// Three members, all subscribed to the whole session, all publishing audio and video.
fn three_in_session() -> (Net, [usize; 3]) {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    let c = net.add_client("carol", MediaKinds::ALL);
    for x in [a, b, c] {
        net.set_rules(x, Rules::Session);
    }
    for x in [a, b, c] {
        net.publish(x, true, true, None);
    }
    net.run(Duration::from_secs(3));
    (net, [a, b, c])
}

#[test]
fn forwarding_per_table_everyone_gets_the_others_not_itself() {
    let (net, [a, b, c]) = three_in_session();
    net.assert_clean();
    let since = net.now - Duration::from_secs(1);
    for (me, others) in [(a, [b, c]), (b, [a, c]), (c, [a, b])] {
        let client = &net.clients[me];
        for kind in [Kind::Audio, Kind::Video] {
            assert_eq!(
                client.origins(kind, since),
                net.ids(&others),
                "{} {kind:?} origins",
                client.name
            );
        }
        for &o in &others {
            let audio = client.count(net.id(o), Kind::Audio, since);
            assert!(
                audio >= 45,
                "{} got {audio} audio frames from {o} in 1 s",
                client.name
            );
            let video = client.count(net.id(o), Kind::Video, since);
            assert!(
                video >= 8,
                "{} got {video} video frames from {o} in 1 s",
                client.name
            );
        }
        assert_eq!(client.count(net.id(me), Kind::Audio, net.start), 0);
        assert_eq!(client.count(net.id(me), Kind::Video, net.start), 0);
        // Frames arrive on m-lines of their own kind.
        for rx in &client.received {
            let expect = match rx.kind {
                Kind::Audio => str0m::media::MediaKind::Audio,
                Kind::Video => str0m::media::MediaKind::Video,
            };
            assert_eq!(
                rx.mid_kind, expect,
                "{} frame on the wrong m-line",
                client.name
            );
        }
    }
}

#[test]
fn whisper_caller_never_receives_the_supervisor() {
    let mut net = Net::new();
    let caller = net.add_client("caller", MediaKinds::ALL);
    let agent = net.add_client("agent", MediaKinds::ALL);
    let sup = net.add_client("supervisor", MediaKinds::ALL);
    // Streams first, membership second: the other order than `three_in_session`.
    for x in [caller, agent, sup] {
        net.publish(x, true, true, None);
    }
    net.run(Duration::from_millis(500));
    net.set_rules(caller, Rules::Only(vec![agent]));
    net.set_rules(agent, Rules::Session);
    net.set_rules(sup, Rules::Session);
    net.run(Duration::from_secs(3));
    net.assert_clean();

    let since = net.now - Duration::from_secs(1);
    for kind in [Kind::Audio, Kind::Video] {
        assert_eq!(net.clients[caller].origins(kind, since), net.ids(&[agent]));
        assert_eq!(
            net.clients[agent].origins(kind, since),
            net.ids(&[caller, sup])
        );
        assert_eq!(
            net.clients[sup].origins(kind, since),
            net.ids(&[caller, agent])
        );
    }
    // Never, not even transiently.
    let caller_rx = &net.clients[caller];
    assert_eq!(caller_rx.count(net.id(sup), Kind::Audio, net.start), 0);
    assert_eq!(caller_rx.count(net.id(sup), Kind::Video, net.start), 0);
    assert!(net.clients[agent].count(net.id(sup), Kind::Audio, since) >= 45);
    assert!(net.clients[agent].count(net.id(caller), Kind::Audio, since) >= 45);
    // The caller's offers never mention the supervisor.
    let sup_pid = net.clients[sup].participant;
    for (_, offer) in &caller_rx.offers {
        assert!(
            offer
                .stream_metadata
                .values()
                .all(|m| m.participant != sup_pid),
            "caller offered a supervisor stream: {:?}",
            offer.stream_metadata
        );
    }
}

#[test]
fn live_rewire_changes_only_the_affected_subscriber() {
    let (mut net, [a, b, c]) = three_in_session();
    net.assert_clean();
    let offers_before: Vec<usize> = net.clients.iter().map(|x| x.offers.len()).collect();
    let rev_before = net.clients[c].offers.last().unwrap().1.sdp_revision;

    // carol: whole session -> alice only.
    net.set_rules(c, Rules::Only(vec![a]));
    net.run(Duration::from_millis(500));
    net.assert_clean();
    assert_eq!(
        net.clients[a].offers.len(),
        offers_before[a],
        "alice renegotiated"
    );
    assert_eq!(
        net.clients[b].offers.len(),
        offers_before[b],
        "bob renegotiated"
    );
    assert_eq!(
        net.clients[c].offers.len(),
        offers_before[c] + 1,
        "carol: one new offer"
    );
    let offer = &net.clients[c].offers.last().unwrap().1;
    assert_eq!(offer.sdp_revision, rev_before + 1);
    let alice_pid = net.clients[a].participant.to_string();
    assert!(!offer.stream_metadata.is_empty());
    assert!(offer
        .stream_metadata
        .values()
        .all(|m| m.participant.to_string() == alice_pid));
    // Bob's m-lines at carol are now inactive.
    let dirs = peer::sdp_directions(&offer.sdp_offer);
    for mid in net.clients[c].mids_from(net.id(b)) {
        assert_eq!(
            dirs.get(&mid).map(String::as_str),
            Some("inactive"),
            "mid {mid}"
        );
    }

    // After the change settled: only alice reaches carol; bob and alice unchanged.
    let settled = net.now;
    net.run(Duration::from_secs(1));
    net.assert_clean();
    for kind in [Kind::Audio, Kind::Video] {
        assert_eq!(net.clients[c].origins(kind, settled), net.ids(&[a]));
        assert_eq!(net.clients[a].origins(kind, settled), net.ids(&[b, c]));
        assert_eq!(net.clients[b].origins(kind, settled), net.ids(&[a, c]));
    }
    assert_eq!(net.clients[c].count(net.id(b), Kind::Audio, settled), 0);
    assert!(net.clients[c].count(net.id(a), Kind::Audio, settled) >= 45);

    // Two changes before carol answers: one offer outstanding, the second change folded into
    // the next offer, sent only after the answer.
    net.clients[c].auto_answer = false;
    let n = net.clients[c].offers.len();
    let rev = net.clients[c].offers.last().unwrap().1.sdp_revision;
    net.set_rules(c, Rules::Nothing);
    assert_eq!(net.clients[c].offers.len(), n + 1);
    assert_eq!(net.clients[c].offers[n].1.sdp_revision, rev + 1);
    net.run(Duration::from_millis(100));
    net.set_rules(c, Rules::Only(vec![b]));
    net.run(Duration::from_millis(300));
    assert_eq!(
        net.clients[c].offers.len(),
        n + 1,
        "an offer was sent while one is pending"
    );
    net.answer(c);
    assert_eq!(
        net.clients[c].offers.len(),
        n + 2,
        "the folded change is offered after the answer"
    );
    let folded = net.clients[c].offers[n + 1].1.clone();
    assert_eq!(folded.sdp_revision, rev + 2);
    let bob_pid = net.clients[b].participant.to_string();
    assert!(!folded.stream_metadata.is_empty());
    assert!(folded
        .stream_metadata
        .values()
        .all(|m| m.participant.to_string() == bob_pid));
    net.answer(c);
    net.run(Duration::from_millis(500));
    let settled = net.now;
    net.run(Duration::from_secs(1));
    net.assert_clean();
    assert_eq!(net.clients[c].offers.len(), n + 2);
    for kind in [Kind::Audio, Kind::Video] {
        assert_eq!(net.clients[c].origins(kind, settled), net.ids(&[b]));
    }
    assert!(net.clients[c].count(net.id(b), Kind::Audio, settled) >= 45);
    assert_eq!(
        net.clients[a].offers.len(),
        offers_before[a],
        "alice renegotiated"
    );
    assert_eq!(
        net.clients[b].offers.len(),
        offers_before[b],
        "bob renegotiated"
    );
    // Revisions strictly increase for every device.
    for x in &net.clients {
        let revs: Vec<u64> = x.offers.iter().map(|(_, o)| o.sdp_revision).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{}: {revs:?}", x.name);
    }
}

#[test]
fn audio_only_participant_cannot_publish_video() {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let d = net.add_client("dave", MediaKinds::AUDIO);
    net.set_rules(a, Rules::Session);
    net.set_rules(d, Rules::Session);
    net.publish(a, true, true, None);
    let answer = net.publish(d, true, true, Some("dave-cam"));
    let video_lines: Vec<&str> = answer
        .sdp_answer
        .lines()
        .filter(|l| l.starts_with("m=video"))
        .collect();
    assert_eq!(video_lines.len(), 1, "{}", answer.sdp_answer);
    assert!(
        video_lines[0].starts_with("m=video 0 "),
        "video not rejected: {}",
        video_lines[0]
    );
    let msid = net.clients[d].msid.clone();
    let meta = answer
        .stream_metadata
        .get(&msid)
        .expect("stream metadata for the msid");
    assert_eq!(meta.kinds, MediaKinds::AUDIO);
    assert_eq!(meta.alias.as_ref().map(|a| a.as_str()), Some("dave-cam"));

    net.run(Duration::from_secs(3));
    net.assert_clean();
    let since = net.now - Duration::from_secs(1);
    let alice = &net.clients[a];
    assert!(alice.count(net.id(d), Kind::Audio, since) >= 45);
    assert_eq!(alice.count(net.id(d), Kind::Video, net.start), 0);
    // Dave's client tried: its video m-line was refused, so nothing went out.
    assert_eq!(net.clients[d].video_written, 0);
    let dave_pid = net.clients[d].participant;
    for (_, offer) in &alice.offers {
        for m in offer
            .stream_metadata
            .values()
            .filter(|m| m.participant == dave_pid)
        {
            assert_eq!(m.kinds, MediaKinds::AUDIO);
        }
    }
    // Dave still receives alice's audio and video (subscribing is not publishing).
    assert!(net.clients[d].count(net.id(a), Kind::Video, since) >= 8);
    let streams = net.streams_changed();
    let (_, _, _, dave_streams) = streams
        .iter()
        .rev()
        .find(|s| s.2 == net.clients[d].participant)
        .expect("dave's streams");
    assert_eq!(dave_streams.len(), 1);
    assert_eq!(dave_streams[0].kinds, MediaKinds::AUDIO);
}

/// Alice publishes alone for a while; bob then joins and subscribes to her video.
fn late_video_subscriber(latency: Duration) -> (Net, usize, usize, std::time::Instant) {
    let mut net = Net::new();
    net.latency = latency;
    let a = net.add_client("alice", MediaKinds::ALL);
    net.set_rules(a, Rules::Session);
    net.publish(a, true, true, None);
    net.run(Duration::from_secs(2));
    assert!(net.clients[a].video_written > 10, "alice is sending video");
    assert!(
        net.clients[a].keyframe_requests.is_empty(),
        "nobody asked for a keyframe yet"
    );
    let b = net.add_client("bob", MediaKinds::ALL);
    let joined = net.now;
    net.set_rules(b, Rules::Session);
    (net, a, b, joined)
}

#[test]
fn newly_negotiated_video_track_requests_a_keyframe_from_the_publisher() {
    let (mut net, a, b, joined) = late_video_subscriber(Duration::from_millis(2));
    assert_eq!(
        net.clients[b].offers.len(),
        1,
        "bob was offered alice's tracks"
    );
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let alice = &net.clients[a];
    let video_mid = alice.video_mid.unwrap();
    let requests: Vec<_> = alice
        .keyframe_requests
        .iter()
        .filter(|(at, mid, _)| *at >= joined && *mid == video_mid)
        .collect();
    assert!(
        !requests.is_empty(),
        "alice's video got no keyframe request after bob's answer"
    );
    assert!(net.clients[b].count(net.id(a), Kind::Video, joined) > 5);
}

#[test]
fn new_video_subscriber_receives_a_keyframe_without_asking() {
    // The keyframe the engine asks for on bob's behalf must be one bob can receive: bob's
    // client never sends PLI here, and alice only sends keyframes when asked (after her first
    // frame, long before bob joined). With a 25 ms one-way delay, bob's subscribe connection
    // (ICE, then DTLS with the engine as client) takes several round trips to come up, longer
    // than alice takes to answer the engine's keyframe request.
    let (mut net, a, b, joined) = late_video_subscriber(Duration::from_millis(25));
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let bob = &net.clients[b];
    let from_alice: Vec<_> = bob
        .rx_since(joined)
        .filter(|r| r.origin == net.id(a) && r.kind == Kind::Video)
        .collect();
    assert!(from_alice.len() > 5, "bob receives alice's video");
    assert!(
        from_alice.iter().any(|r| r.keyframe && r.str0m_keyframe),
        "bob received {} video frames from alice, none a keyframe (alice got keyframe requests at {:?} after bob joined at +{:?}; bob's subscribe connection came up at about +{:?})",
        from_alice.len(),
        net.clients[a]
            .keyframe_requests
            .iter()
            .map(|(t, ..)| *t - net.start)
            .collect::<Vec<_>>(),
        joined - net.start,
        from_alice.first().map(|r| r.at - net.start),
    );
}

#[test]
fn subscriber_pli_reaches_the_publisher() {
    let (mut net, a, b, _) = late_video_subscriber(Duration::from_millis(2));
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let before = net.clients[a].keyframe_requests.len();
    let rx_mid = net.clients[b]
        .received
        .iter()
        .rev()
        .find(|r| r.origin == net.id(a) && r.kind == Kind::Video)
        .expect("bob receives alice's video")
        .mid;
    let asked = net.now;
    {
        let bob = &mut net.clients[b];
        let mut writer = bob
            .subscribe
            .writer(rx_mid)
            .expect("a writer for the receiving mid");
        assert!(writer.is_request_keyframe_possible(str0m::media::KeyframeRequestKind::Pli));
        writer
            .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
            .expect("bob requests a keyframe");
    }
    // The request leaves bob's Rtc on its next poll.
    net.clients[b].sub_timeout = net.now;
    net.run(Duration::from_millis(500));
    net.assert_clean();
    let alice = &net.clients[a];
    let video_mid = alice.video_mid.unwrap();
    let after: Vec<_> = alice.keyframe_requests[before..]
        .iter()
        .filter(|(at, mid, _)| *at >= asked && *mid == video_mid)
        .collect();
    assert_eq!(after.len(), 1, "bob's PLI reaches alice once: {after:?}");
    assert_eq!(after[0].2, str0m::media::KeyframeRequestKind::Pli);
    // And the keyframe alice sends in response reaches bob.
    assert!(net.clients[b]
        .rx_since(after[0].0)
        .any(|r| r.origin == net.id(a) && r.kind == Kind::Video && r.keyframe));
}

#[test]
fn removed_publisher_goes_away_for_its_subscribers() {
    let (mut net, [a, b, c]) = three_in_session();
    net.assert_clean();
    let offers_before: Vec<usize> = net.clients.iter().map(|x| x.offers.len()).collect();
    let alice_mids: Vec<_> = [b, c]
        .iter()
        .map(|&x| net.clients[x].mids_from(net.id(a)))
        .collect();
    assert!(
        alice_mids.iter().all(|m| m.len() == 2),
        "alice's audio and video at bob and carol"
    );
    let removed = net.now;
    net.remove_device(a);
    // StreamsChanged with no streams, for alice's device.
    let changed = net.streams_changed();
    let last = changed.last().expect("a StreamsChanged");
    assert_eq!(last.0, removed);
    assert_eq!(last.1, net.clients[a].device);
    assert_eq!(last.2, net.clients[a].participant);
    assert!(last.3.is_empty());
    net.run(Duration::from_millis(500));
    // Bob and carol each get one offer where alice's m-lines are inactive.
    for (i, &x) in [b, c].iter().enumerate() {
        let client = &net.clients[x];
        assert_eq!(client.offers.len(), offers_before[x] + 1, "{}", client.name);
        let offer = &client.offers.last().unwrap().1;
        let dirs = peer::sdp_directions(&offer.sdp_offer);
        for mid in &alice_mids[i] {
            let dir = dirs.get(mid).map(String::as_str);
            assert!(
                matches!(dir, Some("inactive" | "rejected")),
                "{}: alice's mid {mid} is {dir:?}",
                client.name
            );
        }
        let alice_pid = net.clients[a].participant.to_string();
        assert!(offer
            .stream_metadata
            .values()
            .all(|m| m.participant.to_string() != alice_pid));
    }
    let settled = net.now;
    net.run(Duration::from_secs(1));
    net.assert_clean();
    // Alice's client keeps sending into the void; nothing of hers arrives anywhere.
    assert!(net.clients[a].audio_sent > 0);
    for (x, other) in [(b, c), (c, b)] {
        let client = &net.clients[x];
        assert_eq!(
            client.count(net.id(a), Kind::Audio, settled),
            0,
            "{}",
            client.name
        );
        assert_eq!(
            client.count(net.id(a), Kind::Video, settled),
            0,
            "{}",
            client.name
        );
        assert!(
            client.count(net.id(other), Kind::Audio, settled) >= 45,
            "{}",
            client.name
        );
    }
    // Nothing reaches the removed device either.
    assert_eq!(net.clients[a].rx_since(settled).count(), 0);
}

/// A small deterministic PRNG (xorshift64*), so garbage is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Random bytes that look, by their first byte, like STUN, DTLS, RTP/RTCP or nothing.
    fn datagram(&mut self) -> Vec<u8> {
        let len = match self.below(4) {
            0 => self.below(4),
            1 => self.below(40),
            _ => self.below(1500),
        };
        let mut data = self.bytes(len);
        if let Some(first) = data.first_mut() {
            *first = match self.below(4) {
                0 => self.below(2) as u8,        // STUN
                1 => 20 + self.below(44) as u8,  // DTLS
                2 => 128 + self.below(64) as u8, // RTP / RTCP
                _ => *first,
            };
        }
        match self.below(3) {
            0 if data.len() >= 8 => {
                // A STUN header with the magic cookie, garbage after it.
                data[0] = 0;
                data[1] = 1;
                data[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            1 if data.len() >= 13 => {
                // A DTLS 1.2 record header (alert, handshake or application data, epoch 0
                // or 1) with the right length, garbage inside.
                data[0] = [21, 22, 23][self.below(3)];
                data[1..3].copy_from_slice(&[0xFE, 0xFD]);
                data[3..5].copy_from_slice(&[0, self.below(2) as u8]);
                let len = (data.len() - 13) as u16;
                data[11..13].copy_from_slice(&len.to_be_bytes());
            }
            _ => {}
        }
        data
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed STUN binding request naming `username`, with a wrong MESSAGE-INTEGRITY and a
/// correct FINGERPRINT.
fn forged_binding_request(rng: &mut Rng, username: &str) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&rng.bytes(12));
    attr(&mut m, 0x0006, username.as_bytes());
    attr(&mut m, 0x0024, &0x6E00_01FFu32.to_be_bytes()); // PRIORITY
    attr(&mut m, 0x0025, &[]); // USE-CANDIDATE
    attr(&mut m, 0x8029, &rng.bytes(8)); // ICE-CONTROLLING
    attr(&mut m, 0x0008, &rng.bytes(20)); // MESSAGE-INTEGRITY (wrong)
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let fp = crc32(&m) ^ 0x5354_554E;
    attr(&mut m, 0x8028, &fp.to_be_bytes());
    m
}

/// The `a=ice-ufrag` of an SDP.
fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag")
        .to_owned()
}

/// Alice and bob in a call, the wire tapped.
fn call_of_two() -> (Net, usize, usize) {
    let mut net = Net::new();
    net.tap = Some(Vec::new());
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    net.set_rules(a, Rules::Session);
    net.set_rules(b, Rules::Session);
    net.publish(a, true, true, None);
    net.publish(b, true, true, None);
    net.run(Duration::from_secs(2));
    net.assert_clean();
    (net, a, b)
}

/// The call still works: each side receives the other's audio and video in the last second,
/// and both clients' connections are up.
fn assert_call_intact(net: &mut Net, a: usize, b: usize) {
    let forwarded = net.engine.forwarded();
    let since = net.now;
    net.run(Duration::from_secs(1));
    net.assert_clean();
    for (x, o) in [(a, b), (b, a)] {
        let c = &net.clients[x];
        assert!(c.pub_connected && c.sub_connected, "{}", c.name);
        assert!(
            c.publish.is_connected(),
            "{} publish connection dropped",
            c.name
        );
        assert!(
            c.subscribe.is_connected(),
            "{} subscribe connection dropped",
            c.name
        );
        let audio = c.count(net.id(o), Kind::Audio, since);
        assert!(
            audio >= 45,
            "{} received {audio} audio frames in the last second",
            c.name
        );
        assert!(c.count(net.id(o), Kind::Video, since) >= 8, "{}", c.name);
    }
    assert!(net.engine.forwarded() > forwarded + 90);
}

#[test]
fn garbage_from_unknown_addresses_is_ignored() {
    let (mut net, a, b) = call_of_two();
    let mut rng = Rng(0x5EED_0F6A_5BA6_E001);
    let engine_ufrags: Vec<String> = [a, b]
        .iter()
        .map(|&x| ufrag(&net.clients[x].last_answer.as_ref().unwrap().sdp_answer))
        .chain(net.clients.iter().map(|c| ufrag(&c.offers[0].1.sdp_offer)))
        .collect();
    let stun: Vec<Vec<u8>> = net
        .tap
        .as_ref()
        .unwrap()
        .iter()
        .filter(|d| d.data.first().is_some_and(|&b| b < 2))
        .map(|d| d.data.clone())
        .collect();
    assert!(!stun.is_empty(), "the tap saw STUN");
    for round in 0..100u32 {
        for i in 0..20u32 {
            let from: std::net::SocketAddr = if i % 5 == 0 {
                format!("[2001:db8::{round:x}]:{}", 1024 + i)
                    .parse()
                    .unwrap()
            } else {
                format!(
                    "10.99.{}.{}:{}",
                    rng.below(256),
                    rng.below(256),
                    1024 + rng.below(60000)
                )
                .parse()
                .unwrap()
            };
            let data = match rng.below(4) {
                0 => {
                    // A real STUN request, truncated.
                    let s = &stun[rng.below(stun.len())];
                    s[..rng.below(s.len())].to_vec()
                }
                1 => {
                    let u = &engine_ufrags[rng.below(engine_ufrags.len())];
                    let name = if rng.below(2) == 0 {
                        format!("{u}:someone")
                    } else {
                        "nosuchufrag:x".into()
                    };
                    forged_binding_request(&mut rng, &name)
                }
                _ => rng.datagram(),
            };
            net.inject(from, &data);
        }
        net.run(Duration::from_millis(10));
    }
    assert_call_intact(&mut net, a, b);
}

#[test]
fn garbage_from_connected_addresses_does_not_drop_the_call() {
    // Datagrams with the source address of a live connection: duplicates and truncations of
    // what the clients really sent (networks duplicate and cut packets), forged STUN, and
    // random bytes (anyone can spoof a UDP source address).
    let (mut net, a, b) = call_of_two();
    let mut rng = Rng(0xC0FF_EE00_1234_5678);
    let tapped = net.tap.take().unwrap();
    let sources: Vec<std::net::SocketAddr> = [a, b]
        .iter()
        .flat_map(|&x| [net.clients[x].pub_addr, net.clients[x].sub_addr])
        .collect();
    let engine_ufrags: Vec<String> = [a, b]
        .iter()
        .map(|&x| ufrag(&net.clients[x].last_answer.as_ref().unwrap().sdp_answer))
        .collect();
    for _ in 0..100 {
        for _ in 0..10 {
            let (from, data) = match rng.below(5) {
                0 => {
                    let d = &tapped[rng.below(tapped.len())];
                    (d.from, d.data.clone())
                }
                1 => {
                    let d = &tapped[rng.below(tapped.len())];
                    (d.from, d.data[..rng.below(d.data.len())].to_vec())
                }
                2 => {
                    let u = &engine_ufrags[rng.below(engine_ufrags.len())];
                    (
                        sources[rng.below(sources.len())],
                        forged_binding_request(&mut rng, &format!("{u}:x")),
                    )
                }
                _ => (sources[rng.below(sources.len())], rng.datagram()),
            };
            net.inject(from, &data);
        }
        net.run(Duration::from_millis(10));
    }
    assert_call_intact(&mut net, a, b);
}

#[test]
fn garbage_during_connection_setup_does_not_break_it() {
    // Random bytes from the clients' own addresses while ICE and DTLS are still running.
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    net.set_rules(a, Rules::Session);
    net.set_rules(b, Rules::Session);
    net.publish(a, true, true, None);
    net.publish(b, true, true, None);
    let mut rng = Rng(0xDEAD_BEEF_0BAD_F00D);
    let sources: Vec<std::net::SocketAddr> = [a, b]
        .iter()
        .flat_map(|&x| [net.clients[x].pub_addr, net.clients[x].sub_addr])
        .collect();
    for _ in 0..500 {
        let from = sources[rng.below(sources.len())];
        let data = rng.datagram();
        net.inject(from, &data);
        net.run(Duration::from_millis(1));
    }
    net.run(Duration::from_secs(1));
    assert_call_intact(&mut net, a, b);
}

#[test]
fn publishers_with_the_same_msid_stay_distinct_streams_for_subscribers() {
    // Stream ids are chosen by devices, so two publishers may use the same one (the compiler
    // keys routes by publisher and stream for that reason). A subscriber must still see two
    // MediaStreams, each attributed to its own participant in `stream_metadata`.
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    let c = net.add_client("carol", MediaKinds::ALL);
    for x in [a, b] {
        net.clients[x].msid = "cam".to_owned();
    }
    for x in [a, b, c] {
        net.set_rules(x, Rules::Session);
    }
    net.publish(a, true, true, Some("cam"));
    net.publish(b, true, true, Some("cam"));
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let since = net.now - Duration::from_secs(1);
    let carol = &net.clients[c];
    assert_eq!(carol.origins(Kind::Audio, since), net.ids(&[a, b]));
    let offer = &carol.offers.last().unwrap().1;
    let mut seen: Vec<(String, Vec<&str>)> = offer
        .stream_metadata
        .values()
        .map(|m| {
            (
                m.participant.to_string(),
                m.kinds.iter().map(|k| k.as_str()).collect(),
            )
        })
        .collect();
    seen.sort();
    let mut expect: Vec<(String, Vec<&str>)> = [a, b]
        .iter()
        .map(|&x| {
            (
                net.clients[x].participant.to_string(),
                vec!["AUDIO", "VIDEO"],
            )
        })
        .collect();
    expect.sort();
    assert_eq!(
        seen, expect,
        "stream metadata: {:#?}",
        offer.stream_metadata
    );
    // Each received frame's MediaStream is attributed to the participant that sent it.
    for rx in carol.rx_since(since) {
        let origin = net.clients.iter().find(|x| x.idx == rx.origin).unwrap();
        let meta = offer.stream_metadata.get(&rx.stream_id);
        assert_eq!(
            meta.map(|m| m.participant.to_string()),
            Some(origin.participant.to_string()),
            "a frame from {} arrived in MediaStream {:?}",
            origin.name,
            rx.stream_id
        );
    }
}

#[test]
fn publisher_adding_and_stopping_a_track_rewires_its_subscribers() {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    net.set_rules(a, Rules::Session);
    net.set_rules(b, Rules::Session);
    net.publish(a, true, false, None);
    net.publish(b, true, false, None);
    net.run(Duration::from_secs(2));
    net.assert_clean();
    assert_eq!(net.clients[b].count(net.id(a), Kind::Video, net.start), 0);
    assert!(net.clients[b].count(net.id(a), Kind::Audio, net.start) > 50);
    let bob_offers = net.clients[b].offers.len();
    let alice_offers = net.clients[a].offers.len();

    // Alice adds a camera to her stream.
    let (video, answer) = net.republish(a, None, |api, msid| {
        Some(api.add_media(
            str0m::media::MediaKind::Video,
            str0m::media::Direction::SendOnly,
            Some(msid.to_owned()),
            Some(format!("{msid}-video")),
            None,
        ))
    });
    let msid = net.clients[a].msid.clone();
    assert_eq!(answer.stream_metadata[&msid].kinds, MediaKinds::ALL);
    net.clients[a].video_mid = video;
    net.clients[a].force_keyframe = true;
    let added = net.now;
    net.run(Duration::from_secs(2));
    net.assert_clean();
    assert_eq!(
        net.clients[b].offers.len(),
        bob_offers + 1,
        "bob is offered alice's video"
    );
    assert_eq!(
        net.clients[a].offers.len(),
        alice_offers,
        "alice's subscriptions did not change"
    );
    assert!(net.clients[b].count(net.id(a), Kind::Video, added) >= 15);
    assert!(net.clients[b].count(net.id(a), Kind::Audio, added) >= 90);

    // Alice stops her camera (the m-line goes inactive).
    let video_mid = video.unwrap();
    let (_, answer) = net.republish(a, None, |api, _| {
        api.set_direction(video_mid, str0m::media::Direction::Inactive);
        None
    });
    assert_eq!(answer.stream_metadata[&msid].kinds, MediaKinds::AUDIO);
    net.run(Duration::from_millis(500));
    assert_eq!(net.clients[b].offers.len(), bob_offers + 2);
    let offer = &net.clients[b].offers.last().unwrap().1;
    let dirs = peer::sdp_directions(&offer.sdp_offer);
    let bob_video_mids: Vec<String> = net.clients[b]
        .received
        .iter()
        .filter(|r| r.origin == net.id(a) && r.kind == Kind::Video)
        .map(|r| r.mid.to_string())
        .collect();
    assert!(!bob_video_mids.is_empty());
    for mid in &bob_video_mids {
        assert_eq!(
            dirs.get(mid).map(String::as_str),
            Some("inactive"),
            "mid {mid}"
        );
    }
    let settled = net.now;
    net.run(Duration::from_secs(1));
    net.assert_clean();
    assert_eq!(net.clients[b].count(net.id(a), Kind::Video, settled), 0);
    assert!(net.clients[b].count(net.id(a), Kind::Audio, settled) >= 45);
}

#[test]
fn reconnecting_device_replaces_the_old_one() {
    let (mut net, [a, b, c]) = three_in_session();
    net.assert_clean();
    let old = net.clients[a].device;
    let offers_b = net.clients[b].offers.len();
    let replaced = net.reconnect(a);
    assert_eq!(replaced, Some(old));
    // The old device's streams went away...
    let changed = net.streams_changed();
    let last = changed.last().unwrap();
    assert_eq!((last.1, last.3.len()), (old, 0));
    // ...and the new device is offered what alice's rules say, with no route change.
    assert_eq!(
        net.clients[a].offers.len(),
        1,
        "the new device gets its first offer"
    );
    assert_eq!(net.clients[a].offers[0].1.sdp_revision, 1);
    net.publish(a, true, true, None);
    let back = net.now;
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let since = net.now - Duration::from_secs(1);
    for kind in [Kind::Audio, Kind::Video] {
        assert_eq!(net.clients[a].origins(kind, since), net.ids(&[b, c]));
        assert_eq!(net.clients[b].origins(kind, since), net.ids(&[a, c]));
        assert_eq!(net.clients[c].origins(kind, since), net.ids(&[a, b]));
    }
    // Bob renegotiated (alice's tracks went inactive, then live again).
    assert!(net.clients[b].offers.len() > offers_b);
    // Bob gets a keyframe of alice's new video without asking.
    assert!(net.clients[b]
        .rx_since(back)
        .any(|r| r.origin == net.id(a) && r.kind == Kind::Video && r.keyframe));
}

#[test]
fn ice_restart_of_the_publish_connection_keeps_the_call() {
    let (mut net, a, b) = call_of_two();
    let before = net.clients[a].last_answer.clone().expect("an answer");
    let (_, after) = net.republish(a, None, |api, _| {
        api.ice_restart(true);
        None
    });
    assert_ne!(
        ufrag(&before.sdp_answer),
        ufrag(&after.sdp_answer),
        "the engine answers an ICE restart with new credentials"
    );
    net.run(Duration::from_secs(1));
    assert_call_intact(&mut net, a, b);
}

#[test]
fn resynchronizing_from_full_tables_converges() {
    let (mut net, a, b) = call_of_two();
    // As if every update had been missed: the engine is told the sessions have no routes...
    net.engine
        .set_all_routes(&std::collections::HashMap::new(), net.now);
    net.pump(); // the clients answer the new offers by themselves
    net.run(Duration::from_secs(1));
    let since = net.now;
    net.run(Duration::from_secs(1));
    assert_eq!(
        net.clients[a].rx_since(since).count(),
        0,
        "no routes, no media"
    );
    // ...then the real tables again: the call comes back.
    let tables = [(net.control.session, net.control.table.clone())]
        .into_iter()
        .collect();
    net.engine.set_all_routes(&tables, net.now);
    net.pump();
    net.run(Duration::from_secs(1));
    assert_call_intact(&mut net, a, b);
}

#[test]
fn device_moved_to_another_engine_keeps_its_call() {
    // What a shard does when a session's devices move to the session's shard: the peer
    // connections travel as they are, and media flows again with no new handshake.
    let (mut net, a, b) = call_of_two();
    let config = EngineConfig::generate(net.engine_addr).expect("engine config");
    let mut other = Engine::new(config);
    let tables = [(net.control.session, net.control.table.clone())]
        .into_iter()
        .collect();
    other.set_all_routes(&tables, net.now);
    for client in [a, b] {
        let device = net.clients[client].device;
        let moved = net.engine.export_device(device, net.now).expect("device");
        assert_eq!(moved.id(), device);
        assert!(moved.paths().count() >= 2, "both peers' paths move along");
        assert_eq!(other.import_device(moved, net.now), None);
    }
    let offers = |net: &Net| -> usize { [a, b].iter().map(|&c| net.clients[c].offers.len()).sum() };
    let (offers_before, streams_before) = (offers(&net), net.streams_changed().len());
    net.engine = other;
    net.pump();
    net.run(Duration::from_secs(1));
    assert_call_intact(&mut net, a, b);
    assert_eq!(offers(&net), offers_before, "nothing to renegotiate");
    assert_eq!(
        net.streams_changed().len(),
        streams_before,
        "streams stay published"
    );
}

#[test]
fn publisher_moved_away_is_not_forwarded_here_and_resumes_when_back() {
    let (mut net, a, b) = call_of_two();
    let device = net.clients[a].device;
    let offers_before = net.clients[b].offers.len();
    let moved = net.engine.export_device(device, net.now).expect("device");
    // Bob stays; alice's device is elsewhere for a moment: nothing of hers is forwarded here,
    // and bob keeps his tracks (her routes still exist), so he is not renegotiated.
    let since = net.now;
    net.run(Duration::from_millis(200));
    assert_eq!(
        net.clients[b].count(net.id(a), Kind::Audio, since),
        0,
        "a publisher that moved away is not forwarded here"
    );
    assert_eq!(net.clients[b].offers.len(), offers_before);
    // Her device comes back: bob receives her again. (Not `assert_call_intact`: the packets
    // dropped meanwhile are a loss, and frames repaired by retransmission may arrive late.)
    assert_eq!(net.engine.import_device(moved, net.now), None);
    net.pump();
    net.run(Duration::from_secs(1));
    let since = net.now;
    net.run(Duration::from_secs(1));
    for (x, o) in [(a, b), (b, a)] {
        let c = &net.clients[x];
        assert!(
            c.publish.is_connected() && c.subscribe.is_connected(),
            "{}",
            c.name
        );
        assert!(c.count(net.id(o), Kind::Audio, since) >= 45, "{}", c.name);
        assert!(c.count(net.id(o), Kind::Video, since) >= 8, "{}", c.name);
    }
}

#[test]
fn phone_is_heard_by_browsers_and_hears_exactly_its_subscriptions() {
    let (mut net, [a, b, c]) = three_in_session();
    // The phone (a local device) subscribes to alice only: a whisper-like rule.
    let (phone_participant, phone) = net.add_phone(Rules::Only(vec![a]));
    const PHONE: u8 = 200;
    let since = net.now;
    for n in 0..50u32 {
        let data = peer::frame(PHONE, Kind::Audio, n, false);
        net.engine
            .write_local(phone, u64::from(n) * 960, data, None, net.now);
        net.pump();
        net.run(Duration::from_millis(20));
    }
    net.assert_clean();
    for x in [a, b, c] {
        let got = net.clients[x].count(PHONE, Kind::Audio, since);
        assert!(
            got >= 40,
            "{} heard {got} of 50 phone frames",
            net.clients[x].name
        );
        assert_eq!(net.clients[x].count(PHONE, Kind::Video, since), 0);
    }
    // What the phone received: alice's audio only (no video, not bob or carol, not itself).
    let origins: std::collections::BTreeSet<(u8, peer::Kind)> = net
        .local_frames
        .iter()
        .filter(|(at, d, _, dtmf, _)| *d == phone && *at >= since && !dtmf)
        .filter_map(|(_, _, _, _, data)| peer::decode(data).map(|(o, k, _, _)| (o, k)))
        .collect();
    assert_eq!(
        origins,
        [(net.id(a), Kind::Audio)].into_iter().collect(),
        "the phone receives exactly alice's audio"
    );
    assert_eq!(net.local_sources.get(&phone).map(Vec::len), Some(1));
    // Re-wired to the whole session: bob and carol come in, live.
    net.set_phone_rules(phone_participant, Rules::Session);
    let since = net.now;
    net.run(Duration::from_millis(500));
    let origins: std::collections::BTreeSet<u8> = net
        .local_frames
        .iter()
        .filter(|(at, d, _, _, _)| *d == phone && *at >= since)
        .filter_map(|(_, _, _, _, data)| peer::decode(data).map(|(o, _, _, _)| o))
        .collect();
    assert_eq!(origins, net.ids(&[a, b, c]));
    assert_eq!(net.local_sources.get(&phone).map(Vec::len), Some(3));
}

#[test]
fn browser_dtmf_reaches_a_phone_subscribed_to_it() {
    let (mut net, [a, b, _]) = three_in_session();
    let (_, phone) = net.add_phone(Rules::Only(vec![a]));
    net.run(Duration::from_millis(300));
    let since = net.now;
    // Alice presses 5 (event 5, end bit, volume 10, 100 ms); bob presses 9: the phone does
    // not receive bob.
    net.clients[a]
        .dtmf
        .push_back(vec![5, 0x80 | 10, 0x03, 0x20]);
    net.clients[b]
        .dtmf
        .push_back(vec![9, 0x80 | 10, 0x03, 0x20]);
    net.run(Duration::from_millis(300));
    let events: Vec<Vec<u8>> = net
        .local_frames
        .iter()
        .filter(|(at, d, _, dtmf, _)| *d == phone && *at >= since && *dtmf)
        .map(|(_, _, _, _, data)| data.clone())
        .collect();
    assert_eq!(
        events,
        vec![vec![5, 0x80 | 10, 0x03, 0x20]],
        "alice's key only"
    );
}
