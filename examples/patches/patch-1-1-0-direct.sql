-- Consecutive patches of one type form a group: 1-0-0 and 1-1-0 are applied
-- by the same invocation.
CREATE FUNCTION order_total_euros(cents bigint) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    -- A `;` inside a dollar-quoted body does not end the statement.
    RETURN round(cents / 100.0, 2);
END;
$fn$;
