-- Webhook secret rotation (issue 22): after a rotation with a grace period, deliveries are
-- signed with the new secret and, until the grace ends, the previous one too.
-- sqlite dialect. Never edit a released migration; add a new one.
ALTER TABLE accounts ADD COLUMN webhook_secret_previous TEXT;
ALTER TABLE accounts ADD COLUMN webhook_secret_previous_until BIGINT;
