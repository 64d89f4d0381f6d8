-- no-transaction
-- What the retention task (platform::retention) deletes by age: outbox rows relayed long ago.
-- Built concurrently, outside a transaction: an outbox grown large must not stop checkouts
-- (their inserts) while the index is built. A build that fails leaves an invalid index:
-- drop it and start the service again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_relayed ON outbox (sent_at) WHERE sent_at IS NOT NULL;
