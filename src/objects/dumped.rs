//! Objects whose DDL comes from pg_dump ([`ObjectKind::Dumped`], [`ObjectKind::EventTrigger`]):
//! [`attach_dump`] gives them pg_dump's SQL, entry by entry, and says which of pg_dump's entries
//! nothing covers (preflight refuses those by name, so that nothing is left out in silence).

use std::collections::{BTreeSet, HashMap};

use super::{ObjectKey, ObjectKind, Schema, SchemaObject, Section};
use crate::dump::Entry;

/// pg_dump entries that are not pgtransit's to create: database-level settings, large objects
/// (copied with the data). (Subscriptions are not created either, but reported.)
const NOT_SCHEMA: &[&str] = &[
    "ENCODING",
    "STDSTRINGS",
    "SEARCHPATH",
    "DATABASE",
    "DATABASE PROPERTIES",
    "SUBSCRIPTION TABLE",
    "BLOB",
    "BLOBS",
    "BLOB METADATA",
    "LARGE OBJECT",
];

/// Entries that are parts of objects pgtransit creates itself, though pg_dump names them apart
/// without a catalog id of their own.
const PARTS_OF_NATIVE: &[&str] =
    &["SEQUENCE OWNED BY", "INDEX ATTACH", "TABLE ATTACH", "DEFAULT ACL", "ROW SECURITY"];

/// Entries that say something about another entry's object.
const ABOUT_ANOTHER: &[&str] = &["COMMENT", "ACL", "SECURITY LABEL"];

/// What [`attach_dump`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// pg_dump's entries that no object covers.
    pub uncovered: Vec<Uncovered>,
    /// Subscriptions (pg_dump's tag): never created on the target, where they would start
    /// pulling from their publisher; preflight reports them.
    pub subscriptions: Vec<String>,
    /// User mappings whose `password` option was left out (pg_dump's tag: `USER MAPPING <user>
    /// SERVER <server>`): pgtransit never writes a password into a plan.
    pub passwords_left_out: Vec<String>,
}

/// A pg_dump entry that no object covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    /// pg_dump's description (`SECURITY LABEL`, ...).
    pub kind: String,
    /// pg_dump's tag.
    pub name: String,
    /// Schema, empty outside schemas.
    pub schema: String,
}

/// Gives the pg_dump-created objects of `schema` their SQL from `entries` (a parsed
/// `pg_dump --schema-only --verbose` of the same database), with the comments, privileges and
/// security labels on them. A base type gets its shell type (`CREATE TYPE t;`) as an object of
/// its own, which its input and output functions depend on instead of the type. Privileges,
/// comments and labels pg_dump dumps on objects nobody here creates (grants changed on an
/// extension's member functions, ...) become objects of their own, after everything else.
/// Objects pg_dump does not dump (an operator family implied by its class) are dropped. A user
/// mapping's `password` option is left out (it would be in the plan).
pub fn attach_dump(schema: &mut Schema, entries: &[Entry]) -> Attached {
    let mut uncovered = vec![];
    let mut passwords_left_out = vec![];
    let mut subscriptions = vec![];
    let by_dump_id: HashMap<u32, &Entry> = entries.iter().map(|e| (e.dump_id, e)).collect();
    let by_catalog_id: HashMap<(u32, u32), usize> =
        schema.objects.iter().enumerate().filter_map(|(i, o)| Some((o.catalog_id?, i))).collect();
    let by_tag: HashMap<(String, String), usize> = schema
        .objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.key.is_dumped())
        .filter_map(|(i, o)| Some(((o.key.schema.clone(), o.dump_tag.clone()?), i)))
        .collect();
    let mut extra: Vec<SchemaObject> = vec![];
    let mut shells: Vec<(usize, ObjectKey)> = vec![];
    for e in entries {
        let kind = e.kind.as_str();
        if kind == "SUBSCRIPTION" {
            subscriptions.push(e.name.clone());
            continue;
        }
        // pgtransit's own publications (`pgtransit_<migration>`, online mode) stay on the
        // source, as the catalog read leaves them out.
        if kind.starts_with("PUBLICATION") && e.name.starts_with("pgtransit_") {
            continue;
        }
        if e.class != 0 {
            if let Some(&i) = by_catalog_id.get(&(e.class, e.oid)) {
                schema.objects[i].ddl.push(e.sql.clone());
            } else if !schema.covered.contains(&(e.class, e.oid))
                && !NOT_SCHEMA.contains(&kind)
                && !PARTS_OF_NATIVE.contains(&kind)
            {
                uncovered.push(uncovered_entry(e));
            }
            continue;
        }
        if ABOUT_ANOTHER.contains(&kind) {
            let about = e.deps.first().and_then(|d| by_dump_id.get(d));
            let dumped = about.and_then(|a| {
                by_catalog_id
                    .get(&(a.class, a.oid))
                    .filter(|_| a.class != 0)
                    .or_else(|| by_tag.get(&(a.schema.clone(), a.name.clone())))
            });
            let native =
                about.is_some_and(|a| a.class != 0 && schema.covered.contains(&(a.class, a.oid)));
            match dumped {
                Some(&i) => schema.objects[i].ddl.push(e.sql.clone()),
                // pgtransit carries comments and privileges of its own objects itself.
                None if native && kind != "SECURITY LABEL" => {}
                None => extra.push(standalone(e)),
            }
            continue;
        }
        match kind {
            "SHELL TYPE" => match by_tag.get(&(e.schema.clone(), e.name.clone())) {
                Some(&i) => {
                    let base = &schema.objects[i].key;
                    let name = base.name.replacen("type ", "shell type ", 1);
                    let key = ObjectKey::new(ObjectKind::Dumped, &base.schema, name);
                    let mut shell = SchemaObject::new(key.clone(), vec![e.sql.clone()]);
                    shell.depends_on = schema.objects[i]
                        .depends_on
                        .iter()
                        .filter(|k| k.kind == ObjectKind::Schema)
                        .cloned()
                        .collect();
                    extra.push(shell);
                    shells.push((i, key));
                }
                None => uncovered.push(uncovered_entry(e)),
            },
            "USER MAPPING" => match by_tag.get(&(String::new(), e.name.clone())) {
                Some(&i) => {
                    let (sql, removed) = without_password(&e.sql);
                    if removed {
                        passwords_left_out.push(e.name.clone());
                    }
                    schema.objects[i].ddl.push(sql);
                }
                None => uncovered.push(uncovered_entry(e)),
            },
            k if NOT_SCHEMA.contains(&k) || PARTS_OF_NATIVE.contains(&k) => {}
            _ => uncovered.push(uncovered_entry(e)),
        }
    }
    for (i, shell) in shells {
        break_type_cycle(&mut schema.objects, i, shell);
    }
    schema.objects.extend(extra);
    // What pg_dump does not dump is implied by something else: not an object here either.
    let implied: BTreeSet<ObjectKey> = schema
        .objects
        .iter()
        .filter(|o| o.key.is_dumped() && o.ddl.is_empty())
        .map(|o| o.key.clone())
        .collect();
    schema.objects.retain(|o| !implied.contains(&o.key));
    for o in &mut schema.objects {
        o.depends_on.retain(|k| !implied.contains(k));
    }
    schema.objects.sort_by(|a, b| a.key.cmp(&b.key));
    Attached { uncovered, subscriptions, passwords_left_out }
}

