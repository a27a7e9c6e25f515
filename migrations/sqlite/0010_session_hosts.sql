-- Issue 20: placement. A session's media is served by one process (its host), recorded here
-- when its first device or phone arrives; a device that reaches another process is carried to
-- the host. epoch counts the placements of the session (it grows each time a live process
-- takes over from a dead or absent host). A process records where the others reach it:
-- cluster_address (the URL base of its device WebSocket, NULL when it cannot be reached) and
-- sip_address (host:port of its SIP listener). sqlite dialect. Never edit a released migration;
-- add a new one.
CREATE TABLE session_hosts (
    session_id  TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    placed_at   INTEGER NOT NULL
);
CREATE INDEX session_hosts_by_instance ON session_hosts(instance_id);
ALTER TABLE server_instances ADD COLUMN cluster_address TEXT;
ALTER TABLE server_instances ADD COLUMN sip_address TEXT;
