//! Media shards on the virtual clock: two or more `patchbay::media::Shard`s wired in memory
//! the way the runtime wires them (inboxes, a placement directory, every shard sending from
//! every public address), with the str0m clients of `peer.rs`. The tests check what a shard
//! does on its own: device moves, the reconnect grace, resume and replacement, redirects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay::domain::{
    AccountId, MediaKinds, ParticipantId, SessionId, SubscribeLayout, Subscriptions,
};
use patchbay::forwarding::{compile, ForwardingTable, Member, PublishedStream, SessionState};
use patchbay::media::placement::home_of_session;
use patchbay::media::{
    Delivery, DeviceId, DeviceNotice, Engine, EngineConfig, Placement, Resumption, Shard,
    ShardMessage, ShardOutput, RECONNECT_GRACE,
};
use patchbay::media::{OFFER_RETRIES, OFFER_TIMEOUT};

use crate::peer::{advance, enqueue, Client, Datagram, Kind, LATENCY};

/// The shards, their clients, the wire and a reduced control, on one virtual clock.
struct Shards {
    now: Instant,
    shards: Vec<Shard>,
    /// Each shard's public address (its socket).
    addrs: Vec<SocketAddr>,
    inboxes: Vec<VecDeque<ShardMessage>>,
    /// Shards whose inbox is handled only when a datagram is reported unplaced.
    lazy: Vec<bool>,
    placement: Placement,
    clients: Vec<Client>,
    /// The connection each client's device is attached through.
    connection_of: Vec<u64>,
    /// Everything each connection was told.
    notices: HashMap<u64, Vec<DeviceNotice>>,
    queue: VecDeque<Datagram>,
    /// Per shard, what became of the datagrams its socket received.
    deliveries: Vec<Vec<(SocketAddr, Delivery)>>,
    /// Unplaced datagrams placed after the inbox was handled.
    placed_on_retry: usize,
    /// A NAT in front of a client address: datagrams from it appear to come from the value.
    nat: HashMap<SocketAddr, SocketAddr>,
    session: SessionId,
    members: BTreeMap<ParticipantId, Member>,
    streams: BTreeMap<ParticipantId, Vec<PublishedStream>>,
    table: ForwardingTable,
    /// Every published-streams output, in order.
    published: Vec<(ParticipantId, Vec<PublishedStream>)>,
    /// The last subscribe layout reported per participant (what the store would hold).
    layouts: HashMap<ParticipantId, SubscribeLayout>,
    next_connection: u64,
}

fn account() -> AccountId {
    AccountId::parse("acct").expect("an account id")
}

