-- no-transaction
-- What retention deletes by age: the records of cancellations told. Built concurrently,
-- outside a transaction, so that a large table's build blocks no writes; one whose build
-- failed is dropped and built again at the next start (platform::db::migrate).
CREATE INDEX CONCURRENTLY IF NOT EXISTS cancelled_orders_created ON cancelled_orders (created_at);
