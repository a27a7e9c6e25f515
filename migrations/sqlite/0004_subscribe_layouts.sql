-- What a device's connections need to be resumed by another process (issue 19).
--
-- What each device's subscribe connection looks like to the device (its SDK instance, the
-- highest sdpRevision offered to it, its m-lines in order with their mids and what each
-- carries; JSON, see domain::SubscribeLayout). Written by the media plane after every offer,
-- read when the same SDK instance connects to a process that never met it (a restart), so
-- that process can offer a connection the SDK accepts. One row per participant (one device
-- each); removed with the participant, and when its device leaves. sqlite dialect. Never edit a
-- released migration; add a new one.
CREATE TABLE subscribe_layouts (
    participant_id TEXT PRIMARY KEY REFERENCES participants(id) ON DELETE CASCADE,
    unique_id      TEXT NOT NULL,
    revision       INTEGER NOT NULL,
    layout         TEXT NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- The ICE credentials of each device's publish connection (the server's ufrag and password on
-- it), so that the process after this one can answer that connection's consent checks with a
-- signed error and the browser renegotiates at once. One row per participant; removed with
-- the participant, and when its device leaves.
CREATE TABLE publish_credentials (
    participant_id TEXT PRIMARY KEY REFERENCES participants(id) ON DELETE CASCADE,
    unique_id      TEXT NOT NULL,
    ufrag          TEXT NOT NULL,
    pwd            TEXT NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- Each phone call's dialog and media (JSON, written by the SIP bridge: the dialog's Call-ID,
-- tags, parties, remote target, route set and CSeqs, the phone's address, the RTP port and
-- the negotiated codec), so that the process after this one binds the same RTP port and takes
-- the call over without a new INVITE, or sends it a BYE when it cannot. One row per
-- participant (one call each); removed when the call ends. Not removed with the participant: a
-- participant deleted while no process carried its call still gets its BYE from the next.
CREATE TABLE phone_calls (
    participant_id TEXT PRIMARY KEY,
    call           TEXT NOT NULL,
    record         TEXT NOT NULL,
    updated_at     INTEGER NOT NULL
);
