-- Baseline. A `direct` patch runs on every node, each in its own transaction.
-- On a logical-replication cluster (or a fleet of same-schema databases) that
-- is how tables get created: replication carries rows, not DDL.
CREATE TABLE customer (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customer (id),
    total_cents  bigint NOT NULL CHECK (total_cents >= 0),
    placed_at    timestamptz NOT NULL DEFAULT now()
);
