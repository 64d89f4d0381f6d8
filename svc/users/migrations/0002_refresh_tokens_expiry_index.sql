-- no-transaction
-- What retention deletes by expiry: refresh tokens, one of which is written at every login
-- and every refresh. Built concurrently, outside a transaction, so that a large table's build
-- blocks no writes. A build that fails leaves an invalid index, which this migration, run
-- again, would take as built (IF NOT EXISTS): drop it (DROP INDEX refresh_tokens_expiry)
-- before the service starts again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_expiry ON refresh_tokens (expires_at);
