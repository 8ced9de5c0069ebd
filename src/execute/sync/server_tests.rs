//! The applier's statements on a real server: `COPY` and set-based statements (values as
//! `text[]`, cast to each column's type, or, binary, arrays of the column's type) store exactly
//! what one-row statements with typed parameters store, for types whose text (or binary) form
//! is hard to carry; the guard that keeps a batch from committing
//! after a failed one; and what keeps a table's changes in order.

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

use super::applier::{
    ArrayParam, Committed, Mode, Param, Pipeline, Shape, Table, copy_binary, copy_text,
    origin_check, param,
};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::stream::{Column, Relation, Tuple, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn connect(c: &LocalCluster) -> Client {
    let (client, connection) = tokio_postgres::connect(&c.conninfo("postgres"), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

const SCHEMA: &str = "
CREATE SCHEMA s;
CREATE TYPE s.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE s.pair AS (a int, b text);
CREATE DOMAIN s.posint AS int CHECK (VALUE > 0);
CREATE TABLE s.src (id int PRIMARY KEY, c_char char(5), c_num numeric(10,2), c_arr int[],
    c_tarr text[], c_comp s.pair, c_enum s.mood, c_json jsonb, c_bytea bytea, c_text text,
    c_ts timestamptz, c_iv interval, c_dom s.posint, c_bit bit(4), c_f float8, c_uuid uuid,
    c_pairs s.pair[], c_vc varchar(3));
INSERT INTO s.src VALUES
 (1, 'ab', 1.5, '{1,NULL,3}', '{\"a,b\",\"c\\\"d\",NULL,\"\"}', '(1,\"x y\")', 'ok',
  '{\"k\": [1, \"é\"]}', '\\x00ff5c', E'quote'' dq\" bs\\\\ nl\\n tab\\t {,}', '2024-02-29 12:34:56.789+05',
  '1 year 2 mons -3 days 04:05:06.7', 7, B'1010', 'NaN', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  ARRAY[ROW(1, 'p')::s.pair, ROW(NULL, 'q,\"r')::s.pair], 'abc'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, '', -0.01, '{}', '{}', '(,)', 'sad', 'null', '\\x', '', '-infinity', '0', 1, B'0000',
  '-1.5e-300', '00000000-0000-0000-0000-000000000000', '{}', ''),
 (4, 'zz   ', 99999999.99, '{{1,2},{3,4}}', '{NULL}', '(-1,)', 'happy', '[]', '\\xdeadbeef',
  'ünïcødé ☃', 'infinity', '-178000000 years', 2147483647, B'1111', '1e308', NULL, NULL, 'x');
CREATE TABLE s.bulk (LIKE s.src INCLUDING ALL);
CREATE TABLE s.narrow (id varchar(3) PRIMARY KEY, v char(2));
INSERT INTO s.narrow VALUES ('abc', 'x');
CREATE TABLE s.one (LIKE s.src INCLUDING ALL);
";

/// `s.src`'s rows as pgoutput sends them: in text, or in binary (the form `COPY ... (FORMAT
/// binary)` writes: each value as its type's send function writes it).
async fn rows_as(client: &Client, table: &str, binary: bool) -> Vec<Tuple> {
    if binary { rows_as_binary(client, table).await } else { rows_as_text(client, table).await }
}

async fn rows_as_binary(client: &Client, table: &str) -> Vec<Tuple> {
    let out = client
        .copy_out(&format!("COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT (FORMAT binary)"))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(out).await.unwrap();
    let all: Vec<u8> = chunks.concat();
    let mut at = 19; // signature, flags, header extension (empty)
    let mut next = |n: usize| {
        let b = &all[at..at + n];
        at += n;
        b.to_vec()
    };
    let mut rows = vec![];
    loop {
        let fields = i16::from_be_bytes(next(2).try_into().unwrap());
        if fields < 0 {
            return rows;
        }
        rows.push(
            (0..fields)
                .map(|_| match i32::from_be_bytes(next(4).try_into().unwrap()) {
                    -1 => Value::Null,
                    n => Value::Binary(next(n as usize).into()),
                })
                .collect(),
        );
    }
}

async fn rows_as_text(client: &Client, table: &str) -> Vec<Tuple> {
    let names: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 \
             ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let select = names.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", ");
    client
        .query(&format!("SELECT {select} FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..names.len())
                .map(|i| match r.get::<_, Option<String>>(i) {
                    Some(s) => Value::Text(s.into()),
                    None => Value::Null,
                })
                .collect()
        })
        .collect()
}

async fn table(client: &Client, name: &str, binary: bool) -> Table {
    let columns = crate::catalog::read_table_columns(client, "s", name).await.unwrap().unwrap();
    Table {
        rel: Relation {
            id: 1,
            schema: "s".into(),
            name: name.into(),
            replica_identity: 'd',
            columns: columns
                .iter()
                .map(|c| Column { name: c.name.clone(), key: c.name == "id", type_oid: c.type_oid })
                .collect(),
        },
        name_sql: format!("s.{name}"),
        display: format!("s.{name}").into(),
        skip: None,
        full: false,
        identity_always: columns.iter().map(|c| c.identity_always).collect(),
        types: columns.iter().map(|c| c.type_oid).collect(),
        type_names: columns.iter().map(|c| c.type_name.clone()).collect(),
        statements: HashMap::new(),
        mode: Mode::ByKey,
        binary,
        bases: vec![],
        array_types: if binary {
            columns.iter().map(|c| c.array_type_name.clone()).collect()
        } else {
            vec![]
        },
    }
}

async fn run_rows(client: &Client, t: &Table, shape: Shape, rows: &[Tuple], cols: &[usize]) -> u64 {
    let stmt = client
        .prepare_typed(&t.sql(&shape), &t.param_types(&shape))
        .await
        .unwrap_or_else(|e| panic!("{}: {e:?}", t.sql(&shape)));
    let params: Vec<ArrayParam> =
        cols.iter().map(|&i| ArrayParam::column(rows, i, t.binary).unwrap()).collect();
    client.execute_raw(&stmt, params.iter()).await.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"))
}

async fn run_one(client: &Client, t: &Table, shape: Shape, row: &Tuple, cols: &[usize]) -> u64 {
    let stmt = client.prepare_typed(&t.sql(&shape), &t.param_types(&shape)).await.unwrap();
    let params: Vec<Param> = cols.iter().map(|&i| param(&row[i])).collect();
    client.execute_raw(&stmt, params.iter()).await.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"))
}

#[test]
fn set_based_statements_store_exactly_what_one_row_statements_store_for_hard_types() {
    store_the_same(false);
}

#[test]
fn values_in_binary_are_stored_exactly_as_in_text_by_copy_set_based_and_one_row_statements() {
    store_the_same(true);
}

fn store_the_same(binary: bool) {
    let name = if binary { "bulk-binary" } else { "bulk-types" };
    let c = LocalCluster::start(ClusterOptions { name: name.into(), ..Default::default() })
        .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    c.psql("postgres", SCHEMA).unwrap_or_else(|e| panic!("{e}"));
    if binary {
        // A composite's binary form names its columns' type oids: never streamed in binary
        // (`catalog::binary_types`).
        let drop = "DROP COLUMN c_comp, DROP COLUMN c_pairs";
        c.psql(
            "postgres",
            &format!(
                "ALTER TABLE s.src {drop}; ALTER TABLE s.bulk {drop}; \
                                     ALTER TABLE s.one {drop}"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    runtime().block_on(async {
        let client = connect(&c).await;
        let rows = rows_as(&client, "s.src", binary).await;
        assert_eq!(rows.len(), 4);
        assert!(rows[0].iter().all(|v| matches!(v, Value::Binary(_)) == binary));
        let (bulk, one) =
            (table(&client, "bulk", binary).await, table(&client, "one", binary).await);
        let all: Vec<usize> = (0..rows[0].len()).collect();
        let copy = client.prepare(&bulk.sql(&Shape::Copy)).await.unwrap();
        let sink = client.copy_in::<_, bytes::Bytes>(&copy).await.unwrap();
        futures_util::pin_mut!(sink);
        let data = if binary { copy_binary(&rows) } else { copy_text(&rows) };
        futures_util::SinkExt::send(&mut sink, data.unwrap()).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 4);
        for r in &rows {
            run_one(&client, &one, Shape::Insert(1), r, &all).await;
        }
        let same = "SELECT (SELECT array_agg(t::text ORDER BY id) FROM s.src t) = \
                    (SELECT array_agg(t::text ORDER BY id) FROM s.bulk t) AND \
                    (SELECT array_agg(t::text ORDER BY id) FROM s.src t) = \
                    (SELECT array_agg(t::text ORDER BY id) FROM s.one t)";
        let equal: bool = client.query_one(same, &[]).await.unwrap().get(0);
        assert!(equal, "{}", c.psql("postgres", "TABLE s.src; TABLE s.bulk; TABLE s.one").unwrap());

        // Updates: row 1 takes row 4's values, row 4 row 2's (all NULL), by key; the key and
        // an unchanged value are not set.
        let all: String = client
            .query_one(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
                 WHERE attrelid = 's.src'::regclass AND attnum > 1 AND NOT attisdropped",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        client
            .batch_execute(&format!(
                "UPDATE s.src SET ({all}) = (SELECT {all} FROM s.src x WHERE x.id = s.src.id + 3) \
             WHERE id = 1;
             UPDATE s.src SET (c_char, c_num, c_arr) = (NULL, NULL, NULL) WHERE id = 4;",
            ))
            .await
            .unwrap();
        let after = rows_as(&client, "s.src", binary).await;
        let mut r4 = after[3].clone();
        for v in r4.iter_mut().skip(4) {
            *v = Value::Unchanged;
        }
        let set1 = bulk.set_columns(&after[0]);
        let set4 = bulk.set_columns(&r4);
        assert_eq!(set4, [1, 2, 3]);
        let cols = |set: &[usize]| set.iter().copied().chain([0]).collect::<Vec<_>>();
        // In binary, an array column's values go one row at a time (an array of arrays is
        // one array of more dimensions), the others set-based.
        let (set1, arrays1): (Vec<usize>, Vec<usize>) =
            set1.iter().partition(|&&i| !binary || !bulk.array_types[i].is_empty());
        let (set4, arrays4): (Vec<usize>, Vec<usize>) =
            set4.iter().partition(|&&i| !binary || !bulk.array_types[i].is_empty());
        assert_eq!(arrays1.is_empty(), !binary);
        let updated =
            run_rows(&client, &bulk, Shape::UpdateRows(set1.clone()), &after[..1], &cols(&set1))
                .await
                + run_rows(
                    &client,
                    &bulk,
                    Shape::UpdateRows(set4.clone()),
                    std::slice::from_ref(&r4),
                    &cols(&set4),
                )
                .await;
        assert_eq!(updated, 2);
        for (row, set) in [(&after[0], arrays1), (&r4, arrays4)] {
            if !set.is_empty() {
                let shape = Shape::Update(set.clone(), vec![0]);
                assert_eq!(run_one(&client, &bulk, shape, row, &cols(&set)).await, 1);
            }
        }
        // Deletes by key, one of them of a row that is not there.
        client.batch_execute("DELETE FROM s.src WHERE id = 3").await.unwrap();
        let gone = if binary {
            vec![
                vec![Value::Binary(3i32.to_be_bytes().to_vec().into())],
                vec![Value::Binary(99i32.to_be_bytes().to_vec().into())],
            ]
        } else {
            vec![vec![Value::Text("3".into())], vec![Value::Text("99".into())]]
        };
        let deleted = run_rows(&client, &bulk, Shape::DeleteRows, &gone, &[0]).await;
        assert_eq!(deleted, 1, "the missing row is counted as not found");
        let equal: bool = client
            .query_one(
                "SELECT (SELECT array_agg(t::text ORDER BY id) FROM s.src t) = \
                 (SELECT array_agg(t::text ORDER BY id) FROM s.bulk t)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(equal, "{}", c.psql("postgres", "TABLE s.src; TABLE s.bulk").unwrap());

        // Values are cast to the type, not to the column's length: a key longer than the
        // column matches no row (a cast to varchar(3) would cut it to 'abc'), and a value too
        // long for its column fails, as it does in a one-row statement.
        let narrow = table(&client, "narrow", binary).await;
        let v =
            |s: &'static str| if binary { Value::Binary(s.into()) } else { Value::Text(s.into()) };
        let long_key = vec![vec![v("abcd")]];
        assert_eq!(run_rows(&client, &narrow, Shape::DeleteRows, &long_key, &[0]).await, 0);
        let stmt = client
            .prepare_typed(
                &narrow.sql(&Shape::UpdateRows(vec![1])),
                &narrow.param_types(&Shape::UpdateRows(vec![1])),
            )
            .await
            .unwrap();
        let too_long = vec![vec![v("abc"), v("xyz")]];
        let params = [
            ArrayParam::column(&too_long, 1, binary).unwrap(),
            ArrayParam::column(&too_long, 0, binary).unwrap(),
        ];
        let e = client.execute_raw(&stmt, params.iter()).await.expect_err("too long for char(2)");
        assert!(format!("{e:?}").contains("too long"), "{e:?}");
    });
}

#[test]
fn a_batch_after_one_that_did_not_commit_cannot_commit() {
    let c =
        LocalCluster::start(ClusterOptions { name: "origin-guard".into(), ..Default::default() })
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    c.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); SELECT pg_replication_origin_create('o')",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    runtime().block_on(async {
        let client = connect(&c).await;
        client.batch_execute("SELECT pg_replication_origin_session_setup('o')").await.unwrap();
        // Batch 1 commits at 0/100; batch 2 (up to 0/200) fails; batch 3 checks for 0/200.
        client
            .batch_execute(
                "BEGIN; INSERT INTO t VALUES (1); \
                 SELECT pg_replication_origin_xact_setup('0/100', now()); COMMIT",
            )
            .await
            .unwrap();
        client.batch_execute(&origin_check(0x100)).await.expect("batch 1 committed: passes");
        client.batch_execute("BEGIN").await.unwrap();
        assert!(client.batch_execute("INSERT INTO t VALUES (1)").await.is_err());
        client.batch_execute("SELECT pg_replication_origin_xact_setup('0/200', now())").await.ok();
        client.batch_execute("COMMIT").await.expect("COMMIT of an aborted transaction: no error");
        client.batch_execute("BEGIN; INSERT INTO t VALUES (3)").await.unwrap();
        let e = client.batch_execute(&origin_check(0x200)).await.expect_err("batch 2 failed");
        let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
        assert!(
            message.contains("did not commit: the replication origin is at 0/100"),
            "{message}"
        );
        client.batch_execute("COMMIT").await.unwrap();
        let rows: i64 = client.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
        assert_eq!(rows, 1, "batch 3 was rolled back with the check");
    });
}

#[test]
fn tables_whose_rows_meet_outside_the_key_or_fire_triggers_keep_their_order() {
    let c =
        LocalCluster::start(ClusterOptions { name: "apply-order".into(), ..Default::default() })
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    c.psql(
        "postgres",
        "CREATE TABLE plain (id int PRIMARY KEY, a int, UNIQUE (id, a));
         CREATE TABLE emails (id int PRIMARY KEY, email text UNIQUE);
         CREATE TABLE included (id int PRIMARY KEY, email text, UNIQUE (email) INCLUDE (id));
         CREATE TABLE lowered (id int PRIMARY KEY, email text);
         CREATE UNIQUE INDEX ON lowered (lower(email));
         CREATE TABLE fired (id int PRIMARY KEY);
         CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TRIGGER t BEFORE INSERT ON fired FOR EACH ROW EXECUTE FUNCTION f();
         ALTER TABLE fired ENABLE ALWAYS TRIGGER t;
         CREATE TABLE quiet (id int PRIMARY KEY);
         CREATE TRIGGER t BEFORE INSERT ON quiet FOR EACH ROW EXECUTE FUNCTION f();
         CREATE TABLE named (id int PRIMARY KEY, r regclass);",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    runtime().block_on(async {
        let client = connect(&c).await;
        let order = |t: &'static str| {
            let client = &client;
            async move {
                crate::catalog::read_apply_order(client, "public", t, &["id".to_string()])
                    .await
                    .unwrap()
            }
        };
        assert_eq!(order("plain").await, Default::default(), "a unique index holding the key");
        assert_eq!(order("quiet").await, Default::default(), "a trigger that does not fire");
        let emails = order("emails").await;
        assert!(emails.fires.is_none() && emails.casts.is_none());
        assert!(emails.across_keys.unwrap().contains("emails_email_key"));
        assert!(order("lowered").await.across_keys.is_some(), "an expression index");
        let included = order("included").await.across_keys;
        assert!(
            included.is_some_and(|i| i.contains("included_email_id_key")),
            "the key only INCLUDEd"
        );
        assert!(order("fired").await.fires.unwrap().contains("trigger t"));
        assert!(order("named").await.casts.unwrap().contains("column r (regclass)"));
    });
}

#[test]
fn a_batch_whose_statement_failed_is_never_recorded_as_committed() {
    let c =
        LocalCluster::start(ClusterOptions { name: "pipeline-fail".into(), ..Default::default() })
            .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    runtime().block_on(async {
        let client = std::sync::Arc::new(connect(&c).await);
        let mut pipe = Pipeline::new(client, crate::execute::session::Progress::default());
        let batch = |end| Some(Committed { end: Some(end), ..Committed::default() });
        // Batch 1 commits; batch 2 fails in a statement, and its COMMIT (of an aborted
        // transaction) succeeds: only batch 1 is done.
        for sql in ["BEGIN", "SELECT 1"] {
            pipe.sql(sql.into()).await.unwrap();
        }
        pipe.sql_then("COMMIT".into(), batch(0x100)).await.unwrap();
        pipe.sql("BEGIN".into()).await.unwrap();
        let _ = pipe.sql("SELECT 1/0".into()).await;
        let _ = pipe.sql_then("COMMIT".into(), batch(0x200)).await;
        assert!(pipe.drain().await.is_err(), "the division by zero is reported");
        let done: Vec<Option<u64>> = pipe.done.iter().map(|b| b.end).collect();
        assert_eq!(done, [Some(0x100)]);
    });
}

#[test]
fn keys_that_come_in_binary_are_read_back_into_the_text_the_server_writes() {
    let c = LocalCluster::start(ClusterOptions { name: "key-text".into(), ..Default::default() })
        .unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    c.psql(
        "postgres",
        "CREATE SCHEMA s;
         CREATE TABLE s.k (id int, b bool, i2 int2, i8 int8, o oid, t text, n name, c char(5),
             v varchar, u uuid, d date, ts timestamp, tz timestamptz, num numeric);
         INSERT INTO s.k VALUES
          (1, true, -32768, -9223372036854775808, 4294967295, 'é ☃', 'nm', 'ab', '',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2000-01-01', '2000-01-01 00:00:00',
           '2000-01-01 00:00:00+00', 0),
          (2, false, 32767, 9223372036854775807, 0, '', '', '', 'x y',
           '00000000-0000-0000-0000-000000000000', '2024-02-29', '1999-12-31 23:59:59.999999',
           '2024-02-29 12:34:56.789+05', -123456789.000100),
          (3, NULL, 0, 0, 1, 't', 'n', 'c', 'v', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
           '0044-03-15 BC', '4713-01-01 00:00:00 BC', '0001-01-01 00:00:00+00 BC', 'NaN'),
          (4, NULL, 1, 1, 1, 't', 'n', 'c', 'v', NULL, 'infinity', '-infinity', 'infinity',
           0.00001234),
          (5, NULL, 1, 1, 1, 't', 'n', 'c', 'v', NULL, '-infinity', '294276-12-31 23:59:59',
           '1900-03-01 00:00:00.5+00', 10000.5),
          (6, NULL, 1, 1, 1, 't', 'n', 'c', 'v', NULL, '5874897-12-31', '1582-10-04 12:00:00',
           '1970-01-01 00:00:00.000001+00', 1e20),
          (7, NULL, 1, 1, 1, 't', 'n', 'c', 'v', NULL, '1900-02-28', '2100-03-01 00:00:00',
           '2400-02-29 23:00:00+00', -0.5);
         INSERT INTO s.k SELECT 100 + g, g % 2 = 0, g, g * 1000003, g, g::text, g::text, g::text,
             g::text, md5(g::text)::uuid, date '0001-01-01' + g * 37, 
             timestamp '1800-01-01' + g * interval '1234567.891 seconds',
             timestamptz '1800-01-01 00:00:00+00' + g * interval '7654321.123457 seconds',
             round((g * 12345.6789 - 500000)::numeric, g % 7)
         FROM generate_series(1, 2000) AS g;",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    runtime().block_on(async {
        let client = connect(&c).await;
        client.batch_execute("SET DateStyle = ISO; SET TimeZone = UTC").await.unwrap();
        // Each value as its output function writes it (as pgoutput sends it in text), in COPY's
        // text format (none of these values holds a character COPY escapes).
        let out = client.copy_out("COPY (SELECT * FROM s.k ORDER BY id) TO STDOUT").await.unwrap();
        let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(out).await.unwrap();
        let texts: Vec<Tuple> =
            String::from_utf8(chunks.concat())
                .unwrap()
                .lines()
                .map(|line| {
                    line.split('\t')
                        .map(|v| {
                            if v == "\\N" { Value::Null } else { Value::Text(v.to_string().into()) }
                        })
                        .collect()
                })
                .collect();
        let binaries = rows_as_binary(&client, "s.k").await;
        let bases = [23, 16, 21, 20, 26, 25, 19, 1042, 1043, 2950, 1082, 1114, 1184, 1700];
        assert!(bases[1..].iter().all(|b| crate::catalog::KEY_TYPES.contains(b)));
        assert_eq!(texts.len(), 2007);
        assert_eq!(binaries.len(), texts.len());
        for (text, binary) in texts.iter().zip(&binaries) {
            for (i, base) in bases.iter().enumerate() {
                let read = super::text_form::key_text(&binary[i], *base);
                assert_eq!(read, text[i], "row {:?}, column {i} ({base})", text[0]);
            }
        }
    });
}
