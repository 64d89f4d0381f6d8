-- no-transaction
-- What the retention task (platform::retention) deletes by age: records of events applied
-- long ago. Built concurrently, as 0002 is, so that consumers go on recording meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS processed_events_age ON processed_events (processed_at);