/// A user mapping's SQL without its `password` option (pg_dump writes one option a line; a
/// line inside another option's literal is never taken for one).
fn without_password(sql: &str) -> (String, bool) {
    let mut kept: Vec<String> = vec![];
    let mut removed = false;
    for (line, top) in crate::dump::lines_with_level(sql) {
        let option = line.trim_start();
        if top && (option.starts_with("password '") || option.starts_with("\"password\" '")) {
            removed = true;
            // The option before it keeps no trailing comma if this one was the last.
            if !line.trim_end().ends_with(',')
                && let Some(previous) = kept.last_mut()
                && previous.ends_with(',')
            {
                previous.pop();
            }
            continue;
        }
        kept.push(line.to_string());
    }
    let mut sql = kept.join("\n");
    // `OPTIONS (\n)` with nothing left in it.
    sql = sql.replace(" OPTIONS (\n);", ";");
    (sql, removed)
}

/// A base type and its I/O functions depend on each other: the functions are created after
/// its shell instead, and the type after them.
fn break_type_cycle(objects: &mut [SchemaObject], base: usize, shell: ObjectKey) {
    let type_key = objects[base].key.clone();
    let functions: Vec<ObjectKey> = objects[base]
        .depends_on
        .iter()
        .filter(|k| k.kind == ObjectKind::Function)
        .cloned()
        .collect();
    for o in objects.iter_mut() {
        if functions.contains(&o.key) && o.depends_on.remove(&type_key) {
            o.depends_on.insert(shell.clone());
        }
    }
    objects[base].depends_on.insert(shell);
}

/// A comment, privileges or a security label on something no object here creates: an object
/// of its own, created after everything else.
fn standalone(e: &Entry) -> SchemaObject {
    let word = match e.kind.as_str() {
        "ACL" => "privileges on",
        "COMMENT" => "comment on",
        _ => "security label on",
    };
    // On a system catalog (column privileges granted on pg_catalog.pg_authid, ...): part of
    // the database, whatever the schemas in scope.
    let system = matches!(e.schema.as_str(), "pg_catalog" | "information_schema");
    let (schema, name) = if system {
        (String::new(), format!("{word} {} (schema {})", e.name, e.schema))
    } else {
        (e.schema.clone(), format!("{word} {}", e.name))
    };
    let key = ObjectKey::new(ObjectKind::Dumped, schema, name);
    let mut o = SchemaObject::new(key, vec![e.sql.clone()]);
    o.section = Section::PostData;
    o
}

