//! Golden renderings of one fixed execution plan, in every format. A change to how plans look
//! shows up as a diff here; `UPDATE_GOLDEN=1 cargo test golden` rewrites the files after review.

use std::path::Path;

use pgtransit::check::{Check, Severity};
use pgtransit::execution_plan::{
    Action, Estimate, Fingerprint, Phase, Plan, ServerIdentity, Step, Work,
};
use pgtransit::migration_plan::Mode;
use pgtransit::report::{self, Format, PlanReport, ServerSummary};

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
        tables: vec![],
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
