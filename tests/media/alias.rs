//! Stream-alias-level forwarding, proven from the frames a subscriber receives (issue 13,
//! item 5). A presenter publishes two MediaStreams on one publish connection, `camera` and
//! `screen`, each with audio and video; a viewer lists the presenter with `streamAliases` and
//! is re-wired camera → screen → both → camera. A watcher subscribed to the whole session is
//! the positive control: both streams flow all along.
//!
//! The two streams' frames are told apart by content: the camera's carry the presenter's
//! number as their origin byte (the test kit client's own frames), the screen's carry
//! [`SCREEN_ORIGIN`] (written here, on the screen's m-lines). The checks are exact, without a
//! time allowance: once a re-wire is applied, no frame the presenter writes afterwards on an
//! unsubscribed stream may reach the viewer (frames already on the wire may still land), and
//! every frame the viewer receives sits in the MediaStream whose metadata names the alias of
//! the stream that frame came from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use patchbay::domain::{MediaKinds, ParticipantSubscription, StreamAlias, Subscriptions};
use patchbay::forwarding::{compile, Member, SessionState};
use patchbay_testkit::browser::{declared, AUDIO_EVERY, VIDEO_EVERY};
use patchbay_testkit::rtc::write_frame;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::Input;

use crate::peer::{frame, Kind, Net, Rules};

const CAMERA: &str = "camera";
const SCREEN: &str = "screen";
/// The MediaStream id of the screen (the camera's is the client's own, `stream-presenter`).
const SCREEN_MSID: &str = "stream-presenter-screen";
/// The origin byte of the screen's frames (client numbers start at 1).
const SCREEN_ORIGIN: u8 = 101;

/// The presenter's second MediaStream: its m-lines and the frames written on them so far.
struct Screen {
    client: usize,
    audio_mid: Mid,
    video_mid: Mid,
    audio_sent: u32,
    video_sent: u32,
    next_audio: Instant,
    next_video: Instant,
    force_keyframe: bool,
    /// Keyframe requests of the presenter's client already served.
    requests_seen: usize,
}

impl Screen {
    /// Writes the screen frames that are due (like the client does for its camera).
    fn tick(&mut self, net: &mut Net) {
        let now = net.now;
        let c = &mut net.clients[self.client];
        if !c.pub_connected {
            self.next_audio = now;
            self.next_video = now;
            return;
        }
        let asked = c.keyframe_requests[self.requests_seen..]
            .iter()
            .any(|(_, mid, _)| *mid == self.video_mid);
        self.force_keyframe |= asked;
        self.requests_seen = c.keyframe_requests.len();
        let mut wrote = false;
        while self.next_audio <= now {
            let n = self.audio_sent;
            let data = frame(SCREEN_ORIGIN, Kind::Audio, n, true);
            let t = MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ);
            write_frame(&mut c.publish, self.audio_mid, Codec::Opus, t, data, now);
            self.audio_sent += 1;
            self.next_audio += AUDIO_EVERY;
            wrote = true;
        }
        while self.next_video <= now {
            let n = self.video_sent;
            let key = std::mem::take(&mut self.force_keyframe);
            let data = frame(SCREEN_ORIGIN, Kind::Video, n, key);
            let t = MediaTime::new(u64::from(n) * 9000, Frequency::NINETY_KHZ);
            if !write_frame(&mut c.publish, self.video_mid, Codec::Vp8, t, data, now) && key {
                self.force_keyframe = true;
            }
            self.video_sent += 1;
            self.next_video += VIDEO_EVERY;
            wrote = true;
        }
        if wrote {
            c.drain(false, now, &mut net.queue);
        }
    }
}

/// Runs the net for `d`, writing the screen's frames on the way.
fn run(net: &mut Net, screen: &mut Screen, d: Duration) {
    let end = net.now + d;
    while net.now < end {
        let next = screen.next_audio.min(screen.next_video).min(end);
        net.run(
            next.saturating_duration_since(net.now)
                .max(Duration::from_millis(1)),
        );
        screen.tick(net);
    }
}

