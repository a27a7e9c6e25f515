//! Packet forwarding (issue #13): what subscribers see on the wire. The harness records the
//! clear-text RTP header of every SRTP packet delivered to a subscribe connection
//! (`Net::wire`), so these tests check sequence numbers, timestamps and SSRCs as a receiver
//! gets them, and the keyframe requests publishers actually receive.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use patchbay::domain::MediaKinds;
use patchbay::media::KEYFRAME_REQUEST_INTERVAL;
use str0m::media::KeyframeRequestKind;

use super::peer::{Kind, Net, Rules, WireRtp};

/// The payload types of retransmissions (RFC 4588) on `client`'s subscribe connection.
fn rtx_payload_types(net: &Net, client: usize) -> BTreeSet<u8> {
    net.clients[client]
        .subscribe
        .codec_config()
        .params()
        .iter()
        .filter_map(|p| p.resend().map(|pt| *pt))
        .collect()
}

/// The packets `client` received, per SSRC, in delivery order.
fn streams_of(net: &Net, client: usize) -> BTreeMap<u32, Vec<WireRtp>> {
    let mut out: BTreeMap<u32, Vec<WireRtp>> = BTreeMap::new();
    for w in net.wire.iter().filter(|w| w.client == client) {
        out.entry(w.ssrc).or_default().push(*w);
    }
    out
}

/// Every media stream a client receives is one RTP stream: each packet's sequence number is
/// the previous one's plus one (the harness loses nothing), and timestamps never go backwards.
/// Retransmission streams are left out: a resent packet keeps its old timestamp, and a
/// subscriber's bandwidth estimator probes with resends and padding there.
fn assert_continuous(net: &Net, client: usize) {
    let rtx = rtx_payload_types(net, client);
    for (ssrc, packets) in streams_of(net, client) {
        if packets.iter().any(|p| rtx.contains(&p.pt)) {
            continue;
        }
        for pair in packets.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(
                b.seq,
                a.seq.wrapping_add(1),
                "{}: SSRC {ssrc:08x} jumps from {} to {}",
                net.clients[client].name,
                a.seq,
                b.seq
            );
            let step = b.ts.wrapping_sub(a.ts);
            assert!(
                step < u32::MAX / 2,
                "{}: SSRC {ssrc:08x} timestamp goes back from {} to {}",
                net.clients[client].name,
                a.ts,
                b.ts
            );
        }
    }
}

/// The SSRC on which `client` receives `origin`'s frames of `kind` (through the m-line the
/// frames arrived on).
fn ssrc_of(
    net: &mut Net,
    client: usize,
    origin: usize,
    kind: Kind,
    since: std::time::Instant,
) -> u32 {
    let id = net.id(origin);
    let mid = net.clients[client]
        .rx_since(since)
        .find(|r| r.origin == id && r.kind == kind)
        .map(|r| r.mid)
        .expect("frames of the origin");
    let ssrc = net.clients[client]
        .subscribe
        .direct_api()
        .stream_rx_by_mid(mid, None)
        .map(|s| *s.ssrc())
        .expect("a receive stream for the m-line");
    ssrc
}

#[test]
fn a_subscriber_stream_stays_continuous_across_the_publishers_reconnect() {
    let (mut net, a, b) = super::call_of_two();
    let before = net.now - Duration::from_secs(1);
    let audio_before = ssrc_of(&mut net, b, a, Kind::Audio, before);
    let last_before = *net
        .wire
        .iter()
        .rev()
        .find(|w| w.client == b && w.ssrc == audio_before)
        .expect("alice's audio on the wire");

    // Alice's device reconnects: new connections, new SSRCs, new sequence numbers.
    net.reconnect(a);
    net.publish(a, true, true, None);
    let back = net.now;
    net.run(Duration::from_secs(2));
    net.assert_clean();
    assert!(net.clients[b].count(net.id(a), Kind::Audio, back) >= 45);
    assert!(net.clients[b].count(net.id(a), Kind::Video, back) >= 8);

    // Bob receives alice on the same m-lines and SSRCs as before, numbered on.
    let audio_after = ssrc_of(&mut net, b, a, Kind::Audio, back);
    assert_eq!(
        audio_after, audio_before,
        "alice's audio reaches bob on the same stream"
    );
    assert_continuous(&net, b);
    assert_continuous(&net, a);
    let first_after = *net
        .wire
        .iter()
        .find(|w| w.client == b && w.ssrc == audio_before && w.at > last_before.at)
        .expect("alice's audio after the reconnect");
    // The timestamp moved on by about the wall-clock time between the two packets.
    let gap = first_after.at - last_before.at;
    let expected = gap.as_secs_f64() * 48_000.0;
    let step = f64::from(first_after.ts.wrapping_sub(last_before.ts));
    assert!(
        (step - expected).abs() < 0.02 * 48_000.0,
        "timestamp step {step} for a gap of {gap:?}"
    );
    // Alice's publisher SSRCs changed (a new connection), so the rewrite did the work.
    let alice_mid = net.clients[a].audio_mid.expect("alice's audio m-line");
    let alice_ssrc = net.clients[a]
        .publish
        .direct_api()
        .stream_tx_by_mid(alice_mid, None)
        .map(|s| *s.ssrc());
    assert!(alice_ssrc.is_some());
    assert_ne!(alice_ssrc, Some(audio_before));
}

