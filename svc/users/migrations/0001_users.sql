CREATE TABLE users (
    id             UUID PRIMARY KEY,
    email          TEXT        NOT NULL UNIQUE,
    name           TEXT        NOT NULL,
    phone          TEXT,
    password_hash  TEXT        NOT NULL,
    roles          TEXT[]      NOT NULL DEFAULT '{CUSTOMER}',
    email_verified BOOLEAN     NOT NULL DEFAULT false,
    active         BOOLEAN     NOT NULL DEFAULT true,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Failed logins are counted per normalised email, whether or not an account exists, so
-- that the lockout answers the same for both and reveals nothing.
CREATE TABLE login_failures (
    email        TEXT PRIMARY KEY,
    failures     INT         NOT NULL DEFAULT 0,
    first_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until TIMESTAMPTZ
);

-- Single-use tokens sent by email; only their SHA-256 is kept.
CREATE TABLE one_time_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID        NOT NULL REFERENCES users (id),
    purpose    TEXT        NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);

-- Refresh tokens rotate within a family; presenting a spent one revokes the family.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID        NOT NULL REFERENCES users (id),
    family_id  UUID        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
