-- patchbay schema, SQLite dialect. Never edit a released migration; add a new one.
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    password_sha256 TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    tag          TEXT,
    lock_version INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);

CREATE TABLE participants (
    id                    TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL REFERENCES accounts(id),
    callback_url          TEXT,
    publish_permissions   TEXT NOT NULL,
    tag                   TEXT,
    device_api_version    TEXT NOT NULL,
    session_id            TEXT REFERENCES sessions(id),
    subscribed_session_id TEXT,
    created_at            INTEGER NOT NULL
);
CREATE INDEX participants_by_session ON participants(session_id);

CREATE TABLE subscriptions (
    subscriber_id  TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
    publisher_id   TEXT NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    stream_aliases TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, publisher_id)
);
CREATE INDEX subscriptions_by_publisher ON subscriptions(publisher_id);
