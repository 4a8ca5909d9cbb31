-- A `concurrent` patch runs on every node at once, outside any transaction,
-- one statement at a time: the only way CREATE INDEX CONCURRENTLY can run.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_id_idx ON orders (customer_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_placed_at_idx ON orders (placed_at);
