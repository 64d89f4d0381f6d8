-- Orders whose cancellation has been told: a customer who cancels while payment's consumer is
-- behind also gets the session's expiry (payment closes it before it hears of the
-- cancellation), and would be told twice that the order was cancelled.
CREATE TABLE cancelled_orders (
    order_id   UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
