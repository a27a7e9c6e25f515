-- Webhook retention (issue 22): delivered and given-up outbox events, and delivery attempts,
-- are deleted after --webhook-retention; these indexes find them by age.
-- postgres dialect. Never edit a released migration; add a new one.
CREATE INDEX webhook_outbox_by_end ON webhook_outbox(state, next_at);
CREATE INDEX webhook_attempts_by_time ON webhook_attempts(at);