impl Shards {
    fn new(count: usize) -> Shards {
        let now = Instant::now();
        let addrs: Vec<SocketAddr> = (0..count)
            .map(|i| format!("192.0.2.{}:3478", i + 1).parse().unwrap())
            .collect();
        // One process: one certificate and one ICE prefix for every shard.
        let base = EngineConfig::generate(addrs[0]).expect("engine config");
        let shards = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let engine = Engine::new(EngineConfig {
                    public_addrs: vec![*a],
                    ..base.clone()
                });
                Shard::new(i, count, engine)
            })
            .collect();
        Shards {
            now,
            shards,
            addrs,
            inboxes: (0..count).map(|_| VecDeque::new()).collect(),
            lazy: vec![false; count],
            placement: Placement::default(),
            clients: Vec::new(),
            connection_of: Vec::new(),
            notices: HashMap::new(),
            queue: VecDeque::new(),
            deliveries: vec![Vec::new(); count],
            placed_on_retry: 0,
            nat: HashMap::new(),
            session: SessionId::random(),
            members: BTreeMap::new(),
            streams: BTreeMap::new(),
            table: ForwardingTable::default(),
            published: Vec::new(),
            layouts: HashMap::new(),
            next_connection: 1,
        }
    }

    fn home(&self) -> usize {
        home_of_session(self.session, self.shards.len())
    }

    fn shard_of(&self, client: usize) -> usize {
        self.placement.shard_of_device(self.clients[client].device)
    }

    /// A new participant's device connects on `shard` with `unique_id`.
    fn add_client(&mut self, name: &str, shard: usize, unique_id: &str) -> usize {
        let idx = self.clients.len();
        let connection = self.take_connection();
        let mut client = Client::new(
            name,
            idx as u8 + 1,
            MediaKinds::ALL,
            DeviceId(connection),
            self.now,
        );
        // What control does: the participant's stored layout goes along.
        let layout = self.layouts.get(&client.participant).cloned();
        let device = self.shards[shard].handle_connect(
            connection,
            account(),
            client.participant,
            MediaKinds::ALL,
            unique_id.to_owned(),
            layout,
            self.now,
        );
        client.device = device;
        self.clients.push(client);
        self.connection_of.push(connection);
        self.settle();
        idx
    }

    /// Another connection of the client's participant, on the shard the directory names;
    /// returns the connection and the device it got.
    fn connect_again(&mut self, client: usize, unique_id: &str) -> (u64, DeviceId) {
        let connection = self.take_connection();
        let participant = self.clients[client].participant;
        let shard = self
            .placement
            .shard_for(participant, None, self.shards.len());
        let layout = self.layouts.get(&participant).cloned();
        let device = self.shards[shard].handle_connect(
            connection,
            account(),
            participant,
            MediaKinds::ALL,
            unique_id.to_owned(),
            layout,
            self.now,
        );
        self.connection_of[client] = connection;
        self.settle();
        (connection, device)
    }

    fn take_connection(&mut self) -> u64 {
        let c = self.next_connection;
        self.next_connection += 1;
        c
    }

    /// The client's connection drops (`left`: after `leave`).
    fn disconnect(&mut self, client: usize, left: bool) {
        let shard = self.shard_of(client);
        let (connection, device) = (self.connection_of[client], self.clients[client].device);
        self.shards[shard].handle_disconnect(connection, device, left, self.now);
        self.settle();
    }

    /// The client joins the session (or changes its rules), subscribing to all of it or to
    /// nothing.
    fn join(&mut self, client: usize, subscribe: bool) {
        let subscriptions = if subscribe {
            Subscriptions::new(Some(self.session), vec![]).unwrap()
        } else {
            Subscriptions::default()
        };
        let c = &self.clients[client];
        self.members.insert(
            c.participant,
            Member {
                id: c.participant,
                publish: c.permissions,
                subscriptions,
            },
        );
        self.recompile();
    }

    /// compile → diff → every shard, like control's broadcast.
    fn recompile(&mut self) {
        let state = SessionState {
            session: Some(self.session),
            members: self.members.values().cloned().collect(),
            streams: self.streams.values().flatten().cloned().collect(),
        };
        let new = compile(&state);
        let diff = self.table.diff(&new);
        self.table = new;
        if diff.is_empty() {
            return;
        }
        for shard in &mut self.shards {
            shard.handle_routes(self.session, &diff, self.now);
        }
        self.settle();
    }

    /// The device's two publish offers (data channels, then audio and video), to its shard.
    fn publish(&mut self, client: usize) {
        let now = self.now;
        for round in 0..2 {
            let c = &mut self.clients[client];
            let (offer, pending, metadata) = if round == 0 {
                c.data_channel_offer(now)
            } else {
                c.media_offer(true, true, None)
            };
            let device = c.device;
            let shard = self.shard_of(client);
            let answer = self.shards[shard]
                .handle_publish_offer(device, &offer, &metadata, now)
                .expect("the shard answers the publish offer");
            self.clients[client].accept_publish_answer(pending, &answer, now, &mut self.queue);
            self.settle();
        }
    }

    fn answer(&mut self, client: usize) {
        let now = self.now;
        let (sdp, violation) = self.clients[client].answer_outstanding(now, &mut self.queue);
        assert_eq!(violation, None);
        let device = self.clients[client].device;
        let shard = self.shard_of(client);
        self.shards[shard]
            .handle_subscribe_answer(device, &sdp, now)
            .expect("the shard takes the subscribe answer");
        self.settle();
    }

    /// Carries out every shard's outputs and transmits, and their messages, until quiet.
    fn settle(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.shards.len() {
                busy |= self.drain(i);
            }
            for i in 0..self.shards.len() {
                if !self.lazy[i] {
                    busy |= self.handle_inbox(i);
                }
            }
            if !busy {
                break;
            }
        }
    }

    fn handle_inbox(&mut self, shard: usize) -> bool {
        let mut any = false;
        while let Some(message) = self.inboxes[shard].pop_front() {
            self.shards[shard].handle_message(message, self.now);
            any = true;
        }
        any
    }

    /// One shard's outputs, then its transmits; whether there was anything.
    fn drain(&mut self, shard: usize) -> bool {
        let mut any = false;
        let mut answer = Vec::new();
        while let Some(output) = self.shards[shard].poll_output() {
            any = true;
            match output {
                ShardOutput::Notice { connection, notice } => {
                    if let DeviceNotice::Offer(offer) = &notice {
                        if let Some(i) = self.connection_of.iter().position(|c| *c == connection) {
                            let c = &mut self.clients[i];
                            c.offers.push((self.now, offer.clone()));
                            c.outstanding = Some(offer.clone());
                            if c.auto_answer {
                                answer.push(i);
                            }
                        }
                    }
                    self.notices.entry(connection).or_default().push(notice);
                }
                ShardOutput::Local { .. } | ShardOutput::ActiveSpeaker(_) => {}
                ShardOutput::Resumption(Resumption::Layout {
                    participant,
                    layout,
                }) => {
                    self.layouts.insert(participant, layout);
                }
                ShardOutput::Resumption(Resumption::PublishCredentials(_)) => {}
                ShardOutput::Resumption(Resumption::Forgotten {
                    participant,
                    unique_id,
                }) => {
                    if self
                        .layouts
                        .get(&participant)
                        .is_some_and(|l| l.unique_id == unique_id)
                    {
                        self.layouts.remove(&participant);
                    }
                }
                ShardOutput::Published {
                    participant,
                    streams,
                    ..
                } => {
                    self.published.push((participant, streams.clone()));
                    self.streams.insert(participant, streams);
                    self.recompile();
                }
                ShardOutput::Message { shard: to, message } => {
                    let arrival = match &message {
                        ShardMessage::Arrive(a) => Some((a.device(), a.participant())),
                        _ => None,
                    };
                    self.inboxes[to].push_back(message);
                    if let Some((device, participant)) = arrival {
                        self.placement.place(device, participant, to);
                    }
                }
                ShardOutput::Placed {
                    device,
                    participant,
                } => self.placement.place(device, participant, shard),
                ShardOutput::Removed {
                    device,
                    participant,
                    last,
                } => self.placement.remove(device, participant, shard, last),
            }
        }
        while let Some(t) = self.shards[shard].poll_transmit() {
            any = true;
            assert!(self.addrs.contains(&t.source), "sent from a known socket");
            let to = self
                .nat
                .iter()
                .find(|(_, outside)| **outside == t.destination)
                .map(|(inside, _)| *inside)
                .unwrap_or(t.destination);
            enqueue(
                &mut self.queue,
                Datagram {
                    at: self.now + LATENCY,
                    from: t.source,
                    to,
                    data: t.contents,
                },
            );
        }
        for i in answer {
            if self.clients[i].outstanding.is_some() {
                self.answer(i);
            }
        }
        any
    }

    /// A datagram reaches a shard's socket, handled like the runtime does.
    fn deliver(&mut self, shard: usize, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let now = self.now;
        let mut delivery = self.shards[shard].handle_receive(from, to, data, now);
        if delivery == Delivery::Unplaced {
            self.handle_inbox(shard);
            delivery = self.shards[shard].handle_receive(from, to, data, now);
            if !matches!(delivery, Delivery::Unplaced | Delivery::Dropped) {
                self.placed_on_retry += 1;
            }
        }
        self.deliveries[shard].push((from, delivery));
        self.settle();
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end);
        }
    }

    fn step(&mut self, limit: Instant) {
        let mut next = limit;
        if let Some(d) = self.queue.front() {
            next = next.min(d.at);
        }
        for s in &self.shards {
            if let Some(t) = s.poll_timeout() {
                next = next.min(t);
            }
        }
        for c in &self.clients {
            next = next.min(c.next_wakeup());
        }
        self.now = advance(self.now, next, limit);
        let now = self.now;
        while self.queue.front().is_some_and(|d| d.at <= now) {
            let dgram = self.queue.pop_front().unwrap();
            if let Some(shard) = self.addrs.iter().position(|a| *a == dgram.to) {
                let from = self.nat.get(&dgram.from).copied().unwrap_or(dgram.from);
                self.deliver(shard, from, dgram.to, &dgram.data);
            } else if let Some(c) = self
                .clients
                .iter_mut()
                .find(|c| c.pub_addr == dgram.to || c.sub_addr == dgram.to)
            {
                c.feed(&dgram, now, &mut self.queue);
            }
        }
        for i in 0..self.shards.len() {
            if self.shards[i].poll_timeout().is_some_and(|t| t <= now) {
                self.shards[i].handle_timeout(now);
                self.settle();
            }
        }
        for c in &mut self.clients {
            c.timeouts(now, &mut self.queue);
            c.tick_media(now, &mut self.queue);
        }
    }

    /// Frames of `kind` `client` received from `from` in the last `d` of running.
    fn received(&mut self, client: usize, from: usize, d: Duration) -> usize {
        let since = self.now;
        self.run(d);
        let origin = self.clients[from].idx;
        self.clients[client].count(origin, Kind::Audio, since)
    }

    fn assert_clean(&self) {
        for c in &self.clients {
            assert!(c.errors.is_empty(), "{} errors: {:#?}", c.name, c.errors);
            assert_eq!(c.foreign, 0, "{} received media that is not ours", c.name);
        }
    }

    fn closes(&self, connection: u64) -> Vec<&'static str> {
        self.notices
            .get(&connection)
            .into_iter()
            .flatten()
            .filter_map(|n| match n {
                DeviceNotice::Close(reason) => Some(*reason),
                DeviceNotice::Offer(_) | DeviceNotice::Reset(_) => None,
            })
            .collect()
    }

    /// The resets (closes the SDK reconnects on) a connection was told.
    fn resets(&self, connection: u64) -> Vec<&'static str> {
        self.notices
            .get(&connection)
            .into_iter()
            .flatten()
            .filter_map(|n| match n {
                DeviceNotice::Reset(reason) => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// The revisions of the offers a connection was sent.
    fn offer_revisions(&self, connection: u64) -> Vec<u64> {
        self.notices
            .get(&connection)
            .into_iter()
            .flatten()
            .filter_map(|n| match n {
                DeviceNotice::Offer(o) => Some(o.sdp_revision),
                _ => None,
            })
            .collect()
    }
}

/// Alice on the session's home shard, bob on another one; both publish, then join.
fn alice_home_bob_away(bob_subscribes: bool) -> (Shards, usize, usize) {
    let mut net = Shards::new(2);
    let home = net.home();
    let a = net.add_client("alice", home, "a-1");
    let b = net.add_client("bob", 1 - home, "b-1");
    net.publish(a);
    net.publish(b);
    net.run(Duration::from_secs(2));
    assert!(
        net.clients[b].publish.is_connected(),
        "bob reached his shard"
    );
    net.join(a, true);
    net.join(b, bob_subscribes);
    (net, a, b)
}

#[test]
fn device_joining_a_session_hosted_elsewhere_moves_there_and_keeps_its_connections() {
    let (mut net, a, b) = alice_home_bob_away(false);
    let (home, away) = (net.home(), 1 - net.home());
    assert_eq!(
        net.shard_of(b),
        home,
        "bob's device went to the session's shard"
    );
    assert!(net.shards[home].has_device(net.clients[b].device));
    assert!(!net.shards[away].has_device(net.clients[b].device));
    assert_eq!(
        net.shards[away].locate(net.clients[b].device),
        Some(home),
        "commands still sent to the old shard are told where it went"
    );
    let bob_offers = net.clients[b].offers.len();
    let heard = net.received(a, b, Duration::from_secs(2));
    net.assert_clean();
    assert!(heard >= 90, "alice heard {heard} frames of bob in 2 s");
    assert_eq!(
        net.clients[b].offers.len(),
        bob_offers,
        "the move renegotiated nothing"
    );
    // Bob still sends to the address he reached first; that shard hands it over.
    let bob_addr = net.clients[b].pub_addr;
    let forwarded = net.deliveries[away]
        .iter()
        .filter(|(from, d)| *from == bob_addr && *d == Delivery::Forwarded)
        .count();
    assert!(forwarded > 90, "{forwarded} datagrams redirected");
}

#[test]
fn moved_device_receives_media_sent_from_the_address_it_knows() {
    let (mut net, a, b) = alice_home_bob_away(true);
    net.run(Duration::from_secs(1));
    let heard = net.received(b, a, Duration::from_secs(1));
    net.assert_clean();
    assert!(heard >= 45, "bob heard {heard} frames of alice in 1 s");
    assert!(net.clients[b].subscribe.is_connected());
}

#[test]
fn a_new_path_after_the_move_is_learned_through_the_other_shards() {
    let (mut net, a, b) = alice_home_bob_away(false);
    net.run(Duration::from_secs(1));
    let away = 1 - net.home();
    // Bob's NAT rebinds: his publish connection appears from a new address, which only the
    // shard he moved away from sees. Its inbox is handled only when it must be.
    let inside = net.clients[b].pub_addr;
    let outside: SocketAddr = "198.51.100.7:6000".parse().unwrap();
    net.nat.insert(inside, outside);
    net.lazy[away] = true;
    net.run(Duration::from_secs(12));
    let heard = net.received(a, b, Duration::from_secs(1));
    net.assert_clean();
    assert!(heard >= 45, "alice heard {heard} frames of bob in 1 s");
    assert!(
        net.deliveries[away]
            .iter()
            .any(|(from, d)| *from == outside && *d == Delivery::Offered),
        "the new path's STUN request was offered to the other shard"
    );
    assert!(
        net.placed_on_retry > 0,
        "a datagram on the new path was placed by the redirect waiting in the inbox"
    );
}

#[test]
fn dropped_connection_keeps_media_for_the_grace_then_the_device_goes() {
    let mut net = Shards::new(2);
    let home = net.home();
    let a = net.add_client("alice", home, "a-1");
    let b = net.add_client("bob", home, "b-1");
    net.join(a, true);
    net.join(b, true);
    net.publish(a);
    net.publish(b);
    net.run(Duration::from_secs(2));
    let bob = net.clients[b].participant;
    net.disconnect(b, false);
    let heard = net.received(a, b, RECONNECT_GRACE - Duration::from_secs(2));
    assert!(
        heard >= 800,
        "alice heard {heard} frames of bob during the grace"
    );
    assert!(net.placement.is_connected(bob));
    net.run(Duration::from_secs(3));
    assert!(!net.shards[home].has_device(net.clients[b].device));
    assert!(!net.placement.is_connected(bob), "the directory forgot him");
    let last = net.published.iter().rev().find(|(p, _)| *p == bob);
    assert_eq!(
        last.map(|(_, s)| s.len()),
        Some(0),
        "bob's streams are gone"
    );
    assert_eq!(net.received(a, b, Duration::from_secs(1)), 0);
    net.assert_clean();
}

#[test]
fn same_unique_id_resumes_the_device_and_resends_the_pending_offer() {
    let mut net = Shards::new(2);
    let home = net.home();
    let a = net.add_client("alice", home, "a-1");
    let b = net.add_client("bob", home, "b-1");
    net.join(b, true);
    net.clients[a].auto_answer = false;
    net.publish(b);
    net.join(a, true);
    let pending = net.clients[a].outstanding.clone().expect("an offer waits");
    let (first, device) = (net.connection_of[a], net.clients[a].device);
    net.disconnect(a, false);
    let (second, resumed) = net.connect_again(a, "a-1");
    assert_eq!(resumed, device, "the same device");
    let offers: Vec<u64> = net.notices[&second]
        .iter()
        .filter_map(|n| match n {
            DeviceNotice::Offer(o) => Some(o.sdp_revision),
            DeviceNotice::Close(_) | DeviceNotice::Reset(_) => None,
        })
        .collect();
    assert_eq!(
        offers,
        vec![pending.sdp_revision],
        "the pending offer again"
    );
    assert!(
        net.closes(first).is_empty(),
        "a dropped connection is not told"
    );
    assert!(net.closes(second).is_empty());

    // A third connection with another uniqueId replaces the device.
    let (third, replacement) = net.connect_again(a, "a-2");
    assert_ne!(replacement, device);
    assert_eq!(net.closes(second), vec!["replaced by a newer connection"]);
    assert!(net.shards[home].has_device(replacement));
    assert!(!net.shards[home].has_device(device));
    assert_eq!(net.placement.shard_of_device(replacement), home);
    assert!(net.closes(third).is_empty());
}

#[test]
fn resume_while_attached_closes_the_previous_connection() {
    let mut net = Shards::new(1);
    let a = net.add_client("alice", 0, "a-1");
    let (first, device) = (net.connection_of[a], net.clients[a].device);
    let (_, resumed) = net.connect_again(a, "a-1");
    assert_eq!(resumed, device);
    assert_eq!(net.closes(first), vec!["replaced by a newer connection"]);
}

/// Bob publishes; alice joins but her device does not answer its subscribe offer.
fn alice_does_not_answer() -> (Shards, usize, usize) {
    let mut net = Shards::new(1);
    let a = net.add_client("alice", 0, "a-1");
    let b = net.add_client("bob", 0, "b-1");
    net.join(b, true);
    net.publish(b);
    net.clients[a].auto_answer = false;
    net.join(a, true);
    (net, a, b)
}

#[test]
fn an_unanswered_subscribe_offer_is_offered_again_and_its_answer_still_works() {
    let (mut net, a, b) = alice_does_not_answer();
    let first = net.clients[a].outstanding.clone().expect("an offer waits");
    let connection = net.connection_of[a];
    net.run(OFFER_TIMEOUT + Duration::from_secs(1));
    let again = net.clients[a].outstanding.clone().expect("offered again");
    assert_eq!(again.sdp_offer, first.sdp_offer, "the same change");
    assert_eq!(
        again.sdp_revision,
        first.sdp_revision + 1,
        "a new revision: the SDK ignores one it has seen"
    );
    // The device answers the repeat: the pending change is applied and media flows.
    net.answer(a);
    assert!(net.received(a, b, Duration::from_secs(2)) >= 45);
    assert!(net.resets(connection).is_empty());
    // Answered: nothing is offered again later.
    let offers = net.offer_revisions(connection).len();
    net.run(OFFER_TIMEOUT * 2);
    assert_eq!(net.offer_revisions(connection).len(), offers);
    net.assert_clean();
}

#[test]
fn a_device_that_answers_no_subscribe_offer_is_reset() {
    let (mut net, a, b) = alice_does_not_answer();
    let connection = net.connection_of[a];
    let device = net.clients[a].device;
    let retries = OFFER_RETRIES;
    net.run(OFFER_TIMEOUT * (retries + 1) + Duration::from_secs(1));
    let revisions = net.offer_revisions(connection);
    assert_eq!(
        revisions.len(),
        1 + retries as usize,
        "offered once, then again {retries} times: {revisions:?}"
    );
    assert!(revisions.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(net.resets(connection), vec!["subscribe offer not answered"]);
    assert!(
        net.closes(connection).is_empty(),
        "not a close the SDK obeys"
    );
    assert!(
        !net.shards[0].has_device(device),
        "its device is gone at once"
    );
    // Bob is untouched.
    assert!(net.shards[0].has_device(net.clients[b].device));
    // The same SDK instance reconnects: its new device numbers its offers above the old ones
    // (the SDK ignores a revision it has seen).
    let (again, fresh) = net.connect_again(a, "a-1");
    assert_ne!(fresh, device);
    let last = revisions.last().copied().unwrap_or(0);
    let next = net.offer_revisions(again);
    assert!(
        next.first().is_some_and(|&r| r > last),
        "offers after the reset {next:?}, before {revisions:?}"
    );
}
