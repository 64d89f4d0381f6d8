-- One checkout session per order; the hosted page pays it.
CREATE TABLE sessions (
    id             UUID PRIMARY KEY,
    order_id       UUID        NOT NULL UNIQUE,
    user_id        UUID        NOT NULL,
    amount         BIGINT      NOT NULL CHECK (amount >= 0),
    currency       TEXT        NOT NULL,
    lines          JSONB       NOT NULL,
    status         TEXT        NOT NULL CHECK (status IN ('open', 'succeeded', 'failed', 'expired', 'cancelled')),
    expires_at     TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sessions_open_expiry ON sessions (expires_at) WHERE status = 'open';

-- A charge: only the card's brand and last four digits are ever kept.
CREATE TABLE payments (
    id             UUID PRIMARY KEY,
    session_id     UUID        NOT NULL UNIQUE REFERENCES sessions (id),
    order_id       UUID        NOT NULL,
    user_id        UUID        NOT NULL,
    amount         BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    status         TEXT        NOT NULL CHECK (status IN ('succeeded', 'failed', 'refunded')),
    card_brand     TEXT,
    card_last4     TEXT,
    failure_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    refunded_at    TIMESTAMPTZ
);
CREATE INDEX payments_user ON payments (user_id, created_at DESC);
CREATE INDEX payments_order ON payments (order_id);

-- Provider callbacks already applied: a replayed webhook changes nothing.
CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
