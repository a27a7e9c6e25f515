-- Whether an account receives patchbay's `onActiveSpeaker` webhook (issue 21): off unless
-- the account turns it on (`PUT /v1/accounts/{a}/webhooks`, `activeSpeakerEvents`).
-- sqlite dialect. Never edit a released migration; add a new one.
ALTER TABLE accounts ADD COLUMN webhook_active_speaker INTEGER NOT NULL DEFAULT 0;
