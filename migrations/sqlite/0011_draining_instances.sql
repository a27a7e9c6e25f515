-- Issue 20: a process that drains before it stops says so with its heartbeats; the others then
-- place no new session on it. sqlite dialect. Never edit a released migration; add a new one.
ALTER TABLE server_instances ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
