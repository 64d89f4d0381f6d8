-- Orders whose refund has been told: a payment's success handled after its refund (it
-- waited for a retry) would otherwise confirm an order the customer was told is refunded.
CREATE TABLE refunded_orders (
    order_id   UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
