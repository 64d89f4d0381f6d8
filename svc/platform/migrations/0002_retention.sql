-- What the retention task (platform::retention) deletes by age: outbox rows relayed long ago,
-- and records of events applied long ago. Indexed so that finding them reads only them.
CREATE INDEX IF NOT EXISTS outbox_relayed ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (processed_at);
