-- Whether an account receives patchbay's `onActiveSpeaker` webhook (issue 21): off unless
-- the account turns it on (`PUT /v1/accounts/{a}/webhooks`, `activeSpeakerEvents`).
-- PostgreSQL dialect. Never edit a released migration; add a new one.
ALTER TABLE accounts ADD COLUMN webhook_active_speaker BIGINT NOT NULL DEFAULT 0;
