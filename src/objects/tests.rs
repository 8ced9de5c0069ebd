//! Unit tests on hand-built objects (no server): keys, ACL items, creation order, statements
//! with role mapping, metadata alignment.

use std::collections::BTreeSet;

use super::*;

fn key(kind: ObjectKind, schema: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, schema, name)
}

fn object(kind: ObjectKind, schema: &str, name: &str, deps: &[&ObjectKey]) -> SchemaObject {
    let mut o = SchemaObject::new(key(kind, schema, name), vec![format!("-- create {name}")]);
    o.depends_on = deps.iter().map(|&k| k.clone()).collect();
    o
}

fn identity(role: &str) -> Option<String> {
    Some(role.to_string())
}

fn acl(items: &[&str]) -> Vec<AclItem> {
    items.iter().map(|s| AclItem::parse(s).unwrap_or_else(|| panic!("bad aclitem {s}"))).collect()
}

fn ordered_keys(objects: &[SchemaObject]) -> Vec<ObjectKey> {
    creation_order(objects).unwrap().into_iter().map(|i| objects[i].key.clone()).collect()
}

#[test]
fn keys_display_like_messages() {
    assert_eq!(key(ObjectKind::Table, "public", "film").to_string(), "table public.film");
    assert_eq!(
        key(ObjectKind::Function, "public", "last_updated()").to_string(),
        "function public.last_updated()"
    );
    assert_eq!(
        key(ObjectKind::Function, "Sales", "Total(integer, \"odd(type\")").to_string(),
        "function \"Sales\".\"Total\"(integer, \"odd(type\")"
    );
    assert_eq!(
        key(ObjectKind::Constraint, "public", "film.film_pkey").to_string(),
        "constraint public.film.film_pkey"
    );
    assert_eq!(
        key(ObjectKind::Trigger, "public", "Film.Touch!").to_string(),
        "trigger public.\"Film\".\"Touch!\""
    );
    assert_eq!(key(ObjectKind::Extension, "", "citext").to_string(), "extension citext");
    assert_eq!(
        key(ObjectKind::MaterializedView, "public", "rental_by_category").to_string(),
        "materialized view public.rental_by_category"
    );
}

#[test]
fn sql_names_derive_from_keys() {
    let f = SchemaObject::new(key(ObjectKind::Function, "Sales", "f(integer, text)"), vec![]);
    assert_eq!(
        (f.sql_type.as_str(), f.sql_name.as_str()),
        ("FUNCTION", "\"Sales\".\"f\"(integer, text)")
    );
    let c = SchemaObject::new(key(ObjectKind::Constraint, "public", "film.film_pkey"), vec![]);
    assert_eq!(c.sql_name, "\"film_pkey\" ON \"public\".\"film\"");
    assert_eq!(c.section, Section::PostData);
    let v = SchemaObject::new(key(ObjectKind::View, "public", "v"), vec![]);
    assert_eq!((v.sql_type.as_str(), v.grant_type()), ("VIEW", "TABLE"));
}

