//! Round trips on real servers: read a source database, create every object on an empty target
//! database in [`creation_order`] (as the planner will: `create_statements`, or `align_metadata`
//! for what a fresh database already has), and require `pg_dump --schema-only` of both to be
//! the same, line for line. Plus: reading thousands of tables takes a fixed number of queries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_postgres::{Client, NoTls};

use super::*;
use crate::cluster::{ClusterOptions, LocalCluster};

fn start(name: &str) -> LocalCluster {
    LocalCluster::start(ClusterOptions { name: name.into(), ..ClusterOptions::default() })
        .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"))
}

/// Source and target clusters, started at the same time, with `roles` created on both.
fn two_clusters(test: &str, roles: &str) -> (LocalCluster, LocalCluster) {
    let (source, target) = std::thread::scope(|s| {
        let a = s.spawn(|| start(&format!("{test}-src")));
        let b = s.spawn(|| start(&format!("{test}-dst")));
        (a.join().unwrap(), b.join().unwrap())
    });
    if !roles.is_empty() {
        for c in [&source, &target] {
            c.psql("postgres", roles).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    (source, target)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(c: &LocalCluster, db: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&c.conninfo(db), NoTls).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn version_num(client: &Client) -> i32 {
    let row = client.query_one("SELECT current_setting('server_version_num')::int4", &[]).await;
    row.unwrap().get(0)
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// `pg_dump --schema-only` of `db`, with a fixed `\restrict` key.
fn dump(c: &LocalCluster, db: &str) -> String {
    let mut cmd = Command::new(c.bin("pg_dump"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .args(["--schema-only", "--no-sync", "--restrict-key=pgtransitobjects", "-d"])
        .arg(c.conninfo(db))
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 dump")
}

/// A unified diff of two texts (empty when equal).
fn unified_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix =
        a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    if a_mid.is_empty() && b_mid.is_empty() {
        return String::new();
    }
    // Longest common subsequence of the middle parts.
    let (n, m) = (a_mid.len(), b_mid.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a_mid[i] == b_mid[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("--- source\n+++ target\n@@ -{} +{} @@\n", prefix + 1, prefix + 1);
    let context = prefix.saturating_sub(3);
    for line in &a[context..prefix] {
        out.push_str(&format!(" {line}\n"));
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a_mid[i] == b_mid[j] {
            out.push_str(&format!(" {}\n", a_mid[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{}\n", b_mid[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{}\n", a_mid[i]));
            i += 1;
        }
    }
    for line in a[a.len() - suffix..].iter().take(3) {
        out.push_str(&format!(" {line}\n"));
    }
    out
}

fn identity(role: &str) -> Option<String> {
    Some(role.to_string())
}

/// Creates `source`'s objects in `target_db` as the planner does, and returns the target's
/// objects afterwards.
async fn create_on_target(
    source: &[SchemaObject],
    target: &LocalCluster,
    target_db: &str,
) -> Vec<SchemaObject> {
    let client = connect(target, target_db).await;
    let version = version_num(&client).await;
    let existing = read_snapshot(&client, version).await.unwrap_or_else(|e| panic!("{e}"));
    let existing: HashMap<&ObjectKey, &SchemaObject> =
        existing.iter().map(|o| (&o.key, o)).collect();
    let order = creation_order(source).unwrap_or_else(|e| panic!("{e}"));
    client.batch_execute("SET check_function_bodies = false").await.unwrap();
    for i in order {
        let object = &source[i];
        let statements = match existing.get(&object.key) {
            Some(there) => object.align_metadata(there, &identity).unwrap_or_else(|| {
                panic!(
                    "{} exists on the target with other DDL:\n{:#?}\nvs\n{:#?}",
                    object.key, object.ddl, there.ddl
                )
            }),
            None => object.create_statements(&identity),
        };
        for statement in statements {
            if let Err(e) = client.batch_execute(&statement).await {
                panic!("creating {}: {}\n{statement}", object.key, pg_error(&e));
            }
        }
    }
    read_snapshot(&client, version).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Reads `source_db`, creates it all in a new `target_db`, and compares dumps and definitions.
/// `expect`: text the source's dump must contain (the fixture did load).
fn round_trip(
    source: &LocalCluster,
    source_db: &str,
    target: &LocalCluster,
    target_db: &str,
    expect: &[&str],
) -> Vec<SchemaObject> {
    target.create_database(target_db).unwrap();
    let (objects, created) = runtime().block_on(async {
        let client = connect(source, source_db).await;
        let version = version_num(&client).await;
        let objects = read_snapshot(&client, version).await.unwrap_or_else(|e| panic!("{e}"));
        let created = create_on_target(&objects, target, target_db).await;
        (objects, created)
    });
    let (source_dump, target_dump) = (dump(source, source_db), dump(target, target_db));
    for text in expect {
        assert!(source_dump.contains(text), "the source's dump lacks {text:?}");
    }
    let diff = unified_diff(&source_dump, &target_dump);
    assert!(diff.is_empty(), "pg_dump --schema-only differs:\n{diff}");

    // Read back, the target has the same objects with the same definitions, and nothing is left
    // to align.
    let by_key: HashMap<&ObjectKey, &SchemaObject> = created.iter().map(|o| (&o.key, o)).collect();
    let mut problems = Vec::new();
    for o in &objects {
        match by_key.get(&o.key) {
            None => problems.push(format!("missing on the target: {}", o.key)),
            Some(t) => {
                if o.definition(&identity) != t.definition(&identity) {
                    problems.push(format!(
                        "{} differs:\n{}\n---\n{}",
                        o.key,
                        o.definition(&identity),
                        t.definition(&identity)
                    ));
                }
                if o.align_metadata(t, &identity) != Some(Vec::new()) {
                    problems.push(format!("{} still needs aligning", o.key));
                }
                if o.depends_on != t.depends_on {
                    problems.push(format!(
                        "{} depends on {:?} on the source, {:?} on the target",
                        o.key, o.depends_on, t.depends_on
                    ));
                }
            }
        }
    }
    if created.len() != objects.len() {
        problems.push(format!(
            "{} objects on the source, {} on the target",
            objects.len(),
            created.len()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    objects
}

fn pagila_schema() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/pagila/schema.sql");
    assert!(path.exists(), "the pagila fixture is missing at {}", path.display());
    path
}

#[test]
fn pagila_round_trip_gives_the_same_dump() {
    let (source, target) = two_clusters("objpagila", "");
    source.create_database("pagila").unwrap();
    source.psql_file("pagila", &pagila_schema()).unwrap_or_else(|e| panic!("{e}"));
    let objects = round_trip(
        &source,
        "pagila",
        &target,
        "pagila copy",
        &[
            "CREATE TABLE public.film (",
            "CREATE AGGREGATE public.group_concat(text)",
            "ALTER TABLE ONLY public.payment ATTACH PARTITION public.payment_p2022_07",
            "CREATE MATERIALIZED VIEW public.rental_by_category",
            "ALTER SCHEMA public OWNER TO postgres;",
        ],
    );
    let film =
        objects.iter().find(|o| o.key == ObjectKey::new(ObjectKind::Table, "public", "film"));
    let info = film.and_then(|o| o.table_info.as_ref()).expect("table film");
    assert_eq!(info.primary_key_columns, ["film_id"]);
    assert!(objects.iter().any(|o| o.key.kind == ObjectKind::Aggregate));
}

/// Roles the awkward schema grants to (cluster-wide, so created on both clusters).
const AWKWARD_ROLES: &str = r#"
CREATE ROLE app_reader;
CREATE ROLE app_writer;
CREATE ROLE "App Owner";
CREATE ROLE "Weird ""Role""";
"#;

/// Everything hard at once: names that need quoting, partitions, identity and generated
/// columns, FK cycles, triggers in every state, inheritance, every kind of type, every kind of
/// index, RLS, rules, a matview, comments, grants.
const AWKWARD_SCHEMA: &str = r#"
CREATE SCHEMA "Sales Dept";
CREATE SCHEMA "select";
CREATE SCHEMA extensions;
CREATE EXTENSION citext;
CREATE EXTENSION hstore WITH SCHEMA extensions;
COMMENT ON SCHEMA "Sales Dept" IS 'the "sales" schema, it''s awkward';
COMMENT ON SCHEMA public IS 'not the standard one';
GRANT USAGE ON SCHEMA public TO app_reader;
GRANT USAGE ON SCHEMA "Sales Dept" TO app_reader, app_writer;
GRANT ALL ON SCHEMA "select" TO PUBLIC;

-- Types.
CREATE TYPE "Sales Dept"."Order Status" AS ENUM ('new', 'paid', 'it''s shipped', 'cancelled');
ALTER TYPE "Sales Dept"."Order Status" ADD VALUE 'refunded' BEFORE 'cancelled';
CREATE TYPE "Sales Dept".address AS (street text, "City" text COLLATE "C", zip varchar(10));
COMMENT ON COLUMN "Sales Dept".address.zip IS 'postal code';
CREATE FUNCTION "Sales Dept".time_diff(a time, b time) RETURNS float8
    LANGUAGE sql IMMUTABLE STRICT AS 'SELECT EXTRACT(EPOCH FROM (a - b))';
CREATE TYPE "Sales Dept".timerange AS RANGE (subtype = time, subtype_diff = "Sales Dept".time_diff);
CREATE TYPE "select"."Text Range" AS RANGE (subtype = text, collation = "C");
CREATE DOMAIN "Sales Dept"."Positive Amount" AS numeric(12,2) DEFAULT 0 NOT NULL
    CONSTRAINT "amount >= 0" CHECK (VALUE >= 0) CONSTRAINT not_huge CHECK (VALUE < 1000000);
COMMENT ON CONSTRAINT not_huge ON DOMAIN "Sales Dept"."Positive Amount" IS 'sanity';
CREATE DOMAIN "Sales Dept".code AS text COLLATE "C" CHECK (VALUE ~ '^[A-Z]+$');
ALTER DOMAIN "Sales Dept".code ADD CONSTRAINT code_len CHECK (length(VALUE) < 10) NOT VALID;
COMMENT ON DOMAIN "Sales Dept".code IS 'upper-case code';
GRANT USAGE ON TYPE "Sales Dept"."Order Status" TO app_reader;
REVOKE USAGE ON DOMAIN "Sales Dept".code FROM PUBLIC;
ALTER TYPE "Sales Dept".address OWNER TO "App Owner";
ALTER DOMAIN "Sales Dept"."Positive Amount" OWNER TO "App Owner";

-- A sequence no column owns, and one owned without being a default.
CREATE SEQUENCE "Sales Dept"."Invoice Numbers" AS integer START WITH 1000 INCREMENT BY 10
    MAXVALUE 999999 CYCLE CACHE 5;
GRANT USAGE ON SEQUENCE "Sales Dept"."Invoice Numbers" TO app_writer;
COMMENT ON SEQUENCE "Sales Dept"."Invoice Numbers" IS 'invoices';
CREATE UNLOGGED SEQUENCE "select".scratch_seq;

-- Functions, procedures, aggregates.
CREATE FUNCTION "Sales Dept".touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW."Updated At" := now();
    NEW.note := upper(NEW.note);
    RETURN NEW;
END
$$;
CREATE FUNCTION "select"."order"(x integer) RETURNS integer LANGUAGE sql IMMUTABLE
    AS 'SELECT x + 1';
REVOKE EXECUTE ON FUNCTION "select"."order"(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "select"."order"(integer) TO app_reader;
COMMENT ON FUNCTION "select"."order"(integer) IS 'next';
SET check_function_bodies = false;
CREATE FUNCTION "select".log_count() RETURNS bigint LANGUAGE sql STABLE
    AS 'SELECT count(*) FROM "select".log';
RESET check_function_bodies;
CREATE FUNCTION "Sales Dept"."Secure One"(a text DEFAULT 'x', VARIADIC b int[] DEFAULT '{}')
    RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog COST 5 ROWS 7
    AS $$ BEGIN RETURN NEXT a; END $$;
ALTER FUNCTION "Sales Dept"."Secure One"(text, int[]) OWNER TO "App Owner";
CREATE AGGREGATE "Sales Dept".concat_all(text) (SFUNC = textcat, STYPE = text, INITCOND = '');
CREATE AGGREGATE "Sales Dept"."my sum"(numeric) (
    SFUNC = numeric_add, STYPE = numeric, INITCOND = '0', COMBINEFUNC = numeric_add,
    MSFUNC = numeric_add, MINVFUNC = numeric_sub, MSTYPE = numeric, MINITCOND = '0',
    PARALLEL = SAFE);
CREATE AGGREGATE "Sales Dept".pct(float8 ORDER BY anyelement) (
    SFUNC = ordered_set_transition, STYPE = internal,
    FINALFUNC = percentile_disc_final, FINALFUNC_EXTRA);
COMMENT ON AGGREGATE "Sales Dept".pct(float8 ORDER BY anyelement) IS 'ordered-set';
REVOKE ALL ON FUNCTION "Sales Dept".concat_all(text) FROM PUBLIC;

-- Tables.
CREATE TABLE "Sales Dept"."Customers" (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 5) PRIMARY KEY,
    "Name" citext NOT NULL,
    email text COLLATE "C" UNIQUE,
    referrer_id bigint REFERENCES "Sales Dept"."Customers" (id) ON DELETE SET NULL,
    address "Sales Dept".address,
    "order" int DEFAULT "select"."order"(1),
    note text,
    attrs extensions.hstore,
    CONSTRAINT "Name not empty" CHECK ("Name" <> '')
);
ALTER TABLE "Sales Dept"."Customers" ALTER COLUMN email SET STATISTICS 500;
ALTER TABLE "Sales Dept"."Customers" ALTER COLUMN "Name" SET (n_distinct = 100);
ALTER TABLE "Sales Dept"."Customers" ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER TABLE "Sales Dept"."Customers" ALTER COLUMN note SET COMPRESSION pglz;
ALTER TABLE "Sales Dept"."Customers" SET (fillfactor = 80, autovacuum_enabled = false,
    toast.autovacuum_enabled = false);
COMMENT ON TABLE "Sales Dept"."Customers" IS 'who buys';
COMMENT ON COLUMN "Sales Dept"."Customers"."Name" IS 'case-insensitive';
COMMENT ON CONSTRAINT "Name not empty" ON "Sales Dept"."Customers" IS 'inline check';
COMMENT ON CONSTRAINT "Customers_pkey" ON "Sales Dept"."Customers" IS 'the key';

CREATE TABLE "Sales Dept"."Orders" (
    "Order ID" bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    status "Sales Dept"."Order Status" NOT NULL DEFAULT 'new',
    amount "Sales Dept"."Positive Amount",
    quantity int NOT NULL DEFAULT 1,
    obsolete int,
    unit_price numeric(10,2) NOT NULL DEFAULT 0,
    total numeric GENERATED ALWAYS AS (quantity * unit_price) STORED,
    "Updated At" timestamptz,
    note text,
    tags text[],
    during tstzrange,
    invoice int DEFAULT nextval('"Sales Dept"."Invoice Numbers"'),
    code "Sales Dept".code,
    CONSTRAINT qty_positive CHECK (quantity > 0)
);
ALTER TABLE "Sales Dept"."Orders" DROP COLUMN obsolete;
ALTER TABLE "Sales Dept"."Orders" ADD CONSTRAINT "orders→customers" FOREIGN KEY (customer_id)
    REFERENCES "Sales Dept"."Customers" (id) ON UPDATE CASCADE ON DELETE RESTRICT
    DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE "Sales Dept"."Orders" ADD CONSTRAINT big_amount CHECK (amount < 500000) NOT VALID;
COMMENT ON CONSTRAINT big_amount ON "Sales Dept"."Orders" IS 'not valid yet';
ALTER TABLE "Sales Dept"."Customers" ADD COLUMN last_order bigint;
ALTER TABLE "Sales Dept"."Customers" ADD CONSTRAINT last_order_fk FOREIGN KEY (last_order)
    REFERENCES "Sales Dept"."Orders" ("Order ID") DEFERRABLE;
ALTER TABLE "Sales Dept"."Orders" REPLICA IDENTITY FULL;
ALTER TABLE "Sales Dept"."Orders" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "Sales Dept"."Orders" FORCE ROW LEVEL SECURITY;

CREATE TABLE "Sales Dept".reservations (
    id int PRIMARY KEY,
    during tsrange,
    slot "Sales Dept".timerange,
    EXCLUDE USING gist (during WITH &&)
);
ALTER TABLE "Sales Dept".reservations REPLICA IDENTITY USING INDEX reservations_pkey;

-- Indexes of every kind.
CREATE INDEX "Orders by status" ON "Sales Dept"."Orders" (status) WHERE status <> 'cancelled';
CREATE INDEX orders_lower_note ON "Sales Dept"."Orders" (lower(note));
ALTER INDEX "Sales Dept".orders_lower_note ALTER COLUMN 1 SET STATISTICS 200;
CREATE UNIQUE INDEX ON "Sales Dept"."Orders" (customer_id, "Order ID") INCLUDE (amount);
CREATE INDEX ON "Sales Dept"."Orders" USING gin (tags);
CREATE INDEX ON "Sales Dept"."Orders" USING gist (during);
CREATE INDEX ON "Sales Dept"."Orders" USING brin ("Updated At") WITH (pages_per_range = 32);
CREATE INDEX ON "Sales Dept"."Orders" USING hash (note);
CLUSTER "Sales Dept"."Orders" USING "Orders_pkey";
COMMENT ON INDEX "Sales Dept"."Orders by status" IS 'partial';

-- Triggers in every state.
CREATE TRIGGER "Touch!" BEFORE INSERT OR UPDATE ON "Sales Dept"."Orders"
    FOR EACH ROW EXECUTE FUNCTION "Sales Dept".touch();
CREATE TRIGGER audit_off AFTER DELETE ON "Sales Dept"."Orders"
    FOR EACH ROW WHEN (OLD.amount > 100) EXECUTE FUNCTION "Sales Dept".touch();
ALTER TABLE "Sales Dept"."Orders" DISABLE TRIGGER audit_off;
CREATE TRIGGER replica_only BEFORE UPDATE OF note ON "Sales Dept"."Customers"
    FOR EACH ROW EXECUTE FUNCTION "Sales Dept".touch();
ALTER TABLE "Sales Dept"."Customers" ENABLE REPLICA TRIGGER replica_only;
CREATE TRIGGER "always" BEFORE INSERT ON "Sales Dept"."Customers"
    FOR EACH ROW EXECUTE FUNCTION "Sales Dept".touch();
ALTER TABLE "Sales Dept"."Customers" ENABLE ALWAYS TRIGGER "always";
CREATE CONSTRAINT TRIGGER late AFTER INSERT ON "Sales Dept"."Orders"
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "Sales Dept".touch();
COMMENT ON TRIGGER "Touch!" ON "Sales Dept"."Orders" IS 'rewrites rows';

-- Collations, and default privileges that apply to what follows on the source.
CREATE COLLATION "select"."Case Insensitive" (provider = icu, locale = 'und-u-ks-level2',
    deterministic = false);
CREATE COLLATION "select".c_copy (locale = 'C');
COMMENT ON COLLATION "select".c_copy IS 'libc';
ALTER COLLATION "select"."Case Insensitive" OWNER TO "App Owner";
CREATE TABLE "select".names (
    n text COLLATE "select"."Case Insensitive",
    m text COLLATE "select".c_copy
);
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO app_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE "App Owner" IN SCHEMA "Sales Dept"
    GRANT USAGE ON SEQUENCES TO app_writer;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE app_writer REVOKE ALL ON TYPES FROM PUBLIC;

-- Partitions: range with a default, nested list, one attached with its own index names.
CREATE TABLE "Sales Dept".events (
    id bigint NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    customer_id bigint REFERENCES "Sales Dept"."Customers" (id),
    payload jsonb DEFAULT '{}',
    CONSTRAINT kind_ok CHECK (kind <> '')
) PARTITION BY RANGE (at);
CREATE TABLE "Sales Dept"."events 2024" PARTITION OF "Sales Dept".events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE "Sales Dept".events_2025 PARTITION OF "Sales Dept".events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (kind);
CREATE TABLE "Sales Dept".events_2025_click PARTITION OF "Sales Dept".events_2025
    FOR VALUES IN ('click', 'tap');
CREATE TABLE "Sales Dept".events_2025_other PARTITION OF "Sales Dept".events_2025 DEFAULT;
CREATE TABLE "Sales Dept".events_default PARTITION OF "Sales Dept".events DEFAULT;
ALTER TABLE "Sales Dept".events ADD PRIMARY KEY (id, at, kind);
CREATE INDEX ON "Sales Dept".events (kind);
CREATE INDEX events_payload ON ONLY "Sales Dept".events USING gin (payload);
CREATE TABLE "Sales Dept".events_2023 (LIKE "Sales Dept".events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
CREATE INDEX "my kind index" ON "Sales Dept".events_2023 (kind);
ALTER TABLE "Sales Dept".events ATTACH PARTITION "Sales Dept".events_2023
    FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TRIGGER ev_touch BEFORE INSERT ON "Sales Dept".events
    FOR EACH ROW EXECUTE FUNCTION "Sales Dept".touch();
ALTER TABLE "Sales Dept"."events 2024" DISABLE TRIGGER ev_touch;
CREATE INDEX own_index ON "Sales Dept"."events 2024" (customer_id);
COMMENT ON TABLE "Sales Dept"."events 2024" IS 'a partition';

CREATE TABLE "select"."Regions" (code text NOT NULL, name text) PARTITION BY LIST (code);
CREATE TABLE "select"."Regions EU" PARTITION OF "select"."Regions" FOR VALUES IN ('de', 'fr');
CREATE TABLE "select".regions_us PARTITION OF "select"."Regions" FOR VALUES IN ('us');

-- Inheritance.
CREATE TABLE "select".base (
    id int NOT NULL,
    created date DEFAULT current_date,
    CONSTRAINT base_id CHECK (id > 0)
);
CREATE TABLE "select".other (z text);
CREATE TABLE "select"."child" (extra text, id int) INHERITS ("select".base);
CREATE TABLE "select".child2 (more int) INHERITS ("select".base, "select".other);
ALTER TABLE "select".child2 ALTER COLUMN created SET DEFAULT '2000-01-01';
CREATE TABLE "select".child3 () INHERITS ("select".base);
ALTER TABLE "select".child3 ALTER COLUMN created DROP DEFAULT;
ALTER TABLE "select".child2 ALTER COLUMN z SET NOT NULL;

-- Unlogged, a rule, a log.
CREATE UNLOGGED TABLE "select".scratch (k text PRIMARY KEY, v jsonb);
CREATE TABLE "select".log (msg text);
CREATE RULE "log insert" AS ON INSERT TO "select".scratch DO ALSO INSERT INTO "select".log VALUES (NEW.k);
CREATE RULE no_delete AS ON DELETE TO "select".log DO INSTEAD NOTHING;
ALTER TABLE "select".log DISABLE RULE no_delete;
COMMENT ON RULE "log insert" ON "select".scratch IS 'copy';
CREATE SEQUENCE "select".manual_seq;
ALTER SEQUENCE "select".manual_seq OWNED BY "select".log.msg;

CREATE TABLE public.people (id int PRIMARY KEY, nick citext UNIQUE);

-- A procedure whose body references a table (PostgreSQL 14+).
CREATE PROCEDURE "Sales Dept".archive(days integer) LANGUAGE sql
BEGIN ATOMIC
    DELETE FROM "Sales Dept"."Orders" WHERE "Updated At" < now() - make_interval(days => days);
END;
CREATE FUNCTION "Sales Dept".order_total(o "Sales Dept"."Orders") RETURNS numeric
    LANGUAGE sql STABLE AS 'SELECT o.total';

-- Policies.
CREATE POLICY "own orders" ON "Sales Dept"."Orders" FOR SELECT TO app_reader, "Weird ""Role"""
    USING (customer_id = 1);
CREATE POLICY writer ON "Sales Dept"."Orders" AS RESTRICTIVE FOR INSERT TO app_writer
    WITH CHECK (amount < 1000);
CREATE POLICY everyone ON "Sales Dept"."Orders" USING (true);
COMMENT ON POLICY writer ON "Sales Dept"."Orders" IS 'restrictive';

-- Views.
CREATE VIEW "Sales Dept"."Order Totals" WITH (security_barrier = true) AS
    SELECT c.id, c."Name", sum(o.total) AS total
    FROM "Sales Dept"."Customers" c JOIN "Sales Dept"."Orders" o ON o.customer_id = c.id
    GROUP BY c.id;
CREATE VIEW "select".updatable AS SELECT * FROM "select".base WHERE id > 10
    WITH CASCADED CHECK OPTION;
ALTER VIEW "select".updatable ALTER COLUMN created SET DEFAULT current_date;
COMMENT ON VIEW "Sales Dept"."Order Totals" IS 'per customer';
COMMENT ON COLUMN "Sales Dept"."Order Totals".total IS 'sum';
CREATE MATERIALIZED VIEW "Sales Dept"."Status Counts" AS
    SELECT status, count(*) AS n FROM "Sales Dept"."Orders" GROUP BY status;
CREATE UNIQUE INDEX ON "Sales Dept"."Status Counts" (status);
COMMENT ON MATERIALIZED VIEW "Sales Dept"."Status Counts" IS 'counts';

-- Extended statistics.
CREATE STATISTICS "Sales Dept"."orders stats" (ndistinct, dependencies)
    ON customer_id, status FROM "Sales Dept"."Orders";
ALTER STATISTICS "Sales Dept"."orders stats" SET STATISTICS 300;
COMMENT ON STATISTICS "Sales Dept"."orders stats" IS 'correlated';

-- Owners and grants.
ALTER TABLE "Sales Dept"."Customers" OWNER TO "App Owner";
ALTER TABLE "Sales Dept"."Orders" OWNER TO "App Owner";
ALTER VIEW "Sales Dept"."Order Totals" OWNER TO "App Owner";
ALTER SCHEMA "Sales Dept" OWNER TO "App Owner";
GRANT SELECT, INSERT ON "Sales Dept"."Customers" TO app_writer WITH GRANT OPTION;
SET ROLE app_writer;
GRANT SELECT ON "Sales Dept"."Customers" TO app_reader;
RESET ROLE;
GRANT SELECT ("Name", email), UPDATE (email) ON "Sales Dept"."Customers" TO app_reader;
GRANT SELECT ON "Sales Dept"."Order Totals" TO app_reader, "Weird ""Role""";
GRANT SELECT ON ALL TABLES IN SCHEMA "select" TO app_reader;
REVOKE TRUNCATE ON "select".scratch FROM postgres;
GRANT SELECT, UPDATE ON SEQUENCE "Sales Dept"."Orders_Order ID_seq" TO app_writer;
GRANT SELECT ON "Sales Dept"."Status Counts" TO PUBLIC;
GRANT USAGE ON SEQUENCE "Sales Dept"."Customers_id_seq" TO app_writer;
COMMENT ON SEQUENCE "Sales Dept"."Customers_id_seq" IS 'identity';
"#;

#[test]
fn awkward_schema_round_trip_gives_the_same_dump() {
    let (source, target) = two_clusters("objawkward", AWKWARD_ROLES);
    source.create_database("awkward db").unwrap();
    let script = source.base_dir().join("awkward.sql");
    std::fs::write(&script, AWKWARD_SCHEMA).unwrap();
    source.psql_file("awkward db", &script).unwrap_or_else(|e| panic!("{e}"));
    let objects = round_trip(
        &source,
        "awkward db",
        &target,
        "awkward copy",
        &[
            "SET SESSION AUTHORIZATION app_writer;",
            "GRANT SELECT(email),UPDATE(email) ON TABLE \"Sales Dept\".\"Customers\" TO app_reader;",
            "ALTER INDEX \"Sales Dept\".events_kind_idx ATTACH PARTITION \"Sales Dept\".\"my kind index\";",
            "ALTER TABLE \"Sales Dept\".\"events 2024\" DISABLE TRIGGER ev_touch;",
            "ALTER TABLE \"Sales Dept\".\"Customers\" ENABLE REPLICA TRIGGER replica_only;",
            "REVOKE ALL ON FUNCTION \"select\".\"order\"(x integer) FROM PUBLIC;",
            "CREATE POLICY writer ON \"Sales Dept\".\"Orders\" AS RESTRICTIVE FOR INSERT",
            "ALTER TABLE ONLY \"select\".child3 ALTER COLUMN created SET DEFAULT NULL;",
            "CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA extensions;",
            "ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE ALL ON FUNCTIONS  FROM PUBLIC;",
            "CREATE COLLATION \"select\".\"Case Insensitive\" (provider = icu, deterministic = false",
            "GRANT USAGE ON SEQUENCE \"Sales Dept\".\"Customers_id_seq\" TO app_writer;",
        ],
    );
    let find = |kind: ObjectKind, schema: &str, name: &str| {
        let key = ObjectKey::new(kind, schema, name);
        let i = objects.iter().position(|o| o.key == key);
        (key.clone(), i.unwrap_or_else(|| panic!("no {key}")))
    };
    // The view grouping by the customers' primary key depends on it, and is created after it.
    let (view, view_at) = find(ObjectKind::View, "Sales Dept", "Order Totals");
    let (pk, pk_at) = find(ObjectKind::Constraint, "Sales Dept", "Customers.Customers_pkey");
    assert!(objects[view_at].depends_on.contains(&pk), "{view} needs {pk} (GROUP BY)");
    let order = creation_order(&objects).unwrap();
    let position = |i: usize| order.iter().position(|&j| j == i).unwrap();
    assert!(position(view_at) > position(pk_at));
    assert_eq!(effective_sections(&objects)[pk_at], Section::PreData);

    let (_, customers_at) = find(ObjectKind::Table, "Sales Dept", "Customers");
    let info = objects[customers_at].table_info.as_ref().unwrap();
    assert_eq!(info.primary_key_columns, ["id"]);
    assert_eq!(info.identity_sequences[0].name, "Customers_id_seq");
    let (orders, orders_at) = find(ObjectKind::Table, "Sales Dept", "Orders");
    let info = objects[orders_at].table_info.as_ref().unwrap();
    assert!(!info.columns_for_copy.contains(&"total".to_string()));
    assert_eq!(info.generated_columns, ["total"]);
    assert_eq!(info.replica_identity, "f");
    let (_, click_at) = find(ObjectKind::Table, "Sales Dept", "events_2025_click");
    let info = objects[click_at].table_info.as_ref().unwrap();
    assert_eq!(info.partition_of, Some(("Sales Dept".into(), "events_2025".into())));
    let (_, matview_at) = find(ObjectKind::MaterializedView, "Sales Dept", "Status Counts");
    let info = objects[matview_at].table_info.as_ref().unwrap();
    assert!(info.matview && info.populated);
    // A procedure whose body reads a table depends on it; a serial's OWNED BY on its table.
    let (_, archive_at) = find(ObjectKind::Function, "Sales Dept", "archive(integer)");
    assert!(objects[archive_at].depends_on.contains(&orders));
    let (_, owned_at) = find(ObjectKind::SequenceOwnership, "Sales Dept", "Orders_Order ID_seq");
    assert!(objects[owned_at].depends_on.contains(&orders));
    // A column of an extension's type depends on the extension.
    let (_, people_at) = find(ObjectKind::Table, "public", "people");
    assert!(objects[people_at].depends_on.contains(&ObjectKey::new(
        ObjectKind::Extension,
        "",
        "citext"
    )));
    // Partitions' indexes are part of their parent's, not objects of their own.
    assert!(objects.iter().all(|o| o.key.name != "my kind index"));
    let (_, kind_idx_at) = find(ObjectKind::Index, "Sales Dept", "events_kind_idx");
    assert!(objects[kind_idx_at].ddl.iter().any(|s| s.contains("\"my kind index\"")));
}

#[test]
fn thousands_of_tables_read_in_a_fixed_number_of_queries() {
    const TABLES: usize = 2000;
    let cluster = start("objmany");
    cluster.create_database("small").unwrap();
    cluster.create_database("many").unwrap();
    cluster
        .psql("small", "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE INDEX ON t (v)")
        .unwrap();
    let mut script = String::from("BEGIN;\n");
    for i in 0..TABLES {
        script.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, v text, n serial);\nCREATE INDEX ON t{i} (v);\n"
        ));
    }
    script.push_str("COMMIT;\n");
    let path = cluster.base_dir().join("many.sql");
    std::fs::write(&path, script).unwrap();
    cluster.psql_file("many", &path).unwrap_or_else(|e| panic!("{e}"));

    let (small, many) = runtime().block_on(async {
        let mut out = Vec::new();
        for db in ["small", "many"] {
            let client = connect(&cluster, db).await;
            let version = version_num(&client).await;
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.unwrap();
            let result = read_with_stats(&client, version).await.unwrap_or_else(|e| panic!("{e}"));
            client.batch_execute("ROLLBACK").await.unwrap();
            out.push(result);
        }
        (out.remove(0), out.remove(0))
    });
    assert_eq!(small.1.queries, READ_QUERIES);
    assert_eq!(many.1.queries, READ_QUERIES, "queries must not grow with the number of objects");
    let count = |kind: ObjectKind| many.0.iter().filter(|o| o.key.kind == kind).count();
    assert_eq!(count(ObjectKind::Table), TABLES);
    assert_eq!(count(ObjectKind::Constraint), TABLES);
    assert_eq!(count(ObjectKind::Index), TABLES);
    assert_eq!(count(ObjectKind::Sequence), TABLES);
    assert_eq!(count(ObjectKind::SequenceOwnership), TABLES);
    let t7 = many.0.iter().find(|o| o.key == ObjectKey::new(ObjectKind::Table, "public", "t7"));
    let t7 = t7.expect("table t7");
    assert!(t7.depends_on.contains(&ObjectKey::new(ObjectKind::Sequence, "public", "t7_n_seq")));
    let info = t7.table_info.as_ref().unwrap();
    assert_eq!(info.primary_key_columns, ["id"]);
    assert_eq!(info.columns_for_copy, ["id", "v", "n"]);
    // The whole lot orders without a cycle.
    assert_eq!(creation_order(&many.0).unwrap().len(), many.0.len());
}
