-- Webhooks: each account's signing secret and event filter, the durable outbox of events
-- waiting for delivery (in order per participant), and the log of delivery attempts.
-- sqlite dialect. Never edit a released migration; add a new one.
ALTER TABLE accounts ADD COLUMN webhook_secret TEXT;
ALTER TABLE accounts ADD COLUMN webhook_bandwidth_only INTEGER NOT NULL DEFAULT 0;

CREATE TABLE webhook_outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    account_id     TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    url            TEXT NOT NULL,
    event          TEXT NOT NULL,
    body           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        INTEGER NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX webhook_outbox_queue ON webhook_outbox(state, participant_id, seq);

CREATE TABLE webhook_attempts (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL,
    account_id     TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    event          TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    status         INTEGER,
    error          TEXT,
    at             INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_by_participant ON webhook_attempts(account_id, participant_id, seq);

CREATE INDEX sessions_by_age ON sessions(created_at);