#[test]
fn acl_items_parse_and_print() {
    let item = AclItem::parse(r#""Weird ""Role"""=r*w/"App Owner""#).unwrap();
    assert_eq!(item.grantee, "Weird \"Role\"");
    assert_eq!(item.grantor, "App Owner");
    assert_eq!((item.privileges.as_str(), item.grantable.as_str()), ("rw", "r"));
    assert_eq!(item.to_string(), r#""Weird ""Role"""=r*w/"App Owner""#);
    let public = AclItem::parse("=X/postgres").unwrap();
    assert_eq!((public.grantee.as_str(), public.privileges.as_str()), ("", "X"));
    assert_eq!(public.to_string(), "=X/postgres");
    assert_eq!(AclItem::parse("a=r"), None);
    assert_eq!(AclItem::parse("a=r/"), None);
    assert_eq!(AclItem::parse("a=r?/b"), None);
}

/// schema ← table a ← table b (FK b → a), a sequence b's default uses, an index on a.
fn small_schema() -> Vec<SchemaObject> {
    let schema = key(ObjectKind::Schema, "", "app");
    let a = key(ObjectKind::Table, "app", "a");
    let b = key(ObjectKind::Table, "app", "b");
    let seq = key(ObjectKind::Sequence, "app", "b_id_seq");
    vec![
        object(ObjectKind::Index, "app", "a_idx", &[&a, &schema]),
        object(ObjectKind::ForeignKey, "app", "b.b_a_fkey", &[&b, &a]),
        object(ObjectKind::SequenceOwnership, "app", "b_id_seq", &[&seq, &b]),
        object(ObjectKind::Table, "app", "b", &[&schema, &seq]),
        object(ObjectKind::Sequence, "app", "b_id_seq", &[&schema]),
        object(ObjectKind::Table, "app", "a", &[&schema]),
        object(ObjectKind::Schema, "", "app", &[]),
    ]
}

#[test]
fn creation_order_is_topological_deterministic_and_sectioned() {
    let objects = small_schema();
    let order = ordered_keys(&objects);
    let names: Vec<String> = order.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "schema app",
            "sequence app.b_id_seq",
            "table app.a",
            "table app.b",
            "sequence ownership app.b_id_seq",
            "index app.a_idx",
            "foreign key app.b.b_a_fkey",
        ]
    );
    // Any input order gives the same creation order.
    let mut reversed = objects.clone();
    reversed.reverse();
    assert_eq!(ordered_keys(&reversed), order);
    let mut rotated = objects.clone();
    rotated.rotate_left(3);
    assert_eq!(ordered_keys(&rotated), order);
    // Every object comes after what it depends on.
    for (i, k) in order.iter().enumerate() {
        let o = objects.iter().find(|o| &o.key == k).unwrap();
        for dep in &o.depends_on {
            assert!(order[..i].contains(dep), "{k} before {dep}");
        }
    }
    // Dependencies on objects not in the list are ignored.
    let mut extra = objects;
    extra[0].depends_on.insert(key(ObjectKind::Extension, "", "not_here"));
    assert_eq!(ordered_keys(&extra), order);
}

#[test]
fn a_view_needing_a_primary_key_moves_after_it_and_nothing_else_does() {
    let schema = key(ObjectKind::Schema, "", "s");
    let t = key(ObjectKind::Table, "s", "t");
    let pk = key(ObjectKind::Constraint, "s", "t.t_pkey");
    let objects = vec![
        object(ObjectKind::View, "s", "by_key", &[&t, &pk]),
        object(ObjectKind::Constraint, "s", "t.t_pkey", &[&t]),
        object(ObjectKind::Index, "s", "t_other_idx", &[&t]),
        object(ObjectKind::Table, "s", "t", &[&schema]),
        object(ObjectKind::Table, "s", "u", &[&schema]),
        object(ObjectKind::Schema, "", "s", &[]),
    ];
    let names: Vec<String> = ordered_keys(&objects).iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "schema s",
            "table s.t",
            "table s.u",
            "constraint s.t.t_pkey",
            "view s.by_key",
            "index s.t_other_idx",
        ]
    );
    let sections = effective_sections(&objects);
    assert_eq!(sections[1], Section::PreData, "the primary key moves to pre-data");
    assert_eq!(sections[2], Section::PostData, "the other index stays in post-data");
}

#[test]
fn cycles_are_errors_naming_them_but_foreign_key_cycles_are_fine() {
    let a = key(ObjectKind::View, "s", "a");
    let b = key(ObjectKind::View, "s", "b");
    let c = key(ObjectKind::View, "s", "c");
    let objects = vec![
        object(ObjectKind::View, "s", "a", &[&b]),
        object(ObjectKind::View, "s", "b", &[&c]),
        object(ObjectKind::View, "s", "c", &[&a]),
        object(ObjectKind::View, "s", "d", &[&a]),
        object(ObjectKind::Table, "s", "t", &[]),
    ];
    let err = creation_order(&objects).unwrap_err();
    assert_eq!(err.cycle, [a, b, c]);
    assert_eq!(err.to_string(), "dependency cycle: view s.a → view s.b → view s.c → view s.a");

    // Tables referencing each other through foreign keys (post-data) order fine.
    let (ta, tb) = (key(ObjectKind::Table, "s", "a"), key(ObjectKind::Table, "s", "b"));
    let objects = vec![
        object(ObjectKind::ForeignKey, "s", "a.a_b", &[&ta, &tb]),
        object(ObjectKind::ForeignKey, "s", "b.b_a", &[&tb, &ta]),
        object(ObjectKind::ForeignKey, "s", "a.a_a", &[&ta]),
        object(ObjectKind::Table, "s", "a", &[]),
        object(ObjectKind::Table, "s", "b", &[]),
    ];
    assert_eq!(creation_order(&objects).unwrap().len(), 5);
}

