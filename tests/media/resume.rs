//! Resumption across processes, on the engine: a new engine (its own certificate and ICE
//! prefix, as after a restart) given a device's stored subscribe layout offers the device's
//! subscribe connection again in the shape the device holds, and refuses, signed, the
//! consent checks of the publish connections the process it replaced answered.

use std::time::Duration;

use std::sync::Arc;

use patchbay::domain::{LineContent, MediaKinds, PublishCredentials, SubscribeLayout};
use patchbay::media::{DeviceId, Engine, EngineConfig, EngineEvent, SubscribeOffer};
use str0m::change::SdpOffer;
use str0m::ice::StunMessage;
use str0m::Input;

use crate::peer::{Net, Rules};

/// (mid, kind, direction) of every m-section of an SDP, in order.
fn sections(sdp: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or_default().to_string();
            out.push((String::new(), kind, String::new()));
        } else if let Some(last) = out.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                last.0 = mid.to_string();
            } else if ["a=sendonly", "a=inactive", "a=recvonly", "a=sendrecv"].contains(&line) {
                last.2 = line[2..].to_string();
            }
        }
    }
    out
}

fn attribute<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(name))
        .unwrap_or_default()
}

/// The offers a device got from `engine`, draining its events.
fn offers_of(engine: &mut Engine, device: DeviceId) -> Vec<(SubscribeOffer, SubscribeLayout)> {
    let mut out = Vec::new();
    while let Some(event) = engine.poll_event() {
        if let EngineEvent::SubscribeOffer {
            device: d,
            offer,
            layout,
        } = event
        {
            if d == device {
                out.push((offer, layout));
            }
        }
    }
    out
}

/// Alice subscribed to bob and carol; carol left (her lines are inactive); alice's device is
/// then resumed on a new engine that knows nothing but alice's stored layout.
#[test]
fn a_new_engine_offers_a_resumed_device_the_connection_it_holds() {
    let mut net = Net::new();
    let a = net.add_client("alice", MediaKinds::ALL);
    let b = net.add_client("bob", MediaKinds::ALL);
    let c = net.add_client("carol", MediaKinds::ALL);
    for x in [a, b, c] {
        net.set_rules(x, Rules::Session);
    }
    net.publish(b, true, true, None);
    net.publish(c, true, true, None);
    net.run(Duration::from_secs(1));
    net.set_rules(a, Rules::Only(vec![b]));
    net.run(Duration::from_secs(1));
    net.assert_clean();

    let old_device = net.clients[a].device;
    let layout = net.layouts[&old_device].clone();
    let (_, last) = net.clients[a]
        .offers
        .last()
        .expect("alice was offered")
        .clone();
    let old = sections(&last.sdp_offer);
    assert_eq!(old.len(), 5, "channels, bob's and carol's audio and video");
    assert_eq!(layout.lines.len(), old.len());
    assert_eq!(layout.unique_id, "sdk-alice");
    assert_eq!(layout.revision, last.sdp_revision);
    assert_eq!(
        old.iter().filter(|s| s.2 == "inactive").count(),
        2,
        "carol's lines went inactive"
    );

    // The restart: a new engine, a new device id, nothing in memory but the layout.
    let mut engine = Engine::new(EngineConfig::generate(net.engine_addr).expect("config"));
    let device = DeviceId(1_000);
    engine.resume_subscriber(device, "sdk-alice".into(), Some(layout.clone()));
    assert_eq!(
        engine.add_device(device, net.clients[a].participant, MediaKinds::ALL, net.now),
        None
    );
    let offers = offers_of(&mut engine, device);
    assert_eq!(
        offers.len(),
        1,
        "offered at once, though no route exists yet"
    );
    let (offer, new_layout) = &offers[0];

    let new = sections(&offer.sdp_offer);
    let shape = |s: &[(String, String, String)]| -> Vec<(String, String)> {
        s.iter().map(|(m, k, _)| (m.clone(), k.clone())).collect()
    };
    assert_eq!(
        shape(&new),
        shape(&old),
        "same mids, same kinds, same order"
    );
    assert_eq!(
        new.iter().map(|s| s.2.as_str()).collect::<Vec<_>>(),
        old.iter().map(|s| s.2.as_str()).collect::<Vec<_>>(),
        "what was sending keeps sending (its publisher is on its way back); the rest inactive"
    );
    assert!(
        offer.sdp_revision > last.sdp_revision,
        "above every revision seen"
    );
    assert!(
        !offer.sdp_offer.contains("sdes:mid"),
        "no MID header extension: str0m's own mids would be in it"
    );
    assert_ne!(
        attribute(&offer.sdp_offer, "a=fingerprint:"),
        attribute(&last.sdp_offer, "a=fingerprint:"),
        "the new process's own certificate"
    );
    assert_ne!(
        attribute(&offer.sdp_offer, "a=ice-ufrag:"),
        attribute(&last.sdp_offer, "a=ice-ufrag:"),
        "fresh ICE credentials"
    );
    assert_eq!(
        attribute(&offer.sdp_offer, "a=group:BUNDLE "),
        attribute(&last.sdp_offer, "a=group:BUNDLE "),
    );
    assert_eq!(
        new_layout.lines, layout.lines,
        "the same layout, reported again"
    );
    // Each MediaStream keeps the id the device knows it by.
    for line in &layout.lines {
        if let LineContent::Track { msid, .. } = &line.content {
            assert!(
                offer.sdp_offer.contains(&format!("a=msid:{msid} ")),
                "{msid}"
            );
        }
    }

    // The device's connection (str0m standing in for the browser) takes the offer on the
    // connection it already has, and the new engine takes its answer, mids and all.
    let client = &mut net.clients[a];
    client
        .subscribe
        .handle_input(Input::Timeout(net.now))
        .expect("timeout");
    let answer = client
        .subscribe
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer.sdp_offer).expect("parses"))
        .expect("the device's existing connection takes the resumed offer");
    // Garbage first: a clear error, and the offer stays pending for the real answer.
    assert!(matches!(
        engine.handle_subscribe_answer(device, "v=0\r\na=mid:ü\r\nnonsense", net.now),
        Err(patchbay::media::MediaError::BadSdp(_))
    ));
    engine
        .handle_subscribe_answer(device, &answer.to_sdp_string(), net.now)
        .expect("the new engine takes the device's answer");
}