/// The presenter's second publish offer, as the SDK makes it for a second `publish()`: the
/// screen's sendonly audio and video m-lines added, both MediaStreams declared with their
/// aliases.
fn publish_screen(net: &mut Net, client: usize) -> Screen {
    let now = net.now;
    let c = &mut net.clients[client];
    c.publish.handle_input(Input::Timeout(now)).unwrap();
    let mut api = c.publish.sdp_api();
    let msid = Some(SCREEN_MSID.to_owned());
    let audio_mid = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        msid.clone(),
        Some(format!("{SCREEN_MSID}-audio")),
        None,
    );
    let video_mid = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        msid,
        Some(format!("{SCREEN_MSID}-video")),
        None,
    );
    let (offer, pending) = api.apply().expect("the screen's publish offer");
    let mut streams = declared(c.msid.clone(), Some(CAMERA));
    streams.extend(declared(SCREEN_MSID.to_owned(), Some(SCREEN)));
    let device = c.device;
    let answer = net
        .engine
        .handle_publish_offer(device, &offer.to_sdp_string(), &streams, now)
        .expect("the engine answers the screen's offer");
    for (msid, alias) in [
        (net.clients[client].msid.clone(), CAMERA),
        (SCREEN_MSID.to_owned(), SCREEN),
    ] {
        let meta = &answer.stream_metadata[&msid];
        assert_eq!(meta.alias.as_ref().map(|a| a.as_str()), Some(alias));
        assert_eq!(meta.kinds, MediaKinds::ALL, "{alias}");
    }
    net.clients[client].accept_publish_answer(pending, &answer, now, &mut net.queue);
    net.pump();
    Screen {
        client,
        audio_mid,
        video_mid,
        audio_sent: 0,
        video_sent: 0,
        next_audio: now,
        next_video: now,
        force_keyframe: true,
        requests_seen: 0,
    }
}

/// The backend's `PUT …/participants/{viewer}/subscriptions` with one entry: the presenter,
/// `streamAliases: aliases` (the viewer joins the session with it the first time). Compiled,
/// diffed and applied like control does; returns whether any route changed.
fn subscribe_to_aliases(net: &mut Net, viewer: usize, presenter: usize, aliases: &[&str]) -> bool {
    let subscriptions = Subscriptions::new(
        None,
        vec![ParticipantSubscription {
            participant: net.clients[presenter].participant,
            stream_aliases: aliases
                .iter()
                .map(|a| StreamAlias::parse(a).expect("a valid alias"))
                .collect(),
        }],
    )
    .expect("valid subscriptions");
    let v = &net.clients[viewer];
    net.control.members.insert(
        v.participant,
        Member {
            id: v.participant,
            publish: v.permissions,
            subscriptions,
        },
    );
    let state = SessionState {
        session: Some(net.control.session),
        members: net.control.members.values().cloned().collect(),
        streams: net.control.streams.values().flatten().cloned().collect(),
    };
    let table = compile(&state);
    let diff = net.control.table.diff(&table);
    let changed = !diff.is_empty();
    if changed {
        net.engine.apply_routes(net.control.session, &diff, net.now);
    }
    net.control.table = table;
    net.pump();
    changed
}

/// What the presenter had written on each stream when a re-wire was applied.
#[derive(Clone, Copy)]
struct Written {
    at: Instant,
    camera: [u32; 2],
    screen: [u32; 2],
}

fn written(net: &Net, presenter: usize, screen: &Screen) -> Written {
    let c = &net.clients[presenter];
    Written {
        at: net.now,
        camera: [c.audio_sent, c.video_sent],
        screen: [screen.audio_sent, screen.video_sent],
    }
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Audio => 0,
        Kind::Video => 1,
    }
}

/// Checks one phase of the viewer's wiring: from the re-wire at `from` up to now it never
/// receives a frame written after the re-wire on a stream it is not subscribed to, and in the
/// phase's last second it receives both kinds of every stream it is subscribed to; the watcher
/// receives both streams all along.
fn check_phase(
    net: &Net,
    viewer: usize,
    watcher: usize,
    presenter: usize,
    from: Written,
    wanted: &[&str],
) {
    let origin_of = |alias: &str| {
        if alias == CAMERA {
            net.id(presenter)
        } else {
            SCREEN_ORIGIN
        }
    };
    let last_second = net.now - Duration::from_secs(1);
    for alias in [CAMERA, SCREEN] {
        let origin = origin_of(alias);
        let sent_before = if alias == CAMERA {
            from.camera
        } else {
            from.screen
        };
        for kind in [Kind::Audio, Kind::Video] {
            let min = if kind == Kind::Audio { 45 } else { 8 };
            let at_watcher = net.clients[watcher].count(origin, kind, last_second);
            assert!(
                at_watcher >= min,
                "control: the watcher got {at_watcher} {kind:?} frames of {alias} in the last second of {wanted:?}"
            );
            let got = net.clients[viewer].count(origin, kind, last_second);
            if wanted.contains(&alias) {
                assert!(
                    got >= min,
                    "viewer subscribed to {wanted:?} got {got} {kind:?} frames of {alias} in the last second"
                );
            } else {
                let late: Vec<u32> = net.clients[viewer]
                    .rx_since(from.at)
                    .filter(|r| r.origin == origin && r.kind == kind)
                    .map(|r| r.counter)
                    .filter(|&n| n >= sent_before[slot(kind)])
                    .collect();
                assert!(
                    late.is_empty(),
                    "viewer subscribed to {wanted:?} received {} {kind:?} frames of {alias} written after the re-wire (numbers {:?} to {:?}; the re-wire came before frame {})",
                    late.len(),
                    late.first(),
                    late.last(),
                    sent_before[slot(kind)]
                );
                assert_eq!(
                    got, 0,
                    "viewer subscribed to {wanted:?} got {kind:?} frames of {alias} in the last second"
                );
            }
        }
    }
    // The last offer announces exactly the subscribed streams.
    let offer = &net.clients[viewer].offers.last().expect("an offer").1;
    let announced: BTreeSet<&str> = offer
        .stream_metadata
        .values()
        .map(|m| m.alias.as_ref().map_or("<none>", |a| a.as_str()))
        .collect();
    let expect: BTreeSet<&str> = wanted.iter().copied().collect();
    assert_eq!(
        announced, expect,
        "offer metadata: {:#?}",
        offer.stream_metadata
    );
}

