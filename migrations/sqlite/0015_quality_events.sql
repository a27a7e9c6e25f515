-- Whether an account receives patchbay's `onQualityChanged` webhook (issue 21): off unless
-- the account turns it on (`PUT /v1/accounts/{a}/webhooks`, `qualityEvents`).
-- sqlite dialect. Never edit a released migration; add a new one.
ALTER TABLE accounts ADD COLUMN webhook_quality INTEGER NOT NULL DEFAULT 0;