/// A layout stored for another SDK instance (the page was reloaded, or another tab took the
/// token) is not resumed: that instance's connection is new, and gets a fresh offer.
#[test]
fn another_sdk_instance_starts_afresh() {
    let (net, a, _) = crate::call_of_two();
    let layout = net.layouts[&net.clients[a].device].clone();
    let mut engine = Engine::new(EngineConfig::generate(net.engine_addr).expect("config"));
    let device = DeviceId(1_000);
    engine.resume_subscriber(device, "sdk-reloaded".into(), Some(layout.clone()));
    engine.add_device(device, net.clients[a].participant, MediaKinds::ALL, net.now);
    assert!(
        offers_of(&mut engine, device).is_empty(),
        "nothing to send and nothing to resume: no offer yet"
    );
    assert_eq!(engine.subscribe_revision(device), Some(0));
}

/// A consent check of a publish connection the previous process answered (its stored
/// credentials) is refused with a STUN error signed with that connection's password, once the
/// device is connected to the new engine; before that, and for ufrags nobody stored or of the
/// engine's own prefix, nothing is sent.
#[test]
fn checks_addressed_to_the_replaced_process_are_refused_once_the_device_is_back() {
    let (mut net, a, _) = crate::call_of_two();
    let answer = net.clients[a].last_answer.clone().expect("an answer");
    let old_ufrag = crate::ufrag(&answer.sdp_answer);
    let old_pwd = answer
        .sdp_answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-pwd:"))
        .expect("an ice-pwd")
        .to_owned();
    let participant = net.clients[a].participant;
    let mut config = EngineConfig::generate(net.engine_addr).expect("config");
    let stored = PublishCredentials {
        participant,
        unique_id: "sdk-alice".into(),
        ufrag: old_ufrag.clone(),
        pwd: old_pwd.clone(),
    };
    config.previous_credentials = Arc::new([(old_ufrag.clone(), stored)].into_iter().collect());
    let mut engine = Engine::new(config);
    let mut rng = crate::Rng(0x00DD_BA11);
    let from: std::net::SocketAddr = "198.51.100.7:50000".parse().unwrap();
    let check = |rng: &mut crate::Rng, ufrag: &str| {
        crate::forged_binding_request(rng, &format!("{ufrag}:browser"))
    };

    // The device is not back yet: its SDK could not renegotiate; nothing is sent.
    let request = check(&mut rng, &old_ufrag);
    assert!(!engine.handle_receive(from, net.engine_addr, &request, net.now));
    assert!(engine.poll_transmit().is_none());

    engine.add_device(DeviceId(1_000), participant, MediaKinds::ALL, net.now);
    while engine.poll_transmit().is_some() {}
    let request = check(&mut rng, &old_ufrag);
    assert!(engine.handle_receive(from, net.engine_addr, &request, net.now));
    let reply = engine.poll_transmit().expect("an error response");
    assert_eq!(reply.destination, from);
    let parsed = StunMessage::parse(&reply.contents).expect("a STUN message");
    assert!(parsed.is_failed_binding_response());
    assert_eq!(parsed.error_code().map(|(code, _)| code), Some(403));
    assert_eq!(
        parsed.trans_id(),
        StunMessage::parse(&request).expect("request").trans_id()
    );
    let hmac = |key: &[u8], data: &[&[u8]]| -> [u8; 20] {
        str0m::crypto::from_feature_flags()
            .sha1_hmac_provider
            .sha1_hmac(key, data)
    };
    assert!(
        parsed.verify(old_pwd.as_bytes(), hmac),
        "signed with the old connection's password (a browser ignores an unsigned error)"
    );
    assert!(engine.poll_transmit().is_none());

    // A ufrag nobody stored, and one of the engine's own prefix: not refused.
    for ufrag in [
        "nosuchufrag".to_string(),
        format!("{}zzzzzzzz", &old_ufrag[..4]),
    ] {
        let request = check(&mut rng, &ufrag);
        assert!(!net
            .engine
            .handle_receive(from, net.engine_addr, &request, net.now));
    }
    net.pump();
    assert_eq!(
        net.undeliverable, 0,
        "nothing was sent to the unknown address"
    );
}
