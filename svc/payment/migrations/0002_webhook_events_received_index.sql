-- no-transaction
-- What retention deletes by age: the records of provider callbacks, one per payment. Built
-- concurrently, outside a transaction, so that a large table's build blocks no writes; one
-- whose build failed is dropped and built again at the next start (platform::db::migrate).
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_received ON webhook_events (received_at);