fn uncovered_entry(e: &Entry) -> Uncovered {
    Uncovered { kind: e.kind.clone(), name: e.name.clone(), schema: e.schema.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dump_id: u32, class: u32, oid: u32, kind: &str, name: &str, sql: &str) -> Entry {
        Entry {
            dump_id,
            class,
            oid,
            deps: vec![],
            name: name.into(),
            kind: kind.into(),
            schema: "public".into(),
            owner: "postgres".into(),
            sql: sql.into(),
        }
    }

    #[test]
    fn pg_dump_entries_fill_objects_break_the_type_cycle_and_leave_nothing_unnamed() {
        let type_key = ObjectKey::new(ObjectKind::Dumped, "public", "type public.widget");
        let fn_in = ObjectKey::new(ObjectKind::Function, "public", "widget_in(cstring)");
        let family = ObjectKey::new(ObjectKind::Dumped, "public", "operator family public.f");
        let mut base = SchemaObject::new(type_key.clone(), vec![]);
        base.catalog_id = Some((1247, 100));
        base.dump_tag = Some("widget".into());
        base.depends_on.insert(fn_in.clone());
        let mut input = SchemaObject::new(fn_in.clone(), vec!["CREATE FUNCTION ...".into()]);
        input.depends_on.insert(type_key.clone());
        let mut implied = SchemaObject::new(family, vec![]);
        implied.catalog_id = Some((2753, 300));
        let mut mapping = SchemaObject::new(
            ObjectKey::new(ObjectKind::Dumped, "", "user mapping a on server s"),
            vec![],
        );
        mapping.dump_tag = Some("USER MAPPING a SERVER s".into());
        let mut schema = Schema {
            objects: vec![base, input, implied, mapping],
            covered: [(1259, 5)].into_iter().collect(),
        };
        let mut comment = entry(4, 0, 0, "COMMENT", "TYPE widget", "COMMENT ON TYPE ...;");
        comment.deps = vec![2];
        let mut grant = entry(5, 0, 0, "ACL", "FUNCTION hstore_in(cstring)", "REVOKE ...;");
        grant.deps = vec![999];
        let mut um = entry(7, 0, 0, "USER MAPPING", "USER MAPPING a SERVER s", "");
        um.schema.clear();
        um.sql = "CREATE USER MAPPING FOR a SERVER s OPTIONS (\n    \"user\" 'x',\n    \
                  password 'secret'\n);"
            .into();
        let entries = vec![
            entry(1, 0, 0, "SHELL TYPE", "widget", "CREATE TYPE public.widget;"),
            entry(2, 1247, 100, "TYPE", "widget", "CREATE TYPE public.widget (...);"),
            entry(3, 1259, 5, "TABLE", "t", "CREATE TABLE public.t ();"),
            comment,
            grant,
            entry(6, 9999, 7, "WIDGET THING", "w", "CREATE WIDGET THING w;"),
            um,
            entry(8, 6100, 9, "SUBSCRIPTION", "sub", "CREATE SUBSCRIPTION sub ...;"),
        ];
        let attached = attach_dump(&mut schema, &entries);
        let by_key = |k: &str| schema.objects.iter().find(|o| o.key.name == k);
        let base = by_key("type public.widget").unwrap();
        assert_eq!(base.ddl, ["CREATE TYPE public.widget (...);", "COMMENT ON TYPE ...;"]);
        let shell = by_key("shell type public.widget").expect("a shell type object");
        assert_eq!(shell.ddl, ["CREATE TYPE public.widget;"]);
        // The input function needs the shell, not the type; the type comes after both.
        let input = schema.objects.iter().find(|o| o.key == fn_in).unwrap();
        assert!(input.depends_on.contains(&shell.key) && !input.depends_on.contains(&type_key));
        assert!(base.depends_on.contains(&shell.key));
        // pg_dump did not dump the family: it is implied, not an object.
        assert!(by_key("operator family public.f").is_none());
        // A grant on something nobody creates here is an object of its own, after the rest.
        let grant = by_key("privileges on FUNCTION hstore_in(cstring)").unwrap();
        assert_eq!(grant.section, Section::PostData);
        // The password option never reaches the plan.
        let mapping = by_key("user mapping a on server s").unwrap();
        assert_eq!(
            mapping.ddl,
            ["CREATE USER MAPPING FOR a SERVER s OPTIONS (\n    \"user\" 'x'\n);"]
        );
        assert_eq!(attached.passwords_left_out, ["USER MAPPING a SERVER s"]);
        assert_eq!(attached.subscriptions, ["sub"]);
        assert_eq!(
            attached.uncovered,
            [Uncovered { kind: "WIDGET THING".into(), name: "w".into(), schema: "public".into() }]
        );
    }
}
