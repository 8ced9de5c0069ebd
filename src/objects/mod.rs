//! Schema objects: every object of a database (schemas, extensions, types, functions, sequences,
//! tables, views, indexes, constraints, triggers, rules, policies, statistics), read into plain
//! serialisable data from which pgtransit can compare a source and a target object by object, and
//! create the source's objects on an empty target so that `pg_dump --schema-only` of both is the
//! same.
//!
//! - [`read`] reads them with one bulk query per kind (never one per object), all `SELECT`s, in the
//!   caller's transaction. DDL comes from the server's own functions where they exist
//!   (`pg_get_indexdef`, `pg_get_constraintdef`, `pg_get_triggerdef`, `pg_get_functiondef`,
//!   `pg_get_viewdef`, `pg_get_ruledef`, `pg_get_statisticsobjdef`, `pg_get_expr`, ...); the rest
//!   (tables, types, sequences, domains, aggregates, policies, extensions) is generated here.
//! - [`SchemaObject::create_statements`] is what creates one object on a target: its DDL, then
//!   owner, privileges (as pg_dump emits them, relative to the object type's default ACL) and
//!   comments. [`SchemaObject::align_metadata`] aligns an existing object whose DDL matches.
//! - [`creation_order`] orders objects so that each comes after what it depends on.
//!
//! The session creating objects must run `SET check_function_bodies = false` first (as pg_dump's
//! output does): SQL function bodies may reference tables that are created later. Statements are
//! fully qualified and every identifier is quoted, so they do not depend on `search_path`. Grants
//! made by a role other than the object's owner are reproduced with `SET SESSION AUTHORIZATION`,
//! which needs a superuser session (as restoring pg_dump's output does).

pub(crate) mod acl;
mod ddl;
mod dumped;
mod order;
mod read;

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use acl::AclItem;
pub use dumped::{Attached, Uncovered, attach_dump};
pub use order::{OrderError, creation_order, effective_sections};
pub use read::{
    READ_QUERIES, ReadStats, Schema, read, read_schema, read_snapshot, read_with_stats,
};

use crate::sql::{display, ident, literal};

/// What kind of object. The order is the tie-break order for creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// `CREATE SCHEMA`.
    Schema,
    /// `CREATE EXTENSION` (its member objects are not objects here).
    Extension,
    /// `CREATE COLLATION`.
    Collation,
    /// Kinds whose DDL comes from pg_dump (`crate::dump`): operators, operator classes and
    /// families, casts, text search objects, access methods, foreign-data wrappers, servers,
    /// user mappings, foreign tables, transforms, base and shell types, conversions,
    /// languages. Named `<type> <identity>` as `pg_identify_object` gives them
    /// (`operator public.===(integer,integer)`).
    Dumped,
    /// Enum, composite and range types.
    Type,
    /// `CREATE DOMAIN`, with its constraints.
    Domain,
    /// Functions and procedures.
    Function,
    /// `CREATE AGGREGATE`.
    Aggregate,
    /// Sequences that are not identity sequences (those belong to their column).
    Sequence,
    /// Tables, partitioned tables and partitions (attached in their own DDL).
    Table,
    /// `CREATE VIEW`.
    View,
    /// `CREATE MATERIALIZED VIEW ... WITH NO DATA` (populated later, see
    /// [`TableInfo::populated`]).
    MaterializedView,
    /// `ALTER SEQUENCE .. OWNED BY`, after both the sequence and its table.
    SequenceOwnership,
    /// Indexes not backing a constraint (with their partitions' indexes).
    Index,
    /// Primary key, unique and exclusion constraints (with their partitions'), and check
    /// constraints that are not part of `CREATE TABLE` (`NOT VALID` ones).
    Constraint,
    /// Foreign keys.
    ForeignKey,
    /// Triggers, with their enabled state.
    Trigger,
    /// Rules other than views' `_RETURN` rules.
    Rule,
    /// Row-level security policies.
    Policy,
    /// Extended statistics.
    Statistics,
    /// `ALTER DEFAULT PRIVILEGES` of one role for one kind of object (in one schema, or
    /// everywhere): last, so that it does not apply to the objects created before it. Named
    /// `<role>.<tables|sequences|functions|types|schemas>`; no DDL of its own, only its ACL.
    DefaultPrivileges,
    /// Event triggers, from pg_dump like [`ObjectKind::Dumped`]: after everything else, so that
    /// they do not fire for the migration's own DDL.
    EventTrigger,
}

