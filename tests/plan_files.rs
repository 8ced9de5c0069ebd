//! Migration plan files: the examples in `plans/`, the committed JSON Schema, and how bad files
//! are reported (located, with suggestions, never echoing a password).

use std::path::Path;

use crate::support::{TempDir, plan_yaml, run};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn every_example_plan_in_plans_dir_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo("plans")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let env = |name: &str| Some(format!("value-of-{name}"));
            pgtransit::migration_plan::load(&path, &env)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.one_line()));
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example plans, found {n}");
}

#[test]
fn example_plans_pass_the_validate_command() {
    let home = TempDir::new("validate-ok");
    let out = pgtransit_validate_examples(home.path());
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.matches("valid").count(), 3, "{out:?}");
}

fn pgtransit_validate_examples(home: &Path) -> crate::support::Run {
    let mut cmd = crate::support::pgtransit(home);
    cmd.env("PAGILA_SOURCE_PASSWORD", "not-a-real-one").arg("validate");
    for f in ["minimal", "pagila-online", "offline-subset"] {
        cmd.arg(repo(&format!("plans/{f}.yaml")));
    }
    crate::support::Run::of(cmd.output().unwrap())
}

#[test]
fn committed_json_schema_matches_the_code() {
    let committed = std::fs::read_to_string(repo("schemas/migration-plan.schema.json")).unwrap();
    assert!(
        committed == pgtransit::migration_plan::json_schema(),
        "schemas/migration-plan.schema.json is stale: run `cargo run -- schema --out \
         schemas/migration-plan.schema.json` and commit it"
    );
}

#[test]
fn schema_command_prints_a_draft07_schema_that_forbids_unknown_keys() {
    let home = TempDir::new("schema");
    let out = run(home.path(), &["schema"]);
    assert_eq!(out.code, 0);
    let schema = out.json();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["required"].as_array().unwrap().iter().any(|r| r == "source"));
}

#[test]
fn yaml_typo_is_reported_with_file_line_column_and_suggestion() {
    let dir = TempDir::new("typo");
    let text = plan_yaml("typo", "postgresql://u@h/db", "postgresql://u@h2/db", "")
        .replace("source:", "sourse:");
    let file = dir.write("typo.yaml", &text);
    let out = run(dir.path(), &["plan", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unknown key `sourse`"), "{out:?}");
    assert!(out.stderr.contains("typo.yaml:3:1"), "{out:?}");
    assert!(out.stderr.contains("did you mean `source`?"), "{out:?}");
}

#[test]
fn inline_password_is_refused_without_echoing_it() {
    let dir = TempDir::new("password");
    let secret = "Tr0ub4dor-and-3";
    let url = format!("postgresql://migrator:{secret}@db.example.com/app");
    let file = dir.write("p.yaml", &plan_yaml("p", &url, "postgresql://u@h2/db", ""));
    for cmd in ["plan", "validate"] {
        let out = run(dir.path(), &[cmd, file.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("source.url contains a password"), "{out:?}");
        assert!(out.stderr.contains("PGPASSWORD"), "{out:?}");
        assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret), "{out:?}");
    }
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let home = TempDir::new("usage");
    assert_eq!(run(home.path(), &["plan"]).code, 1);
    assert_eq!(run(home.path(), &["frobnicate"]).code, 1);
    assert_eq!(run(home.path(), &["--help"]).code, 0);
}
