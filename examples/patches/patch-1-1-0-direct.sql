-- A `direct` patch runs on every node, each in its own transaction: useful
-- for objects replication does not carry (functions, on logical replicas:
-- tables themselves).
CREATE FUNCTION order_total_euros(cents bigint) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    -- A `;` inside a dollar-quoted body does not end the statement.
    RETURN round(cents / 100.0, 2);
END;
$fn$;

CREATE TABLE IF NOT EXISTS node_note (note text);
