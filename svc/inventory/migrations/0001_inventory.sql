-- Stock per product. The checks make negative stock or over-reservation impossible whatever
-- the code above does.
CREATE TABLE stock (
    product_id   UUID PRIMARY KEY,
    on_hand      INT         NOT NULL CHECK (on_hand >= 0),
    reserved     INT         NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    safety_stock INT         NOT NULL DEFAULT 0 CHECK (safety_stock >= 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (reserved <= on_hand)
);

-- One reservation per order, all lines or none.
CREATE TABLE reservations (
    order_id   UUID PRIMARY KEY,
    status     TEXT        NOT NULL CHECK (status IN ('held', 'committed', 'released')),
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_lines (
    order_id   UUID NOT NULL REFERENCES reservations (order_id),
    product_id UUID NOT NULL REFERENCES stock (product_id),
    quantity   INT  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

-- The audit trail: one row for every change of on_hand or reserved.
CREATE TABLE stock_movements (
    id             BIGSERIAL PRIMARY KEY,
    product_id     UUID        NOT NULL,
    on_hand_delta  INT         NOT NULL,
    reserved_delta INT         NOT NULL,
    reason         TEXT        NOT NULL,
    order_id       UUID,
    actor          UUID,
    at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stock_movements_product ON stock_movements (product_id, at);