impl ObjectKind {
    /// Lowercase words, as in messages.
    pub fn describe(self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
            ObjectKind::Collation => "collation",
            ObjectKind::Type => "type",
            ObjectKind::Domain => "domain",
            ObjectKind::Function => "function",
            ObjectKind::Aggregate => "aggregate",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Table => "table",
            ObjectKind::View => "view",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::SequenceOwnership => "sequence ownership",
            ObjectKind::Index => "index",
            ObjectKind::Constraint => "constraint",
            ObjectKind::ForeignKey => "foreign key",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Rule => "rule",
            ObjectKind::Policy => "policy",
            ObjectKind::Statistics => "statistics",
            ObjectKind::DefaultPrivileges => "default privileges",
            ObjectKind::Dumped => "object",
            ObjectKind::EventTrigger => "event trigger",
        }
    }

    /// The section pg_dump puts objects of this kind in.
    pub fn section(self) -> Section {
        match self {
            ObjectKind::Index
            | ObjectKind::Constraint
            | ObjectKind::ForeignKey
            | ObjectKind::Trigger
            | ObjectKind::Rule
            | ObjectKind::Policy
            | ObjectKind::Statistics
            | ObjectKind::DefaultPrivileges
            | ObjectKind::EventTrigger => Section::PostData,
            _ => Section::PreData,
        }
    }

    /// Whether objects of this kind belong to a table and are named `<table>.<name>`.
    pub fn is_table_bound(self) -> bool {
        matches!(
            self,
            ObjectKind::Constraint
                | ObjectKind::ForeignKey
                | ObjectKind::Trigger
                | ObjectKind::Rule
                | ObjectKind::Policy
        )
    }
}

/// Identity of an object, the same on both servers.
///
/// `name` is the object's name, except: functions and aggregates `name(argument types)` (e.g.
/// `film_in_stock(integer, integer)`); table-bound objects (constraints, foreign keys, triggers,
/// rules, policies) `<table>.<name>`. `schema` is empty for schemas and extensions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Kind.
    pub kind: ObjectKind,
    /// Schema, `""` for schemas and extensions.
    pub schema: String,
    /// Name (see the type's documentation).
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(kind: ObjectKind, schema: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind, schema: schema.into(), name: name.into() }
    }

    /// An object whose DDL comes from pg_dump.
    pub fn is_dumped(&self) -> bool {
        matches!(self.kind, ObjectKind::Dumped | ObjectKind::EventTrigger)
    }

    /// `name` for messages: quoted only where needed, argument lists kept as they are.
    fn display_name(&self) -> String {
        match self.kind {
            ObjectKind::DefaultPrivileges => match self.name.rsplit_once('.') {
                Some((role, objects)) => format!("for role {} on {objects}", display(role)),
                None => display(&self.name),
            },
            ObjectKind::Function | ObjectKind::Aggregate => match split_signature(&self.name) {
                Some((name, args)) => format!("{}{args}", display(name)),
                None => display(&self.name),
            },
            kind if kind.is_table_bound() => {
                let mut parts = self.name.split('.');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(table), Some(name), None) => {
                        format!("{}.{}", display(table), display(name))
                    }
                    _ => display(&self.name),
                }
            }
            _ => display(&self.name),
        }
    }
}

/// `("f", "(integer, text)")` for `f(integer, text)`: the `(` matching the final `)`, skipping
/// parentheses inside double-quoted type names.
fn split_signature(name: &str) -> Option<(&str, &str)> {
    if !name.ends_with(')') {
        return None;
    }
    let bytes = name.as_bytes();
    let (mut depth, mut quoted) = (0usize, false);
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b')' if !quoted => depth += 1,
            b'(' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some((&name[..i], &name[i..]));
                }
            }
            _ => {}
        }
    }
    None
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_dumped() {
            // `<type> <identity>` already.
            f.write_str(&self.name)
        } else if self.kind == ObjectKind::DefaultPrivileges {
            write!(f, "{} {}", self.kind.describe(), self.display_name())?;
            if !self.schema.is_empty() {
                write!(f, " in schema {}", display(&self.schema))?;
            }
            Ok(())
        } else if self.schema.is_empty() {
            write!(f, "{} {}", self.kind.describe(), self.display_name())
        } else {
            write!(f, "{} {}.{}", self.kind.describe(), display(&self.schema), self.display_name())
        }
    }
}

