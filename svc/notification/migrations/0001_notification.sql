-- Who to reach: kept from UserRegistered (users owns the truth; this is notification's copy).
CREATE TABLE contacts (
    user_id    UUID PRIMARY KEY,
    email      TEXT        NOT NULL,
    name       TEXT        NOT NULL,
    phone      TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every message, from queued to sent or failed. UNIQUE (event_id, channel) is what makes
-- one event send each message once, however often the event is delivered.
CREATE TABLE notifications (
    id              UUID PRIMARY KEY,
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    user_id         UUID        NOT NULL,
    channel         TEXT        NOT NULL CHECK (channel IN ('email', 'sms')),
    recipient       TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        INT         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    -- How the message went out: smtp, log or http (null until sent).
    sent_via        TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ,
    UNIQUE (event_id, channel)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'queued';
CREATE INDEX notifications_user ON notifications (user_id, id DESC);
CREATE INDEX notifications_status ON notifications (status, id DESC);
