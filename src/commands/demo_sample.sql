-- The sample `pgtransit demo` migrates: a small shop with an enum, a free-standing sequence,
-- identity and serial columns, foreign keys (one with ON DELETE CASCADE), a CHECK constraint,
-- two triggers (one rewrites rows, one draws from the sequence), a text search configuration
-- with an index that uses it (its DDL is pg_dump's), and notes whose archive inherits from them
-- (each table keeps exactly its own rows); roles that read and write it, and the database's
-- own settings.
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');

CREATE SEQUENCE invoice_number_seq START 1000;

CREATE TABLE customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   text NOT NULL UNIQUE,
    title text NOT NULL,
    price numeric(10, 2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE orders (
    id             bigserial PRIMARY KEY,
    customer_id    bigint NOT NULL REFERENCES customers (id),
    status         order_status NOT NULL DEFAULT 'pending',
    invoice_number bigint UNIQUE,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id integer NOT NULL REFERENCES products (id),
    quantity   integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE FUNCTION assign_invoice_number() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'paid' AND NEW.invoice_number IS NULL THEN
        NEW.invoice_number := nextval('invoice_number_seq');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER orders_invoice BEFORE INSERT OR UPDATE OF status ON orders
    FOR EACH ROW EXECUTE FUNCTION assign_invoice_number();

INSERT INTO customers (email, name)
SELECT 'customer' || i || '@example.com', 'Customer ' || i FROM generate_series(1, 1000) i;

INSERT INTO products (sku, title, price)
SELECT 'SKU-' || lpad(i::text, 5, '0'), 'Product ' || i, (i % 97) + 0.99
FROM generate_series(1, 200) i;

INSERT INTO orders (customer_id)
SELECT 1 + (i * 7919) % 1000 FROM generate_series(1, 5000) i;

INSERT INTO order_items (order_id, product_id, quantity, unit_price)
SELECT o.id, 1 + (o.id + k * 61) % 200, k, ((o.id * k) % 97) + 0.99
FROM orders o, generate_series(1, 3) k;

UPDATE orders SET status = 'paid' WHERE id % 3 = 0;

-- A larger table, so the load takes long enough to watch its progress.
CREATE TABLE order_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders (id),
    kind     text NOT NULL,
    payload  jsonb NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order_id ON order_events (order_id);

INSERT INTO order_events (order_id, kind, payload)
SELECT 1 + i % 5000, (ARRAY['viewed', 'paid', 'shipped'])[1 + i % 3],
       jsonb_build_object('session', md5(i::text), 'agent', 'demo/' || (i % 17), 'n', i)
FROM generate_series(1, 400000) i;

-- Search: a text search configuration of the shop's own, and an index that uses it.
CREATE TEXT SEARCH CONFIGURATION shop_search (COPY = english);
CREATE INDEX products_search ON products USING gin (to_tsvector('shop_search', title));

-- Notes, and their archive, which inherits from them: each table has rows of its own.
CREATE TABLE order_notes (
    id       bigint PRIMARY KEY,
    order_id bigint NOT NULL,
    note     text NOT NULL
);
CREATE TABLE order_notes_archive (PRIMARY KEY (id)) INHERITS (order_notes);
INSERT INTO order_notes SELECT i, i, 'note ' || i FROM generate_series(1, 500) i;
INSERT INTO order_notes_archive SELECT i, i, 'archived ' || i FROM generate_series(501, 5000) i;

-- Who uses the shop: a group that reads, one that writes (a member of the first), and the
-- application's login role, a member of the writers with a SCRAM password and a setting of its
-- own; and the database's own settings. The migration plan creates the roles as they are here.
SET password_encryption = 'scram-sha-256';
CREATE ROLE shop_readers NOLOGIN;
CREATE ROLE shop_writers NOLOGIN IN ROLE shop_readers;
CREATE ROLE shop_app LOGIN PASSWORD 'demo-only' CONNECTION LIMIT 20 IN ROLE shop_writers;
ALTER ROLE shop_app SET statement_timeout = '30s';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shop_readers;
GRANT INSERT, UPDATE, DELETE ON orders, order_events TO shop_writers;
ALTER DATABASE shop SET work_mem = '16MB';
COMMENT ON DATABASE shop IS 'the pgtransit demo''s shop';

ANALYZE;
