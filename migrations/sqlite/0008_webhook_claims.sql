-- Issue 20: several serving processes on one database deliver each webhook attempt once. A
-- process claims an outbox event for the length of one attempt before it sends it; the claim
-- ends with the attempt's record, or by itself at claimed_until (epoch milliseconds) if the
-- process died meanwhile. claimed_by names the process, for operators.
ALTER TABLE webhook_outbox ADD COLUMN claimed_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT;
