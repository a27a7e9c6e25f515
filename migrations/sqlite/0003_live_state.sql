-- What each running server process has live, for the operator commands (`patchbay session
-- list`, `patchbay session inspect`): the processes and when each was last seen, the devices
-- (browsers and phone calls) connected to them, and the streams those devices publish. Rows
-- are written by the process that holds the device; a process not seen for a minute is
-- pruned with its rows by the others. sqlite dialect. Never edit a released migration; add a new one.
CREATE TABLE server_instances (
    id         TEXT PRIMARY KEY,
    address    TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
);

CREATE TABLE live_devices (
    instance_id    TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    device         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    connected_at   INTEGER NOT NULL,
    PRIMARY KEY (participant_id, device)
);
CREATE INDEX live_devices_by_instance ON live_devices(instance_id);

CREATE TABLE live_streams (
    instance_id    TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    alias          TEXT,
    audio          INTEGER NOT NULL,
    video          INTEGER NOT NULL,
    published_at   INTEGER NOT NULL,
    PRIMARY KEY (participant_id, stream_id)
);
CREATE INDEX live_streams_by_instance ON live_streams(instance_id);