#[test]
fn keyframe_requests_of_many_subscribers_become_one() {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let watchers: Vec<usize> = (0..5)
        .map(|i| net.add_client(&format!("watcher{i}"), MediaKinds::ALL))
        .collect();
    net.set_rules(a, Rules::Nothing);
    for &w in &watchers {
        net.set_rules(w, Rules::Session);
    }
    net.publish(a, true, true, None);
    net.run(Duration::from_secs(3));
    net.assert_clean();
    let video_mid = net.clients[a].video_mid.expect("alice publishes video");
    let since = net.now - Duration::from_secs(1);
    let mids: Vec<_> = watchers
        .iter()
        .map(|&w| {
            net.clients[w]
                .rx_since(since)
                .find(|r| r.origin == net.id(a) && r.kind == Kind::Video)
                .map(|r| r.mid)
                .expect("each watcher receives alice's video")
        })
        .collect();

    // All five ask at once, twice, 50 ms apart.
    let asked = net.now;
    let before = net.clients[a].keyframe_requests.len();
    for _ in 0..2 {
        for (&w, &mid) in watchers.iter().zip(&mids) {
            let client = &mut net.clients[w];
            client
                .subscribe
                .writer(mid)
                .expect("a writer for the receiving m-line")
                .request_keyframe(None, KeyframeRequestKind::Pli)
                .expect("the watcher asks for a keyframe");
            client.sub_timeout = net.now;
        }
        net.run(Duration::from_millis(50));
    }
    net.run(Duration::from_millis(100));
    net.assert_clean();
    let got: Vec<_> = net.clients[a].keyframe_requests[before..]
        .iter()
        .filter(|(at, mid, _)| *at >= asked && *mid == video_mid)
        .collect();
    assert_eq!(
        got.len(),
        1,
        "ten requests within 100 ms reach alice as one: {got:?}"
    );
    // The keyframe that one brings reaches every watcher.
    for &w in &watchers {
        assert!(
            net.clients[w]
                .rx_since(got[0].0)
                .any(|r| r.origin == net.id(a) && r.kind == Kind::Video && r.keyframe),
            "{} gets the keyframe",
            net.clients[w].name
        );
    }

    // After the interval, a new request goes through again.
    net.run(KEYFRAME_REQUEST_INTERVAL);
    let again = net.now;
    {
        let client = &mut net.clients[watchers[0]];
        client
            .subscribe
            .writer(mids[0])
            .expect("a writer")
            .request_keyframe(None, KeyframeRequestKind::Pli)
            .expect("asks again");
        client.sub_timeout = net.now;
    }
    net.run(Duration::from_millis(100));
    let later = net.clients[a]
        .keyframe_requests
        .iter()
        .filter(|(at, mid, _)| *at >= again && *mid == video_mid)
        .count();
    assert_eq!(later, 1, "a request after the interval is sent");
}

