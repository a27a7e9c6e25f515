-- Issue 20: a duty that one process at a time does for the whole cluster (the cleanup of
-- expired sessions and old webhook rows), held under a lease in the database's clock.
-- postgres dialect. Never edit a released migration; add a new one.
CREATE TABLE cluster_duties (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  BIGINT NOT NULL
);
