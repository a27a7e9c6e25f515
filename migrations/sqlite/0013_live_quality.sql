-- What each server process measured of its devices' media quality (issue 21), for
-- `patchbay session inspect`: one row per participant with a device there, its summary as
-- JSON text, rewritten by that process every few seconds and removed with its other live rows.
-- sqlite dialect. Never edit a released migration; add a new one.
CREATE TABLE live_quality (
    participant_id TEXT PRIMARY KEY,
    instance_id    TEXT NOT NULL,
    summary        TEXT NOT NULL,
    measured_at    BIGINT NOT NULL
);
CREATE INDEX live_quality_by_instance ON live_quality(instance_id);