fn owned_table() -> SchemaObject {
    let mut t = SchemaObject::new(
        key(ObjectKind::Table, "app", "Orders"),
        vec!["CREATE TABLE \"app\".\"Orders\" (\n    id integer\n)".into()],
    );
    t.owner = Some("alice".into());
    t.default_acl = acl(&["alice=arwdDxt/alice"]);
    t.acl = Some(acl(&["alice=arwdDxt/alice", "bob=r/alice", "carol=r*w/alice", "=r/alice"]));
    t.column_acls = vec![ColumnAcl { column: "id".into(), acl: acl(&["bob=w/alice"]) }];
    t.comment = Some("it's the orders".into());
    t.sub_comments =
        vec![SubComment { target: "COLUMN \"app\".\"Orders\".\"id\"".into(), text: "key".into() }];
    t
}

#[test]
fn create_statements_add_owner_grants_and_comments_with_roles_mapped() {
    let t = owned_table();
    assert_eq!(
        t.create_statements(&identity),
        [
            "CREATE TABLE \"app\".\"Orders\" (\n    id integer\n)",
            "ALTER TABLE \"app\".\"Orders\" OWNER TO \"alice\"",
            "GRANT SELECT ON TABLE \"app\".\"Orders\" TO \"bob\"",
            "GRANT UPDATE ON TABLE \"app\".\"Orders\" TO \"carol\"",
            "GRANT SELECT ON TABLE \"app\".\"Orders\" TO \"carol\" WITH GRANT OPTION",
            "GRANT SELECT ON TABLE \"app\".\"Orders\" TO PUBLIC",
            "GRANT UPDATE (\"id\") ON TABLE \"app\".\"Orders\" TO \"bob\"",
            "COMMENT ON TABLE \"app\".\"Orders\" IS 'it''s the orders'",
            "COMMENT ON COLUMN \"app\".\"Orders\".\"id\" IS 'key'",
        ]
    );
    // alice becomes "Alice Prod", bob is left out, carol stays.
    let map = |r: &str| match r {
        "alice" => Some("Alice Prod".to_string()),
        "bob" => None,
        other => Some(other.to_string()),
    };
    let statements = t.create_statements(&map);
    assert_eq!(statements[1], "ALTER TABLE \"app\".\"Orders\" OWNER TO \"Alice Prod\"");
    assert!(statements.iter().all(|s| !s.contains("bob")), "{statements:#?}");
    assert!(statements.contains(&"GRANT UPDATE ON TABLE \"app\".\"Orders\" TO \"carol\"".into()));
    assert_eq!(t.definition(&map), statements.join("\n"));
    assert_ne!(t.definition(&map), t.definition(&identity));
    // An owner mapped to nothing stays the creating role.
    let nobody = |r: &str| (r != "alice").then(|| r.to_string());
    let statements = t.create_statements(&nobody);
    assert!(statements.iter().all(|s| !s.contains("OWNER TO")), "{statements:#?}");
    assert!(statements.contains(&"GRANT SELECT ON TABLE \"app\".\"Orders\" TO \"bob\"".into()));
    assert_eq!(t.roles(), ["alice", "bob", "carol"]);
}