#[test]
fn viewer_receives_only_the_subscribed_alias_across_rewires() {
    let mut net = Net::new();
    let presenter = net.add_client("presenter", MediaKinds::ALL);
    let viewer = net.add_client("viewer", MediaKinds::ALL);
    let watcher = net.add_client("watcher", MediaKinds::ALL);
    net.set_rules(presenter, Rules::Nothing);
    net.set_rules(watcher, Rules::Session);
    subscribe_to_aliases(&mut net, viewer, presenter, &[CAMERA]);
    net.publish(presenter, true, true, Some(CAMERA));
    let mut screen = publish_screen(&mut net, presenter);

    // The viewer starts subscribed to the camera (before anything was published), then is
    // re-wired: the screen only, both, the camera again.
    let phases: [&[&str]; 4] = [&[CAMERA], &[SCREEN], &[CAMERA, SCREEN], &[CAMERA]];
    let mut before: &[&str] = &[];
    for (i, &wanted) in phases.iter().enumerate() {
        if i > 0 {
            assert!(
                subscribe_to_aliases(&mut net, viewer, presenter, wanted),
                "the re-wire to {wanted:?} changes routes"
            );
        }
        let from = written(&net, presenter, &screen);
        run(
            &mut net,
            &mut screen,
            Duration::from_secs(if i == 0 { 3 } else { 2 }),
        );
        check_phase(&net, viewer, watcher, presenter, from, wanted);
        // For a stream the viewer newly receives, a keyframe request reached that stream's
        // video m-line (not the other stream's) after the re-wire, and a keyframe of it arrived.
        for &alias in wanted.iter().filter(|a| !before.contains(a)) {
            let (origin, video_mid) = if alias == CAMERA {
                (net.id(presenter), net.clients[presenter].video_mid.unwrap())
            } else {
                (SCREEN_ORIGIN, screen.video_mid)
            };
            // (In the first phase the publisher's first frames are keyframes: none is asked for.)
            assert!(
                i == 0
                    || net.clients[presenter]
                        .keyframe_requests
                        .iter()
                        .any(|(at, mid, _)| *at >= from.at && *mid == video_mid),
                "phase {}: no keyframe request reached {alias}'s video m-line after the re-wire",
                i + 1
            );
            let first_key = net.clients[viewer]
                .rx_since(from.at)
                .find(|r| r.origin == origin && r.kind == Kind::Video && r.keyframe);
            assert!(
                first_key.is_some(),
                "phase {}: the viewer got no keyframe of {alias} after the re-wire",
                i + 1
            );
        }
        net.assert_clean();
        before = wanted;
    }

    // Content and labels agree: every frame the viewer received sits in a MediaStream whose
    // metadata (in the offers it got) names the alias of the stream the frame came from.
    let mut alias_of_stream: BTreeMap<String, String> = BTreeMap::new();
    for (_, offer) in &net.clients[viewer].offers {
        for (id, meta) in &offer.stream_metadata {
            let alias = meta
                .alias
                .as_ref()
                .map_or("<none>", |a| a.as_str())
                .to_owned();
            let old = alias_of_stream.insert(id.clone(), alias.clone());
            assert!(
                old.as_ref().is_none_or(|o| *o == alias),
                "MediaStream {id} announced as {old:?} and as {alias}"
            );
        }
    }
    let viewer_rx = &net.clients[viewer];
    assert!(
        viewer_rx.received.len() > 500,
        "{} frames",
        viewer_rx.received.len()
    );
    for rx in &viewer_rx.received {
        let expect = if rx.origin == SCREEN_ORIGIN {
            SCREEN
        } else {
            assert_eq!(rx.origin, net.id(presenter), "a frame from nobody: {rx:?}");
            CAMERA
        };
        assert_eq!(
            alias_of_stream.get(&rx.stream_id).map(String::as_str),
            Some(expect),
            "a {expect} frame arrived in MediaStream {:?}: {rx:?}",
            rx.stream_id
        );
    }
    // Nothing but the presenter's two streams, and nothing at all from the watcher.
    let origins: BTreeSet<u8> = viewer_rx.received.iter().map(|r| r.origin).collect();
    assert_eq!(origins, BTreeSet::from([net.id(presenter), SCREEN_ORIGIN]));
}
