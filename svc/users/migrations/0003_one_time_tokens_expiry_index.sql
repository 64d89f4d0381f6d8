-- no-transaction
-- What retention deletes by expiry: verification and password-reset links. Built
-- concurrently, as 0002; a build that fails leaves an invalid index: drop it
-- (DROP INDEX one_time_tokens_expiry) before the service starts again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS one_time_tokens_expiry ON one_time_tokens (expires_at);
