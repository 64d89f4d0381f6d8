CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    user_id          UUID        NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('PENDING', 'PAID', 'SHIPPED', 'DELIVERED', 'CANCELLED', 'REFUNDED')),
    total_amount     BIGINT      NOT NULL,
    currency         TEXT        NOT NULL,
    shipping_address TEXT        NOT NULL,
    phone            TEXT,
    payment_url      TEXT,
    status_reason    TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_status ON orders (status, created_at DESC);

-- Prices as they were at checkout, from products.
CREATE TABLE order_lines (
    order_id    UUID   NOT NULL REFERENCES orders (id),
    product_id  UUID   NOT NULL,
    name        TEXT   NOT NULL,
    unit_amount BIGINT NOT NULL,
    quantity    INT    NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

-- Every status change: from, to, cause, when.
CREATE TABLE order_history (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID        NOT NULL REFERENCES orders (id),
    from_status TEXT,
    to_status   TEXT        NOT NULL,
    cause       TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_history_order ON order_history (order_id, id);

-- Idempotency keys of checkout, scoped to the caller, kept 24 h.
CREATE TABLE idempotency_keys (
    user_id         UUID        NOT NULL,
    key             TEXT        NOT NULL,
    request_hash    TEXT        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('running', 'done')),
    response_status INT,
    response_body   JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
