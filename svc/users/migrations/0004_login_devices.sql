-- Devices an account has signed in on (OWASP's "device cookie"): a login that presents the
-- token of one is judged by that device's own failed logins, not by its email's, so that
-- failures from elsewhere, which lock the email out, cannot lock the owner out of a device
-- already used. Only the token's SHA-256 is kept; a device unused for a while is forgotten.
CREATE TABLE login_devices (
    token_hash   BYTEA PRIMARY KEY,
    user_id      UUID        NOT NULL REFERENCES users (id),
    last_used_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX login_devices_user ON login_devices (user_id, last_used_at);
CREATE INDEX login_devices_last_used ON login_devices (last_used_at);