#[test]
fn grants_follow_pg_dump_semantics() {
    // EXECUTE revoked from PUBLIC: one REVOKE.
    let mut f =
        SchemaObject::new(key(ObjectKind::Function, "s", "f(integer)"), vec!["-- f".into()]);
    f.owner = Some("o".into());
    f.default_acl = acl(&["=X/o", "o=X/o"]);
    f.acl = Some(acl(&["o=X/o", "app=X/o"]));
    assert_eq!(
        f.create_statements(&identity)[2..],
        [
            "REVOKE ALL ON FUNCTION \"s\".\"f\"(integer) FROM PUBLIC",
            "GRANT EXECUTE ON FUNCTION \"s\".\"f\"(integer) TO \"app\"",
        ]
    );
    // A grant by another grantor is made as that grantor; the owner's own privileges trimmed.
    let mut t = SchemaObject::new(key(ObjectKind::Table, "s", "t"), vec!["-- t".into()]);
    t.owner = Some("o".into());
    t.default_acl = acl(&["o=arwdDxt/o"]);
    t.acl = Some(acl(&["o=arwdxt/o", "w=r*/o", "r=r/w"]));
    assert_eq!(
        t.create_statements(&identity)[2..],
        [
            "REVOKE TRUNCATE ON TABLE \"s\".\"t\" FROM \"o\"",
            "GRANT SELECT ON TABLE \"s\".\"t\" TO \"w\" WITH GRANT OPTION",
            "SET SESSION AUTHORIZATION \"w\"",
            "GRANT SELECT ON TABLE \"s\".\"t\" TO \"r\"",
            "RESET SESSION AUTHORIZATION",
        ]
    );
    // Aggregates are granted on as functions, by argument types.
    let mut a = SchemaObject::new(
        key(ObjectKind::Aggregate, "s", "pct(double precision, anyelement)"),
        vec!["-- a".into()],
    );
    a.sql_name = "\"s\".\"pct\"(double precision ORDER BY anyelement)".into();
    a.owner = Some("o".into());
    a.default_acl = acl(&["=X/o", "o=X/o"]);
    a.acl = Some(acl(&["o=X/o"]));
    assert_eq!(
        a.create_statements(&identity)[1..],
        [
            "ALTER AGGREGATE \"s\".\"pct\"(double precision ORDER BY anyelement) OWNER TO \"o\"",
            "REVOKE ALL ON FUNCTION \"s\".\"pct\"(double precision, anyelement) FROM PUBLIC",
        ]
    );
}

fn schema_public(owner: &str, acl_items: &[&str], comment: &str) -> SchemaObject {
    let mut s = SchemaObject::new(
        key(ObjectKind::Schema, "", "public"),
        vec!["CREATE SCHEMA \"public\"".into()],
    );
    s.owner = Some(owner.into());
    s.default_acl = acl(&[&format!("{owner}=UC/{owner}")]);
    s.acl = Some(acl(acl_items));
    s.comment = Some(comment.into());
    s
}

#[test]
fn align_metadata_fixes_owner_grants_and_comments_of_an_existing_object() {
    // A pagila-style source (restored from an old dump) and a fresh PostgreSQL 15 target.
    let source = schema_public(
        "postgres",
        &["postgres=UC/postgres", "=UC/postgres"],
        "standard public schema",
    );
    let fresh = schema_public(
        "pg_database_owner",
        &["pg_database_owner=UC/pg_database_owner", "=U/pg_database_owner"],
        "standard public schema",
    );
    assert_eq!(
        source.align_metadata(&fresh, &identity).unwrap(),
        [
            "ALTER SCHEMA \"public\" OWNER TO \"postgres\"",
            "GRANT CREATE ON SCHEMA \"public\" TO PUBLIC",
        ]
    );
    // Already aligned: nothing to do.
    assert_eq!(source.align_metadata(&source, &identity), Some(Vec::new()));
    // Comments are set and removed; grants the source lacks are revoked.
    let mut changed = schema_public(
        "postgres",
        &["postgres=UC/postgres", "extra=U/postgres", "=UC/postgres"],
        "other",
    );
    changed.sub_comments = vec![SubComment { target: "X".into(), text: "y".into() }];
    assert_eq!(
        source.align_metadata(&changed, &identity).unwrap(),
        [
            "REVOKE ALL ON SCHEMA \"public\" FROM \"extra\"",
            "COMMENT ON SCHEMA \"public\" IS 'standard public schema'",
            "COMMENT ON X IS NULL",
        ]
    );
    // Different DDL: not an alignment.
    let mut other = source.clone();
    other.ddl = vec!["CREATE SCHEMA \"public\" AUTHORIZATION x".into()];
    assert_eq!(source.align_metadata(&other, &identity), None);
}