/// Where pg_dump puts an object: pre-data is what tables and the load need, post-data is what
/// is built after the load (indexes, constraints, foreign keys, triggers, rules, policies,
/// statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Before the data.
    PreData,
    /// After the data.
    PostData,
}

/// A comment on a part of an object (a column, an inline check constraint, a domain constraint,
/// a partition's index or constraint).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubComment {
    /// What follows `COMMENT ON`, e.g. `COLUMN "public"."film"."title"`.
    pub target: String,
    /// The comment.
    pub text: String,
}

/// Privileges on one column of a table or view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnAcl {
    /// The column.
    pub column: String,
    /// Its ACL (a column's default ACL is empty).
    pub acl: Vec<AclItem>,
}

/// Privileges on a table's identity sequence (owned with the table, created with its column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceAcl {
    /// The sequence, quoted and qualified.
    pub sequence: String,
    /// Its ACL (effective).
    pub acl: Vec<AclItem>,
    /// Its default ACL.
    pub default_acl: Vec<AclItem>,
}

/// The parts of a `CREATE POLICY`, kept apart because its roles are mapped like grantees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Policy name.
    pub name: String,
    /// The table, quoted and qualified.
    pub table_sql: String,
    /// `PERMISSIVE` (true) or `RESTRICTIVE`.
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub command: String,
    /// Roles it applies to; `""` is PUBLIC.
    pub roles: Vec<String>,
    /// `USING` expression.
    pub using: Option<String>,
    /// `WITH CHECK` expression.
    pub with_check: Option<String>,
}

impl PolicyDef {
    /// The `CREATE POLICY` statement, roles mapped (a role mapped to nothing keeps its name).
    pub fn render(&self, roles: &dyn Fn(&str) -> Option<String>) -> String {
        let mut s = format!("CREATE POLICY {} ON {}", ident(&self.name), self.table_sql);
        if !self.permissive {
            s.push_str(" AS RESTRICTIVE");
        }
        s.push_str(&format!(" FOR {}", self.command));
        let names: Vec<String> = self
            .roles
            .iter()
            .map(|r| {
                if r.is_empty() {
                    "PUBLIC".to_string()
                } else {
                    ident(&roles(r).unwrap_or_else(|| r.clone()))
                }
            })
            .collect();
        if !names.is_empty() {
            s.push_str(&format!(" TO {}", names.join(", ")));
        }
        if let Some(using) = &self.using {
            s.push_str(&format!(" USING ({using})"));
        }
        if let Some(check) = &self.with_check {
            s.push_str(&format!(" WITH CHECK ({check})"));
        }
        s
    }
}

/// A sequence that belongs to an identity column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentitySequence {
    /// The identity column.
    pub column: String,
    /// The sequence's schema.
    pub schema: String,
    /// The sequence's name.
    pub name: String,
}

/// What loading a table (or populating a materialized view) needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Columns to copy: not generated, not dropped, in `attnum` order.
    pub columns_for_copy: Vec<String>,
    /// Generated (stored) columns, computed by the target.
    pub generated_columns: Vec<String>,
    /// Estimated rows (`reltuples`, 0 when never analysed).
    pub estimated_rows: i64,
    /// Size on disk in bytes (`pg_table_size`).
    pub bytes: i64,
    /// `UNLOGGED`.
    pub unlogged: bool,
    /// A partitioned table: no storage of its own, its partitions are copied.
    pub partitioned: bool,
    /// The parent, if this is a partition.
    pub partition_of: Option<(String, String)>,
    /// Inheritance parents (`INHERITS`), in order.
    pub inherits: Vec<(String, String)>,
    /// Has a primary key.
    pub has_primary_key: bool,
    /// The primary key's columns, in key order.
    pub primary_key_columns: Vec<String>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: String,
    /// Identity columns' sequences (their values are set after the load).
    pub identity_sequences: Vec<IdentitySequence>,
    /// A materialized view (created `WITH NO DATA`).
    pub matview: bool,
    /// For materialized views: populated on the source (so `REFRESH` it on the target).
    pub populated: bool,
}