#[test]
fn lost_video_packets_are_retransmitted_to_the_subscriber() {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    net.set_rules(a, Rules::Nothing);
    net.set_rules(b, Rules::Session);
    net.publish(a, true, true, None);
    net.run(Duration::from_secs(2));
    net.assert_clean();
    // Every 7th packet to bob is lost from now on (video frames span several packets).
    net.lossy = Some((b, 7));
    let since = net.now;
    net.run(Duration::from_secs(3));
    net.assert_clean();
    assert!(net.lost > 20, "the link lost {} packets", net.lost);
    // Retransmissions travel on an RTX stream of their own (RFC 4588). (With the subscriber's
    // bandwidth estimation on, probes travel there too: what proves the lost packets were
    // resent is that every frame arrived whole, below.)
    let rtx = rtx_payload_types(&net, b);
    let media_ssrcs: BTreeSet<u32> = net
        .wire
        .iter()
        .filter(|w| w.client == b && !rtx.contains(&w.pt))
        .map(|w| w.ssrc)
        .collect();
    assert!(
        net.wire.iter().any(|w| w.client == b
            && w.at >= since
            && rtx.contains(&w.pt)
            && !w.padding
            && !media_ssrcs.contains(&w.ssrc)),
        "bob received retransmissions on an RTX SSRC"
    );
    // Every video frame alice sent in the window (but the last few, in flight) reached bob
    // whole: the lost packets were asked for and resent from bob's window.
    let mut frames: Vec<u32> = net.clients[b]
        .rx_since(since + Duration::from_millis(300))
        .filter(|r| r.origin == net.id(a) && r.kind == Kind::Video)
        .map(|r| r.counter)
        .collect();
    frames.sort_unstable();
    frames.dedup();
    let (first, last) = (frames[0], frames[frames.len() - 1]);
    assert!(last - first >= 20, "frames {first}..{last}");
    assert_eq!(
        frames.len() as u32,
        last - first + 1,
        "no video frame missing between {first} and {last}: {frames:?}"
    );
}

/// The instants at which `client` was delivered RTP, and how many packets each.
fn deliveries(
    net: &Net,
    client: usize,
    since: std::time::Instant,
) -> BTreeMap<std::time::Instant, usize> {
    let mut at = BTreeMap::new();
    for w in net
        .wire
        .iter()
        .filter(|w| w.client == client && w.at >= since && !w.padding)
    {
        *at.entry(w.at).or_default() += 1;
    }
    at
}

/// Three publishers' audio and video, every packet forwarded to one subscriber; what arrived
/// at each instant over 3 s once the call runs.
fn three_publishers_to_one(subscriber_bwe: bool) -> BTreeMap<std::time::Instant, usize> {
    let mut net = Net::with_config(|c| c.subscriber_bwe = subscriber_bwe);
    let viewer = net.add_client("viewer", MediaKinds::ALL);
    net.set_rules(viewer, Rules::Session);
    for name in ["a", "b", "c"] {
        let p = net.add_client(name, MediaKinds::ALL);
        net.set_rules(p, Rules::Nothing);
        net.publish(p, true, true, None);
    }
    net.run(Duration::from_secs(2));
    net.assert_clean();
    let since = net.now;
    net.run(Duration::from_secs(3));
    net.assert_clean();
    deliveries(&net, viewer, since)
}

/// str0m's pacer (on with the subscriber's bandwidth estimation) hands out one packet per
/// timeout and asks for the next a microsecond later; the runtime's timer wakes at most once
/// a millisecond, so unless the engine runs those steps itself a subscriber gets at most a
/// thousand packets a second, whatever its link (found in a 1 x 20 load: every estimate fell,
/// no video arrived). Packets that reach the engine together must leave together, as they do
/// without estimation: the harness's clock moves at least 200 us per step, so packets sent
/// one step apart arrive at different instants.
#[test]
fn an_estimating_subscriber_is_sent_what_arrived_together_at_once() {
    let paced = three_publishers_to_one(true);
    let unpaced = three_publishers_to_one(false);
    let packets = |d: &BTreeMap<_, usize>| d.values().sum::<usize>();
    let together = |d: &BTreeMap<_, usize>| d.values().filter(|n| **n > 1).sum::<usize>();
    assert!(packets(&paced) > 400, "{} packets", packets(&paced));
    assert!(
        together(&unpaced) * 2 > packets(&unpaced),
        "without estimation most packets share their instant: {} of {}",
        together(&unpaced),
        packets(&unpaced)
    );
    assert!(
        together(&paced) * 10 >= together(&unpaced) * 8,
        "with estimation, {} of {} packets arrived with others (without: {} of {})",
        together(&paced),
        packets(&paced),
        together(&unpaced),
        packets(&unpaced)
    );
}

