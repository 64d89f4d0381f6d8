-- no-transaction
-- The refunds the sweep takes up again: few at any time, so a partial index. Built
-- concurrently, outside a transaction, so that a large table's build blocks no writes; one
-- whose build failed is dropped and built again at the next start (platform::db::migrate).
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_refund_asked ON payments (refund_asked_at)
    WHERE status = 'succeeded' AND refund_asked_at IS NOT NULL;
