-- Issue 22: the optional participant expiry (--participant-max-age) finds old participants
-- by creation time.
CREATE INDEX participants_by_age ON participants(created_at);