/// One object: how to create it, who owns it, who may use it, what it depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaObject {
    /// Identity.
    pub key: ObjectKey,
    /// pg_dump's section.
    pub section: Section,
    /// The table (schema, name) it belongs to, for table-bound objects, indexes, statistics and
    /// owned sequences.
    pub table: Option<(String, String)>,
    /// The statement(s) creating it on a target, without owner, grants or comment; canonical,
    /// so comparing source and target `ddl` tells whether they are the same object.
    pub ddl: Vec<String>,
    /// Owner, for kinds that have one.
    pub owner: Option<String>,
    /// Privileges (the effective ACL: the default one when none was set), for kinds that have
    /// them.
    pub acl: Option<Vec<AclItem>>,
    /// Comment.
    pub comment: Option<String>,
    /// Keys of other objects (in the same list) that must exist first.
    pub depends_on: BTreeSet<ObjectKey>,
    /// For tables and materialized views: what the load needs.
    pub table_info: Option<TableInfo>,
    /// The object type word of `ALTER .. OWNER TO` and `COMMENT ON` (`TABLE`, `VIEW`,
    /// `FUNCTION`, `PROCEDURE`, `AGGREGATE`, `CONSTRAINT`, ...).
    #[serde(default)]
    pub sql_type: String,
    /// The object's name in those statements, quoted: `"public"."film"`,
    /// `"public"."f"(integer)`, `"film_pkey" ON "public"."film"`.
    #[serde(default)]
    pub sql_name: String,
    /// The ACL the object has when nothing was granted or revoked (`acldefault` for its owner).
    #[serde(default)]
    pub default_acl: Vec<AclItem>,
    /// Column privileges (tables and views), in column order.
    #[serde(default)]
    pub column_acls: Vec<ColumnAcl>,
    /// Privileges on a table's identity sequences.
    #[serde(default)]
    pub sequence_acls: Vec<SequenceAcl>,
    /// Comments on parts of the object (columns, inline constraints, partitions' indexes,
    /// identity sequences).
    #[serde(default)]
    pub sub_comments: Vec<SubComment>,
    /// For policies: the parts of `ddl[0]`, whose roles are mapped.
    #[serde(default)]
    pub policy: Option<PolicyDef>,
    /// For objects whose DDL comes from pg_dump: the catalog (its own OID) and OID pg_dump
    /// names the object by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_id: Option<(u32, u32)>,
    /// ... and, where pg_dump's entry has no OID, its tag (a base type's name, for its shell
    /// type; `USER MAPPING <user> SERVER <server>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_tag: Option<String>,
}

/// Role name standing for "the role creating the object" when the owner maps to no role.
const CREATING_ROLE: &str = "\u{0}creating role";

impl SchemaObject {
    /// An object with this key, section and DDL; `sql_type` and `sql_name` are derived from the
    /// key (functions: the key's argument types; table-bound objects: `"name" ON "schema"."table"`
    /// with the table taken from the key's `<table>.<name>`).
    pub fn new(key: ObjectKey, ddl: Vec<String>) -> SchemaObject {
        let (sql_type, sql_name) = default_sql_name(&key);
        SchemaObject {
            section: key.kind.section(),
            key,
            table: None,
            ddl,
            owner: None,
            acl: None,
            comment: None,
            depends_on: BTreeSet::new(),
            table_info: None,
            sql_type,
            sql_name,
            default_acl: Vec::new(),
            column_acls: Vec::new(),
            sequence_acls: Vec::new(),
            sub_comments: Vec::new(),
            policy: None,
            catalog_id: None,
            dump_tag: None,
        }
    }

    /// The DDL with roles mapped (only policies name roles in their DDL, and pg_dump's SQL,
    /// which carries its owner and privileges).
    pub fn rendered_ddl(&self, roles: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        if self.key.is_dumped() {
            return self
                .ddl
                .iter()
                .map(|sql| crate::dump::map_roles(sql, roles))
                .filter(|sql| !sql.is_empty())
                .collect();
        }
        match &self.policy {
            Some(policy) => {
                let mut ddl = self.ddl.clone();
                if let Some(first) = ddl.first_mut() {
                    *first = policy.render(roles);
                }
                ddl
            }
            None => self.ddl.clone(),
        }
    }

