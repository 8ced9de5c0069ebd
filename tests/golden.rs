//! Golden renderings of execution plans, in every format: one hand-built plan (how plans look,
//! no server), and what `pgtransit plan` produces for a fixed small schema between two real
//! throwaway servers (what the planner decides: steps, their order and SQL, checks). A change
//! shows up as a diff here; `UPDATE_GOLDEN=1 cargo test --test integration golden` rewrites the
//! files after review.

use std::path::Path;

use pgtransit::check::{Check, Severity};
use pgtransit::execution_plan::{
    Action, Estimate, Fingerprint, Phase, Plan, ServerIdentity, Step, Work,
};
use pgtransit::migration_plan::Mode;
use pgtransit::report::{self, Format, PlanReport, ServerSummary};

use crate::support::{LocalCluster, Run, TempDir, cluster_of, pgtransit, plan_yaml, sql};

fn step(id: &str, phase: Phase, action: Action, object: &str, sql: &str) -> Step {
    Step {
        id: id.into(),
        phase,
        action,
        object: object.into(),
        sql: sql.into(),
        estimate: None,
        note: None,
        diff: None,
        work: if action.is_work() { Work::TargetSql } else { Work::None },
        after: vec![],
        table: None,
    }
}

fn sample_plan() -> Plan {
    let mut steps = vec![
        step(
            "schema:schema:sales",
            Phase::Schema,
            Action::Create,
            "schema sales",
            "CREATE SCHEMA \"sales\";\nALTER SCHEMA \"sales\" OWNER TO \"app\";",
        ),
        step(
            "schema:type:sales.status",
            Phase::Schema,
            Action::Create,
            "type sales.status",
            "CREATE TYPE \"sales\".\"status\" AS ENUM ('new', 'paid');",
        ),
        step(
            "schema:table:sales.orders",
            Phase::Schema,
            Action::Create,
            "table sales.orders",
            "CREATE TABLE \"sales\".\"orders\" (\n    \"id\" bigint NOT NULL,\n    \"status\" \"sales\".\"status\"\n);",
        ),
        step(
            "schema:table:public.customers",
            Phase::Schema,
            Action::Unchanged,
            "table public.customers",
            "",
        ),
        step(
            "schema:table:public.notes",
            Phase::Schema,
            Action::Conflict,
            "table public.notes",
            "",
        ),
        step(
            "load:table:sales.orders",
            Phase::Load,
            Action::Copy,
            "table sales.orders",
            "-- on the source, under the load snapshot:\nCOPY \"sales\".\"orders\" (\"id\", \"status\") TO STDOUT;\n-- on the target, in one transaction:\nTRUNCATE \"sales\".\"orders\";\nCOPY \"sales\".\"orders\" (\"id\", \"status\") FROM STDIN;",
        ),
        step(
            "post_load:constraint:sales.orders.orders_pkey",
            Phase::PostLoad,
            Action::Create,
            "constraint sales.orders.orders_pkey",
            "ALTER TABLE ONLY \"sales\".\"orders\" ADD CONSTRAINT \"orders_pkey\" PRIMARY KEY (\"id\");",
        ),
        step(
            "post_load:trigger:sales.orders.audit",
            Phase::PostLoad,
            Action::Create,
            "trigger sales.orders.audit",
            "CREATE TRIGGER audit AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.audit();",
        ),
        step(
            "post_load:sequence_value:sales.orders_id_seq",
            Phase::PostLoad,
            Action::Run,
            "sequence sales.orders_id_seq",
            "SELECT setval('\"sales\".\"orders_id_seq\"', 42, true);",
        ),
    ];
    steps[4].note = Some("exists on the target with another definition".into());
    steps[4].diff = Some("--- target (existing)\n+++ source (wanted)\n@@ -1,3 +1,3 @@\n CREATE TABLE \"public\".\"notes\" (\n-    \"body\" varchar(20)\n+    \"body\" text NOT NULL\n );\n".into());
    steps[5].estimate = Some(Estimate { rows: 120_000, bytes: 9_830_400 });
    steps[7].note = Some("created after the data, so it does not fire for copied rows".into());
    let checks = vec![Check {
        code: "identity_columns".into(),
        severity: Severity::Info,
        object: "table sales.orders".into(),
        message: "identity columns id keep their values".into(),
        fix: None,
    }];
    Plan {
        format: 1,
        migration: "shop".into(),
        mode: "offline".into(),
        spec_path: "plans/shop.yaml".into(),
        spec_text: "version: 1\n".into(),
        fingerprint: Fingerprint { spec: "s".into(), source: "a".into(), target: "b".into() },
        source: ServerIdentity {
            endpoint: "postgresql://migrator@src:5432/shop?sslmode=prefer".into(),
            version_num: 150018,
            system_identifier: None,
            database: "shop".into(),
        },
        target: ServerIdentity {
            endpoint: "postgresql://admin@tgt:5432/shop?sslmode=verify-full".into(),
            version_num: 170002,
            system_identifier: None,
            database: "shop".into(),
        },
        summary: Plan::summarize(&steps),
        steps_hash: String::new(),
        memberships_granted: vec![],
        roles_carried: vec![],
        tables: vec![],
        cutover_estimate: None,
        load_estimate: Some(pgtransit::execution_plan::LoadEstimate {
            tables: 1,
            rows: 120_000,
            bytes: 9_830_400,
            jobs: 1,
            seconds: 0.2,
        }),
        checks,
        steps,
    }
}

