-- Issue 20: a process that stops beating is accounted for by one of the processes still
-- alive: that one claims it (reaped_by, until reaped_until, epoch milliseconds), writes its
-- devices' end events, then removes its rows. A claim not finished by reaped_until (the
-- claimant died too) is taken by another.
ALTER TABLE server_instances ADD COLUMN reaped_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE server_instances ADD COLUMN reaped_by TEXT;
