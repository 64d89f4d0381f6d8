-- no-transaction
-- What retention deletes by expiry: refresh tokens, one of which is written at every login
-- and every refresh. Built concurrently, outside a transaction, so that logins go on while a
-- large table is indexed. A build that fails leaves an invalid index: drop it and start the
-- service again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_expiry ON refresh_tokens (expires_at);
