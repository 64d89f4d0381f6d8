-- When an admin asked for the payment's refund, while it waits for orders to agree: a refund
-- asked for and neither carried out nor given up (payment stopped, or orders could not be
-- reached) is taken up again by the refund sweep.
ALTER TABLE payments ADD COLUMN refund_asked_at TIMESTAMPTZ;