#[test]
fn policies_map_their_roles() {
    let policy = PolicyDef {
        name: "own rows".into(),
        table_sql: "\"s\".\"t\"".into(),
        permissive: false,
        command: "SELECT".into(),
        roles: vec!["reader".into(), "".into()],
        using: Some("(owner = CURRENT_USER)".into()),
        with_check: None,
    };
    let mut p = SchemaObject::new(
        key(ObjectKind::Policy, "s", "t.own rows"),
        vec![policy.render(&identity)],
    );
    p.policy = Some(policy);
    assert_eq!(
        p.ddl[0],
        "CREATE POLICY \"own rows\" ON \"s\".\"t\" AS RESTRICTIVE FOR SELECT TO \"reader\", \
         PUBLIC USING ((owner = CURRENT_USER))"
    );
    let map = |r: &str| Some(format!("{r}_prod"));
    assert!(p.create_statements(&map)[0].contains("TO \"reader_prod\", PUBLIC"));
    // Compared with the target's policy (whose role is already the target's), they match.
    let mut there = p.clone();
    there.policy.as_mut().unwrap().roles[0] = "reader_prod".into();
    there.ddl = vec![there.policy.as_ref().unwrap().render(&identity)];
    assert_eq!(p.align_metadata(&there, &map), Some(Vec::new()));
    assert_eq!(p.roles(), ["reader"]);
}

#[test]
fn objects_survive_json() {
    let mut t = owned_table();
    t.depends_on = BTreeSet::from([key(ObjectKind::Schema, "", "app")]);
    t.table_info = Some(TableInfo {
        columns_for_copy: vec!["id".into()],
        estimated_rows: 10,
        bytes: 8192,
        has_primary_key: true,
        primary_key_columns: vec!["id".into()],
        ..TableInfo::default()
    });
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains("\"kind\":\"table\""), "{json}");
    assert!(json.contains("\"section\":\"pre_data\""), "{json}");
    let back: SchemaObject = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn default_privileges_are_statements_relative_to_the_built_in_ones() {
    let mut global =
        SchemaObject::new(key(ObjectKind::DefaultPrivileges, "", "alice.functions"), vec![]);
    global.owner = Some("alice".into());
    global.default_acl = acl(&["=X/alice", "alice=X/alice"]);
    global.acl = Some(acl(&["alice=X/alice", "app=X/alice"]));
    assert_eq!(global.key.to_string(), "default privileges for role alice on functions");
    assert_eq!(
        global.create_statements(&identity),
        [
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"alice\" REVOKE ALL ON FUNCTIONS FROM PUBLIC",
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"alice\" GRANT EXECUTE ON FUNCTIONS TO \"app\"",
        ]
    );
    let map = |r: &str| Some(format!("{r}2"));
    assert!(global.create_statements(&map)[1].contains("FOR ROLE \"alice2\" GRANT EXECUTE"));
    assert_eq!(global.create_statements(&|_| None), Vec::<String>::new());
    assert_eq!(global.align_metadata(&global, &identity), Some(Vec::new()));

    let mut in_schema =
        SchemaObject::new(key(ObjectKind::DefaultPrivileges, "app", "alice.tables"), vec![]);
    in_schema.owner = Some("alice".into());
    in_schema.acl = Some(acl(&["reader=r/alice"]));
    assert_eq!(
        in_schema.key.to_string(),
        "default privileges for role alice on tables in schema app"
    );
    assert_eq!(
        in_schema.create_statements(&identity),
        ["ALTER DEFAULT PRIVILEGES FOR ROLE \"alice\" IN SCHEMA \"app\" GRANT SELECT ON TABLES \
          TO \"reader\""]
    );
    assert_eq!(in_schema.section, Section::PostData);
}