fn render(format: Format) -> String {
    let plan = sample_plan();
    let report = PlanReport::new(
        "shop",
        Mode::Offline,
        ServerSummary {
            endpoint: plan.source.endpoint.clone(),
            version: Some("PostgreSQL 15.18".into()),
        },
        ServerSummary {
            endpoint: plan.target.endpoint.clone(),
            version: Some("PostgreSQL 17.2".into()),
        },
        plan.checks.clone(),
        Some(&plan),
    );
    let mut out = anstream::StripStream::new(Vec::new());
    report::plan(&mut out, &report, format).unwrap();
    String::from_utf8(out.into_inner()).unwrap()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let diff = similar::TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .header("expected", "actual")
            .to_string();
        panic!("{name} changed (UPDATE_GOLDEN=1 to accept after review):\n{diff}");
    }
}

#[test]
fn text_rendering_matches_golden_file() {
    golden("plan.txt", &render(Format::Text));
}

#[test]
fn markdown_rendering_matches_golden_file() {
    golden("plan.md", &render(Format::Markdown));
}

#[test]
fn json_rendering_matches_golden_file_and_has_the_documented_fields() {
    let json = render(Format::Json);
    golden("plan.json", &json);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for field in ["id", "phase", "action", "object", "sql", "estimate"] {
        assert!(v["steps"][0].get(field).is_some(), "steps[].{field} missing");
    }
    assert_eq!(v["steps"][5]["estimate"]["rows"], 120_000);
    assert!(v["checks"].is_array());
}

#[test]
fn text_summary_line_counts_every_action() {
    let text = render(Format::Text);
    assert!(
        text.contains(
            "Plan: 5 to create, 0 to update, 1 to copy, 1 to run, 1 unchanged, 1 conflicts."
        ),
        "{text}"
    );
}

// -- what the planner produces ---------------------------------------------------------------

/// The PostgreSQL major of both servers: CI's (Debian's 15), pinned as the version matrix
/// pins its majors (`support::cluster_of`: the harness's pinned build from the package
/// registries, or `$PGTRANSIT_PG15_BIN`), so that the plan does not vary with what a machine
/// has installed.
const PLANNED_MAJOR: u32 = 15;

/// A small schema with an object of most kinds the planner handles: schemas, an enum, a
/// table with an identity column, a serial, defaults, a check and a foreign key, an index, a
/// function and a trigger, a view, a partitioned table, a table without a key, comments, a
/// sequence, and rows (analyzed, so that the estimates are fixed).
const PLANNED_SOURCE: &str = "
CREATE SCHEMA sales;
CREATE TYPE sales.status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE public.customers (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE
);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer int NOT NULL REFERENCES public.customers,
    status sales.status NOT NULL DEFAULT 'new',
    total numeric(12,2) CHECK (total >= 0),
    placed timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON sales.orders (customer);
COMMENT ON TABLE sales.orders IS 'one row per order';
CREATE TABLE sales.audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION sales.audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO sales.audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER audit AFTER INSERT ON sales.orders
    FOR EACH ROW EXECUTE FUNCTION sales.audit_order();
CREATE VIEW sales.paid AS SELECT id, customer, total FROM sales.orders WHERE status = 'paid';
CREATE TABLE public.events (id int NOT NULL, kind text) PARTITION BY RANGE (id);
CREATE TABLE public.events_low PARTITION OF public.events FOR VALUES FROM (0) TO (1000);
CREATE TABLE public.events_high PARTITION OF public.events FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE SEQUENCE public.invoice_no START 1000;
CREATE TABLE public.notes (id int PRIMARY KEY, body text NOT NULL);
CREATE TABLE public.settings (key text PRIMARY KEY, value text);
INSERT INTO public.customers (name, email)
    SELECT 'c' || g, 'c' || g || '@example.com' FROM generate_series(1, 50) g;
