CREATE TABLE carts (
    user_id    UUID PRIMARY KEY,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX carts_idle ON carts (updated_at);

CREATE TABLE cart_items (
    user_id    UUID        NOT NULL REFERENCES carts (user_id) ON DELETE CASCADE,
    product_id UUID        NOT NULL,
    quantity   INT         NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, product_id)
);
