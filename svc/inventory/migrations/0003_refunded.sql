-- A reservation released before its order's payment was seen, and then refunded: a late
-- payment event takes no stock for it.
ALTER TABLE reservations DROP CONSTRAINT reservations_status_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_status_check
    CHECK (status IN ('held', 'committed', 'released', 'restocked', 'refunded'));