INSERT INTO sales.orders (customer, status, total)
    SELECT 1 + g % 50, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::sales.status, g * 1.5
    FROM generate_series(1, 400) g;
INSERT INTO public.events SELECT g, 'k' || g FROM generate_series(1, 1500, 7) g;
INSERT INTO public.notes VALUES (1, 'first');
INSERT INTO public.settings VALUES ('mode', 'live');
SELECT setval('public.invoice_no', 1042);
ANALYZE;
";

/// The target before the migration: one table already as on the source (unchanged), one with
/// another definition (a conflict, shown with its diff).
const PLANNED_TARGET: &str = "
CREATE TABLE public.settings (key text PRIMARY KEY, value text);
CREATE TABLE public.notes (id int PRIMARY KEY, body varchar(20));
";

/// Runs `pgtransit plan` of the fixed schema in every format, normalised (see
/// [`normalise`]); `None` when PostgreSQL 15 could not be installed (skipped, see
/// `support::pg_bin`).
fn planned() -> Option<[(Format, String); 3]> {
    let src = cluster_of(PLANNED_MAJOR, "golden-src", &[])?;
    let tgt = cluster_of(PLANNED_MAJOR, "golden-tgt", &[])?;
    for (c, text) in [(&src, PLANNED_SOURCE), (&tgt, PLANNED_TARGET)] {
        c.create_database("shop").unwrap();
        sql(c, "shop", text);
    }
    let dir = TempDir::new("golden");
    // Jobs pinned: the default may come from the machine.
    let extra = "mode: offline\nload:\n  jobs: 4\n";
    let yaml = plan_yaml("shop", &src.url("shop"), &tgt.url("shop"), extra);
    let file = dir.write("shop.yaml", &yaml);
    let plan = |format: &str| {
        let out = pgtransit(dir.path())
            .args(["plan", file.to_str().unwrap(), "--format", format])
            // The pg_dump of the pinned installation (its own, or the harness's pinned client
            // tools for a server-only one), whatever else the machine has.
            .env("PGTRANSIT_PG_DUMP", src.bin("pg_dump"))
            .output()
            .expect("run pgtransit plan");
        let out = Run::of(out);
        // Exit 1: the conflict blocks the plan (it is rendered all the same).
        assert_eq!(out.code, 1, "{out:?}");
        normalise(&out.stdout, &src, &tgt)
    };
    Some([
        (Format::Text, plan("text")),
        (Format::Markdown, plan("markdown")),
        (Format::Json, plan("json")),
    ])
}

/// What legitimately varies between runs, replaced by placeholders: the servers' ports and
/// their minor release (`15.18` → `15.<minor>`; the major is pinned). The rest is fixed by the
/// harness (host 127.0.0.1, user postgres) or the schema; the report has no paths, snapshot
/// names, OIDs or measured timings (its load time is an estimate from the sizes).
fn normalise(text: &str, src: &LocalCluster, tgt: &LocalCluster) -> String {
    let mut out = text.to_string();
    for (c, port) in [(src, "<source-port>"), (tgt, "<target-port>")] {
        out = replace_token(&out, &c.port().to_string(), port);
        let num: u32 = sql(c, "postgres", "SHOW server_version_num").parse().unwrap();
        let (major, minor) = (num / 10_000, num % 10_000);
        out = replace_token(&out, &format!("{major}.{minor}"), &format!("{major}.<minor>"));
    }
    out
}

/// `text` with every `token` that stands alone (not part of a longer number: no digit or dot
/// right before it, no digit or dot-and-digit right after it) replaced by `with`.
fn replace_token(text: &str, token: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(token) {
        let (before, after) = (&rest[..i], &rest[i + token.len()..]);
        out.push_str(before);
        let joined_before =
            before.chars().next_back().is_some_and(|c| c.is_ascii_digit() || c == '.');
        let mut next = after.chars();
        let joined_after = match next.next() {
            Some(c) if c.is_ascii_digit() => true,
            Some('.') => next.next().is_some_and(|c| c.is_ascii_digit()),
            _ => false,
        };
        out.push_str(if joined_before || joined_after { token } else { with });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[test]
fn planned_execution_plan_of_a_fixed_schema_matches_golden_files_in_every_format() {
    let Some(renderings) = planned() else { return };
    for (format, text) in renderings {
        let name = match format {
            Format::Text => "planned.txt",
            Format::Markdown => "planned.md",
            Format::Json => "planned.json",
        };
        if format == Format::Json {
            serde_json::from_str::<serde_json::Value>(&text).expect("the JSON stays JSON");
        }
        golden(name, &text);
    }
}