/// Issue 21, step 4: a publisher whose video one subscriber watches is held, by REMB on its
/// video stream, to a share of that subscriber's estimate (each of two publishers watched by
/// one viewer to its half), never below a floor; here the viewer's RTP is policed to
/// 600 kbit/s while two publishers would send it 480 kbit/s of video each (the harness's
/// publishers size their frames to the last REMB, as an encoder does). A second viewer of one
/// publisher lifts that publisher's ceiling (lowering it would lower it for both), with REMBs
/// far above anything sent, while the other stays capped. Asserted from the REMBs the
/// publishers' own connections received, and the quality view.
#[test]
fn a_publisher_with_one_viewer_follows_its_estimate_and_a_second_viewer_lifts_it() {
    let mut net = Net::with_config(|c| c.subscriber_bwe = true);
    let (a, b) = (
        net.add_client("a", MediaKinds::ALL),
        net.add_client("b", MediaKinds::ALL),
    );
    for p in [a, b] {
        net.clients[p].video_frame_bytes = 6_000;
        net.set_rules(p, Rules::Nothing);
        net.publish(p, true, true, None);
    }
    let viewer = net.add_client("viewer", MediaKinds::ALL);
    net.set_rules(viewer, Rules::Only(vec![a, b]));
    net.run(Duration::from_secs(4));
    net.assert_clean();
    for p in [a, b] {
        assert!(
            !net.clients[p].rembs.is_empty(),
            "one viewer: capped from its first estimate"
        );
    }

    net.thin = Some((viewer, 600_000));
    net.run(Duration::from_secs(8));
    net.assert_clean();
    let estimate = net
        .engine
        .quality(net.clients[viewer].participant, net.now)
        .and_then(|q| q.subscribe?.estimate_bps)
        .expect("the viewer's link is estimated");
    for p in [a, b] {
        let video_mid = net.clients[p].video_mid.expect("video published");
        let rembs = &net.clients[p].rembs;
        assert!(rembs.len() >= 2, "a ceiling every second: {rembs:?}");
        assert!(
            rembs.iter().all(|(_, mid, _)| *mid == video_mid),
            "on the video stream only: {rembs:?}"
        );
        let (_, _, last) = *rembs.last().expect("checked above");
        let ceiling = net
            .engine
            .quality(net.clients[p].participant, net.now)
            .and_then(|q| q.publish?.video_ceiling_bps);
        // (The ceiling now may have moved since the last REMB arrived, with the estimate.)
        assert!(
            ceiling.is_some_and(|c| c <= estimate.max(150_000)),
            "the quality view shows a ceiling: {ceiling:?} (estimate {estimate})"
        );
        assert!(
            last == 150_000 || (last > 150_000 && last <= estimate),
            "the last ceiling {last} follows the viewer's estimate {estimate}, or is the floor"
        );
    }

    // A second viewer of `a` (the first one's link fat again for longer than its congestion
    // is remembered, so that it pauses nothing):
    // `a`'s ceiling is lifted; `b` keeps its one viewer and its cap.
    net.thin = None;
    net.run(Duration::from_secs(6));
    let second = net.add_client("second", MediaKinds::ALL);
    net.set_rules(second, Rules::Only(vec![a]));
    let since = net.now;
    net.run(Duration::from_secs(5));
    net.assert_clean();
    let after = |p: usize| -> Vec<u64> {
        net.clients[p]
            .rembs
            .iter()
            .filter(|(at, _, _)| *at > since)
            .map(|(_, _, bps)| *bps)
            .collect()
    };
    assert!(
        after(a).last().is_some_and(|bps| *bps >= 50_000_000),
        "lifted with two viewers: {:?}",
        after(a)
    );
    let ceiling = |p: usize| {
        net.engine
            .quality(net.clients[p].participant, net.now)
            .and_then(|q| q.publish?.video_ceiling_bps)
    };
    assert_eq!(ceiling(a), None, "no ceiling shown once lifted");
    assert!(ceiling(b).is_some(), "the other still shows its ceiling");
    assert!(
        after(b).last().is_some_and(|bps| *bps < 50_000_000),
        "still capped with one: {:?}",
        after(b)
    );
}
