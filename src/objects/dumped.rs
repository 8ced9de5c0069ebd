//! Objects whose DDL comes from pg_dump ([`ObjectKind::Dumped`], [`ObjectKind::EventTrigger`]):
//! [`attach_dump`] gives them pg_dump's SQL, entry by entry, and says which of pg_dump's entries
//! nothing covers (preflight refuses those by name, so that nothing is left out in silence).

use std::collections::{BTreeSet, HashMap};

use super::{ObjectKey, ObjectKind, Schema, SchemaObject, Section};
use crate::dump::Entry;

/// pg_dump entries that are not pgtransit's to create: database-level settings, subscriptions
/// (they would connect to their publisher from the target), large objects (copied with the
/// data).
const NOT_SCHEMA: &[&str] = &[
    "ENCODING",
    "STDSTRINGS",
    "SEARCHPATH",
    "DATABASE",
    "DATABASE PROPERTIES",
    "SUBSCRIPTION",
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
    Attached { uncovered, passwords_left_out }
}

/// A user mapping's SQL without its `password` option (pg_dump writes one option a line).
fn without_password(sql: &str) -> (String, bool) {
    let lines: Vec<&str> = sql.lines().collect();
    let mut kept: Vec<String> = vec![];
    let mut removed = false;
    for line in &lines {
        let option = line.trim_start();
        if option.starts_with("password '") || option.starts_with("\"password\" '") {
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
