-- A `std` patch runs on the master only, inside the claim transaction; the
-- replication engine carries its effects (here: rows) to the replicas.
INSERT INTO customer (email) VALUES ('demo@example.com');
INSERT INTO orders (customer_id, total_cents)
SELECT id, 4200 FROM customer WHERE email = 'demo@example.com';