    /// `ALTER DEFAULT PRIVILEGES` turning `existing`'s (or the built-in defaults) into these.
    /// `None` when the role maps to nothing.
    fn default_privileges(
        &self,
        existing: Option<&SchemaObject>,
        roles: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Vec<String>> {
        let (source_role, objects) = self.key.name.rsplit_once('.')?;
        let role = match existing.and_then(|e| e.owner.clone()) {
            Some(there) => there,
            None => roles(source_role)?,
        };
        let mut prefix = format!("FOR ROLE {}", ident(&role));
        if !self.key.schema.is_empty() {
            prefix.push_str(&format!(" IN SCHEMA {}", ident(&self.key.schema)));
        }
        let target = acl::Target::default_privileges(&prefix, &objects.to_uppercase());
        let source_default = acl::map_acl(&self.default_acl, source_role, &role, roles);
        let desired =
            acl::map_acl(self.acl.as_deref().unwrap_or_default(), source_role, &role, roles);
        let (current, desired) = match existing {
            Some(there) => {
                let current = there.acl.clone().unwrap_or_default();
                (current, acl::rebase_defaults(&desired, &source_default, &there.default_acl))
            }
            None => (source_default, desired),
        };
        Some(acl::transition(&target, &role, &current, &desired))
    }

    /// Every role the object names: owner, grantees and grantors (not PUBLIC), policy roles;
    /// sorted, without duplicates.
    pub fn roles(&self) -> Vec<String> {
        let mut roles = BTreeSet::new();
        roles.extend(self.owner.iter().cloned());
        let acls = self
            .acl
            .iter()
            .flatten()
            .chain(self.column_acls.iter().flat_map(|c| &c.acl))
            .chain(self.sequence_acls.iter().flat_map(|s| &s.acl));
        for item in acls {
            roles.insert(item.grantee.clone());
            roles.insert(item.grantor.clone());
        }
        roles.extend(self.policy.iter().flat_map(|p| p.roles.iter().cloned()));
        if self.key.is_dumped() {
            roles.extend(self.ddl.iter().flat_map(|sql| crate::dump::roles_named(sql)));
        }
        roles.remove("");
        roles.remove("PUBLIC");
        roles.into_iter().collect()
    }

    /// The object's name in `GRANT .. ON` (aggregates: argument types only, no `ORDER BY`).
    fn grant_name(&self) -> String {
        if self.sql_type == "AGGREGATE" {
            default_sql_name(&self.key).1
        } else {
            self.sql_name.clone()
        }
    }

    /// The object type word of `GRANT .. ON`.
    fn grant_type(&self) -> &str {
        match self.sql_type.as_str() {
            "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE" => "TABLE",
            "AGGREGATE" => "FUNCTION",
            other => other,
        }
    }

    fn owner_statement(&self, owner: &str) -> String {
        format!("ALTER {} {} OWNER TO {}", self.sql_type, self.sql_name, ident(owner))
    }

    fn comment_statement(&self, text: Option<&str>) -> String {
        let value = text.map_or_else(|| "NULL".to_string(), literal);
        format!("COMMENT ON {} {} IS {value}", self.sql_type, self.sql_name)
    }

    /// Everything to run on the target to create it: `ddl`, then `ALTER .. OWNER TO`,
    /// GRANT/REVOKE (relative to the default ACL, as pg_dump does), `COMMENT ON`. `roles` maps
    /// a source role to the target role to use; `None` leaves the owner as the creating role and
    /// leaves grants to (or by) that role out.
    pub fn create_statements(&self, roles: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        if self.key.kind == ObjectKind::DefaultPrivileges {
            return self.default_privileges(None, roles).unwrap_or_default();
        }
        let mut out = self.rendered_ddl(roles);
        let mapped_owner = self.owner.as_deref().map(roles);
        if let Some(Some(owner)) = &mapped_owner {
            out.push(self.owner_statement(owner));
        }
        if let Some(source_owner) = &self.owner {
            let owner = mapped_owner.flatten().unwrap_or_else(|| CREATING_ROLE.into());
            if let Some(acl) = &self.acl {
                let current = acl::map_acl(&self.default_acl, source_owner, &owner, roles);
                let desired = acl::map_acl(acl, source_owner, &owner, roles);
                let name = self.grant_name();
                let target = acl::Target::object(self.grant_type(), &name);
                out.extend(acl::transition(&target, &owner, &current, &desired));
            }
            for col in &self.column_acls {
                let desired = acl::map_acl(&col.acl, source_owner, &owner, roles);
                let column = ident(&col.column);
                let target = acl::Target::column(&self.sql_name, &column);
                out.extend(acl::transition(&target, &owner, &[], &desired));
            }
            for seq in &self.sequence_acls {
                let current = acl::map_acl(&seq.default_acl, source_owner, &owner, roles);
                let desired = acl::map_acl(&seq.acl, source_owner, &owner, roles);
                let target = acl::Target::object("SEQUENCE", &seq.sequence);
                out.extend(acl::transition(&target, &owner, &current, &desired));
            }
        }
        if let Some(comment) = &self.comment {
            out.push(self.comment_statement(Some(comment)));
        }
        for sub in &self.sub_comments {
            out.push(format!("COMMENT ON {} IS {}", sub.target, literal(&sub.text)));
        }
        out
    }

    /// The text compared between servers: DDL, owner, privileges and comments, roles mapped,
    /// one statement per line (statements may span lines), stable. Compare a source object's
    /// `definition(map)` with the target object's `definition(identity)`.
    pub fn definition(&self, roles: &dyn Fn(&str) -> Option<String>) -> String {
        self.create_statements(roles).join("\n")
    }

    /// When `existing` (the target's object with the same key) has the same DDL: the statements
    /// that give it this object's owner, privileges and comments (empty when they already
    /// match). `None` if the DDL differs. `existing` is taken as it is on the target (its roles
    /// are not mapped).
    pub fn align_metadata(
        &self,
        existing: &SchemaObject,
        roles: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Vec<String>> {
        if self.rendered_ddl(roles) != existing.rendered_ddl(&|r| Some(r.to_string())) {
            return None;
        }
        if self.key.kind == ObjectKind::DefaultPrivileges {
            return self.default_privileges(Some(existing), roles);
        }
        let mut out = Vec::new();
        let mut current_acl = existing.acl.clone();
        let mut current_default = existing.default_acl.clone();
        let mut current_columns = existing.column_acls.clone();
        let mut current_sequences = existing.sequence_acls.clone();
        let mut owner = existing.owner.clone();
        if let (Some(Some(wanted)), Some(old)) = (self.owner.as_deref().map(roles), &owner)
            && &wanted != old
        {
            out.push(self.owner_statement(&wanted));
            // The server rewrites the owner's entries in the ACLs (aclnewowner).
            let rename = |items: &[AclItem]| acl::rename_role(items, old, &wanted);
            current_acl = current_acl.map(|a| rename(&a));
            current_default = rename(&current_default);
            for col in &mut current_columns {
                col.acl = rename(&col.acl);
            }
            for seq in &mut current_sequences {
                seq.acl = rename(&seq.acl);
                seq.default_acl = rename(&seq.default_acl);
            }
            owner = Some(wanted);
        }
        if let (Some(source_owner), Some(owner)) = (&self.owner, &owner) {
            if let (Some(acl), Some(current)) = (&self.acl, &current_acl) {
                let source_default = acl::map_acl(&self.default_acl, source_owner, owner, roles);
                let desired = acl::map_acl(acl, source_owner, owner, roles);
                // What is the default on the source is the default on the target (its owner's
                // default privileges may differ between versions).
                let desired = acl::rebase_defaults(&desired, &source_default, &current_default);
                let name = self.grant_name();
                let target = acl::Target::object(self.grant_type(), &name);
                out.extend(acl::transition(&target, owner, current, &desired));
            }
            let mut columns: Vec<&str> =
                self.column_acls.iter().map(|c| c.column.as_str()).collect();
            for col in &current_columns {
                if !columns.contains(&col.column.as_str()) {
                    columns.push(&col.column);
                }
            }
            for column in columns {
                let find = |list: &[ColumnAcl]| {
                    list.iter()
                        .find(|c| c.column == column)
                        .map(|c| c.acl.clone())
                        .unwrap_or_default()
                };
                let desired = acl::map_acl(&find(&self.column_acls), source_owner, owner, roles);
                let current = find(&current_columns);
                let quoted = ident(column);
                let target = acl::Target::column(&self.sql_name, &quoted);
                out.extend(acl::transition(&target, owner, &current, &desired));
            }
            for seq in &self.sequence_acls {
                let Some(there) = current_sequences.iter().find(|s| s.sequence == seq.sequence)
                else {
                    continue;
                };
                let source_default = acl::map_acl(&seq.default_acl, source_owner, owner, roles);
                let desired = acl::map_acl(&seq.acl, source_owner, owner, roles);
                let desired = acl::rebase_defaults(&desired, &source_default, &there.default_acl);
                let target = acl::Target::object("SEQUENCE", &seq.sequence);
                out.extend(acl::transition(&target, owner, &there.acl, &desired));
            }
        }
        if self.comment != existing.comment {
            out.push(self.comment_statement(self.comment.as_deref()));
        }
        let wanted: BTreeMap<&str, &str> =
            self.sub_comments.iter().map(|c| (c.target.as_str(), c.text.as_str())).collect();
        let have: BTreeMap<&str, &str> =
            existing.sub_comments.iter().map(|c| (c.target.as_str(), c.text.as_str())).collect();
        for (target, text) in &wanted {
            if have.get(target) != Some(text) {
                out.push(format!("COMMENT ON {target} IS {}", literal(text)));
            }
        }
        for target in have.keys() {
            if !wanted.contains_key(target) {
                out.push(format!("COMMENT ON {target} IS NULL"));
            }
        }
        Some(out)
    }
}

/// `(sql_type, sql_name)` derived from a key alone.
fn default_sql_name(key: &ObjectKey) -> (String, String) {
    let qualified = |name: &str| crate::sql::qualified_ident(&key.schema, name);
    let table_bound = |word: &str| {
        let (table, name) = key.name.split_once('.').unwrap_or(("", key.name.as_str()));
        (word.to_string(), format!("{} ON {}", ident(name), qualified(table)))
    };
    match key.kind {
        ObjectKind::Schema => ("SCHEMA".into(), ident(&key.name)),
        ObjectKind::Extension => ("EXTENSION".into(), ident(&key.name)),
        ObjectKind::Collation => ("COLLATION".into(), qualified(&key.name)),
        ObjectKind::DefaultPrivileges => ("DEFAULT PRIVILEGES".into(), String::new()),
        ObjectKind::Dumped | ObjectKind::EventTrigger => (String::new(), String::new()),
        ObjectKind::Type => ("TYPE".into(), qualified(&key.name)),
        ObjectKind::Domain => ("DOMAIN".into(), qualified(&key.name)),
        ObjectKind::Function | ObjectKind::Aggregate => {
            let word = if key.kind == ObjectKind::Function { "FUNCTION" } else { "AGGREGATE" };
            let name = match split_signature(&key.name) {
                Some((name, args)) => format!("{}{args}", qualified(name)),
                None => qualified(&key.name),
            };
            (word.into(), name)
        }
        ObjectKind::Sequence | ObjectKind::SequenceOwnership => {
            ("SEQUENCE".into(), qualified(&key.name))
        }
        ObjectKind::Table => ("TABLE".into(), qualified(&key.name)),
        ObjectKind::View => ("VIEW".into(), qualified(&key.name)),
        ObjectKind::MaterializedView => ("MATERIALIZED VIEW".into(), qualified(&key.name)),
        ObjectKind::Index => ("INDEX".into(), qualified(&key.name)),
        ObjectKind::Statistics => ("STATISTICS".into(), qualified(&key.name)),
        ObjectKind::Constraint | ObjectKind::ForeignKey => table_bound("CONSTRAINT"),
        ObjectKind::Trigger => table_bound("TRIGGER"),
        ObjectKind::Rule => table_bound("RULE"),
        ObjectKind::Policy => table_bound("POLICY"),
    }
}

/// Reading schema objects failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// A catalog query failed.
    #[error("reading schema objects ({what}) failed: {message}")]
    Query {
        /// Which query.
        what: &'static str,
        /// The server's message (or the client error).
        message: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The catalog held something this module cannot represent.
    #[error("reading schema objects ({what}): unexpected value `{value}`")]
    Unexpected {
        /// Where.
        what: &'static str,
        /// The value.
        value: String,
    },
}

impl ObjectsError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| {
            let message = match source.as_db_error() {
                Some(db) => format!("{}: {}", db.severity(), db.message()),
                None => source.to_string(),
            };
            ObjectsError::Query { what, message, source }
        }
    }
}
