//! Read-only introspection of one server: its identity, settings, roles, extensions, schemas
//! and relations, read into plain serialisable data.
//!
//! This is where `preflight` and the planner get their picture of a server; it is not the only
//! module that queries system catalogs (`objects::read` reads every schema object's definition,
//! `conn` asks whether a server is a standby, and `abort`, the executor and the stream look up what
//! they created or need as they run). It changes nothing (every query is a `SELECT` in a read-only
//! transaction) and issues one bulk query per kind of object, never one per object, so thousands of
//! tables read in about the time of one. Everything downstream (`preflight`, the planner) works on
//! [`Catalog`] values and can be tested without a server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

mod binary;
pub use binary::{KEY_TYPES, StreamColumn, binary_types, read_column_types, read_stream_columns};
mod globals;
pub use globals::{
    APPLICATION_SETTINGS, DatabaseInfo, DatabaseProps, Membership, PasswordKind,
    ReplicationCapacity, read_databases, read_replication_capacity,
};

/// Settings read from `pg_settings` (those preflight checks use).
pub const SETTINGS: &[&str] = &[
    "server_version_num",
    "wal_level",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "max_logical_replication_workers",
    "max_slot_wal_keep_size",
    "max_connections",
    "lc_collate",
    "lc_ctype",
    "log_statement",
    "log_min_duration_statement",
];

/// Everything pgtransit knows about one database on one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Who and what the server is.
    pub server: Server,
    /// The settings in [`SETTINGS`] (name → value as `pg_settings` shows it).
    pub settings: BTreeMap<String, String>,
    /// Every role of the cluster.
    pub roles: Vec<Role>,
    /// Extensions installed in this database.
    pub extensions: Vec<Extension>,
    /// Extensions the server could install: name → available versions.
    pub available_extensions: BTreeMap<String, Vec<String>>,
    /// Non-system schemas.
    pub schemas: Vec<Schema>,
    /// Tables, partitioned tables, foreign tables, views, materialized views and sequences in
    /// non-system schemas.
    pub relations: Vec<Relation>,
    /// Functions and types (their owners and grantees matter for roles).
    pub routines_and_types: Vec<OwnedObject>,
    /// Large objects: how many, and their owners.
    pub large_objects: LargeObjects,
    /// Replication slots of the whole cluster.
    pub replication_slots: Vec<ReplicationSlot>,
    /// WAL senders running now.
    pub active_wal_senders: i64,
    /// Publications in this database.
    pub publications: Vec<String>,
    /// Primary key and unique constraints that can be built as `CREATE UNIQUE INDEX` (in
    /// parallel with other index builds) then attached with `ADD CONSTRAINT ... USING INDEX`:
    /// on plain tables, not deferrable.
    pub index_backed_constraints: Vec<IndexBackedConstraint>,
    /// Every sequence in non-system schemas with its current value.
    pub sequences: Vec<SequenceValue>,
    /// Tables (qualified, quoted where needed) that hold at least one row; filled by
    /// [`read_tables_with_rows`] for the tables a caller asks about, empty otherwise.
    pub tables_with_rows: std::collections::BTreeSet<String>,
    /// Tables asked about that the connecting role may not read, so whether they hold rows is
    /// unknown.
    pub tables_unreadable: std::collections::BTreeSet<String>,
    /// For tables to split by an integer key: qualified name → (min, max) of the key, filled
    /// by [`read_key_ranges`].
    pub key_ranges: BTreeMap<String, (i64, i64)>,
    /// What `pg_dump --schema-only` said of this database, where it ran (see `crate::dump`).
    #[serde(default)]
    pub dump: DumpCheck,
    /// Memberships between roles.
    #[serde(default)]
    pub memberships: Vec<Membership>,
    /// The database's own properties.
    #[serde(default)]
    pub database: DatabaseProps,
    /// The settings in [`APPLICATION_SETTINGS`] this session sees (name → value), where the
    /// connecting role may read them.
    #[serde(default)]
    pub application_settings: BTreeMap<String, String>,
    /// Every parameter the server knows, name → `context` (`superuser`: only a superuser may
    /// set it).
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Client sessions connected now.
    #[serde(default)]
    pub client_backends: i64,
}

/// The schema read through pg_dump: filled by the caller that ran it (`plan`), empty otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DumpCheck {
    /// Objects whose DDL only pg_dump gives (`<type> <identity>`): they need a pg_dump.
    pub needed_for: Vec<String>,
    /// pg_dump could not be run (none found, too old, or it failed): why.
    pub problem: Option<String>,
    /// ... it ran, and failed (rather than none being found).
    pub failed: bool,
    /// pg_dump's major version, when it ran.
    pub pg_dump_major: Option<i32>,
    /// Entries of pg_dump's script that nothing migrates (`<TYPE> <tag>`, schema).
    pub not_migrated: Vec<(String, String)>,
    /// User mappings created without their `password` option.
    pub passwords_left_out: Vec<String>,
    /// Subscriptions, which are not created on the target.
    pub subscriptions: Vec<String>,
    /// Roles the objects taken from pg_dump name (owner, grantee, user mapping), with the
    /// object.
    pub roles: Vec<(String, String)>,
}

/// A primary key or unique constraint and the definition of the index behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBackedConstraint {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Constraint (and index) name.
    pub name: String,
    /// `PRIMARY KEY` or `UNIQUE`.
    pub kind: String,
    /// `pg_get_indexdef` of the index.
    pub index_def: String,
}

/// A sequence's current value (`pg_sequences`), and the column that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceValue {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `last_value`, or None when `nextval` was never called (or the role may not read it).
    pub last_value: Option<i64>,
    /// The table whose column owns it (serial or identity), if any.
    pub owned_by: Option<(String, String)>,
}

/// Identity of the server and of the connecting role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// `server_version_num`, e.g. 150018.
    pub version_num: i32,
    /// `version()`.
    pub version: String,
    /// `pg_control_system().system_identifier`, when the role may read it.
    pub system_identifier: Option<String>,
    /// `current_database()`.
    pub database: String,
    /// Database encoding, e.g. `UTF8`.
    pub encoding: String,
    /// `datcollate`.
    pub collate: String,
    /// `datctype`.
    pub ctype: String,
    /// Locale provider of the database: `libc`, `icu` or `builtin`.
    pub locale_provider: String,
    /// ICU or builtin locale, when the provider is not libc.
    pub locale: Option<String>,
    /// The connecting role.
    pub current_user: String,
    /// Whether it is a superuser.
    pub is_superuser: bool,
    /// Whether it bypasses row-level security (`BYPASSRLS`, or a superuser).
    #[serde(default)]
    pub bypass_rls: bool,
    /// Whether it may open replication connections (REPLICATION, superuser, or a cloud
    /// provider's replication role such as `rds_replication`).
    pub can_replicate: bool,
    /// Whether it may create schemas in this database.
    pub can_create_schema: bool,
    /// Whether it owns the database.
    pub owns_database: bool,
}

impl Server {
    /// The major version (15 for 150018).
    pub fn major(&self) -> i32 {
        self.version_num / 10000
    }
}

/// A role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// SUPERUSER.
    pub superuser: bool,
    /// LOGIN.
    pub login: bool,
    /// REPLICATION.
    pub replication: bool,
    /// The connecting role has this role's privileges (is it, or a member that inherits).
    #[serde(default)]
    pub has_privileges_of: bool,
    /// INHERIT.
    #[serde(default)]
    pub inherit: bool,
    /// CREATEROLE.
    #[serde(default)]
    pub createrole: bool,
    /// CREATEDB.
    #[serde(default)]
    pub createdb: bool,
    /// BYPASSRLS.
    #[serde(default)]
    pub bypassrls: bool,
    /// CONNECTION LIMIT (-1: none).
    #[serde(default)]
    pub connection_limit: i32,
    /// VALID UNTIL, in UTC (`infinity` as such).
    #[serde(default)]
    pub valid_until: Option<String>,
    /// The kind of password verifier it has.
    #[serde(default)]
    pub password: PasswordKind,
    /// `ALTER ROLE ... SET` for every database, name → value as stored.
    #[serde(default)]
    pub settings: Vec<(String, String)>,
    /// `ALTER ROLE ... IN DATABASE <this one> SET`.
    #[serde(default)]
    pub settings_here: Vec<(String, String)>,
    /// Created by `initdb` (the bootstrap superuser and the predefined `pg_*` roles).
    #[serde(default)]
    pub builtin: bool,
    /// The connecting role may grant membership in it.
    #[serde(default)]
    pub grantable: bool,
}

/// An installed extension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// Name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Schema it was installed in.
    pub schema: String,
}

/// A schema.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Roles granted privileges on it (`PUBLIC` for the public pseudo-role).
    pub grantees: Vec<String>,
    /// Whether the connecting role may create objects in it.
    pub can_create: bool,
    /// Whether the connecting role may use it.
    pub can_use: bool,
    /// The extension it belongs to, if any.
    pub extension: Option<String>,
}

/// Kind of a relation (`pg_class.relkind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelKind {
    /// `r`
    #[default]
    Table,
    /// `p`
    PartitionedTable,
    /// `f`
    ForeignTable,
    /// `v`
    View,
    /// `m`
    MaterializedView,
    /// `S`
    Sequence,
}

impl RelKind {
    fn from_relkind(c: &str) -> Option<RelKind> {
        Some(match c {
            "r" => RelKind::Table,
            "p" => RelKind::PartitionedTable,
            "f" => RelKind::ForeignTable,
            "v" => RelKind::View,
            "m" => RelKind::MaterializedView,
            "S" => RelKind::Sequence,
            _ => return None,
        })
    }

    /// Whether rows of this kind are copied (tables, and partitioned tables through their
    /// partitions).
    pub fn holds_data(self) -> bool {
        matches!(self, RelKind::Table | RelKind::PartitionedTable)
    }

    /// Lowercase words, as in messages.
    pub fn describe(self) -> &'static str {
        match self {
            RelKind::Table => "table",
            RelKind::PartitionedTable => "partitioned table",
            RelKind::ForeignTable => "foreign table",
            RelKind::View => "view",
            RelKind::MaterializedView => "materialized view",
            RelKind::Sequence => "sequence",
        }
    }
}

/// A table, view, materialized view or sequence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    /// `pg_class.oid` (differs between servers; only for joining within one catalog).
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: RelKind,
    /// `UNLOGGED`.
    pub unlogged: bool,
    /// Owner.
    pub owner: String,
    /// Roles granted privileges on it.
    pub grantees: Vec<String>,
    /// Has a primary key.
    pub has_primary_key: bool,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: String,
    /// For `i`: whether the replica identity index exists.
    pub has_replica_identity_index: bool,
    /// The parent, if this is a partition: (schema, name).
    pub partition_of: Option<(String, String)>,
    /// Estimated rows (`reltuples`, 0 when never analysed).
    pub estimated_rows: i64,
    /// Size on disk in bytes (`pg_table_size`).
    pub bytes: i64,
    /// Whether the connecting role may read it.
    pub readable: bool,
    /// Generated (stored) columns.
    pub generated_columns: Vec<String>,
    /// Identity columns.
    pub identity_columns: Vec<String>,
    /// The extension it belongs to, if any (created by `CREATE EXTENSION`, not copied).
    pub extension: Option<String>,
    /// Materialized views: whether it holds data (`relispopulated`).
    pub populated: bool,
    /// Whether every column's type (and array element type) is built in and has binary I/O:
    /// binary COPY embeds type OIDs in arrays and composites, user types' OIDs differ between
    /// servers, and some built-in types (`aclitem`) have no binary form at all.
    pub builtin_types_only: bool,
    /// Pages on disk (`relpages`), for splitting by `ctid` ranges.
    pub pages: i64,
    /// A column that identifies rows and splits well: the single integer column of the primary
    /// key, or of a unique index whose column is NOT NULL.
    pub integer_key: Option<String>,
    /// Its replica identity (the primary key, or the replica identity index) has a generated
    /// column, which logical decoding never sends: updates and deletes could not find rows.
    #[serde(default)]
    pub key_has_generated_column: bool,
    /// Row-level security is enabled on it (`relrowsecurity`).
    #[serde(default)]
    pub row_security: bool,
    /// ... and forced on its owner too (`relforcerowsecurity`).
    #[serde(default)]
    pub row_security_forced: bool,
    /// Row-level security applies to the connecting role here: enabled, the role is neither a
    /// superuser nor `BYPASSRLS`, and it is not the owner (or the table forces it on owners).
    /// Its queries then see, and change, only the rows the policies let through.
    #[serde(default)]
    pub row_security_applies: bool,
}

impl Relation {
    /// `schema.name`, quoted where needed, for messages.
    pub fn qualified(&self) -> String {
        crate::sql::qualified(&self.schema, &self.name)
    }

    /// Whether UPDATE and DELETE on it can be published: it has a usable replica identity.
    pub fn has_usable_replica_identity(&self) -> bool {
        match self.replica_identity.as_str() {
            "d" => self.has_primary_key,
            "i" => self.has_replica_identity_index,
            "f" => true,
            _ => false,
        }
    }
}

/// A function, procedure, aggregate or type, with who owns it and who was granted on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnedObject {
    /// `function` or `type`.
    pub kind: String,
    /// Schema.
    pub schema: String,
    /// Name (with argument types for functions).
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Grantees.
    pub grantees: Vec<String>,
}

/// Large objects (`pg_largeobject_metadata`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LargeObjects {
    /// How many.
    pub count: i64,
    /// Their distinct owners.
    pub owners: Vec<String>,
    /// The distinct roles granted privileges on them (not PUBLIC).
    #[serde(default)]
    pub grantees: Vec<String>,
}

/// A replication slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationSlot {
    /// Name.
    pub name: String,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Output plugin (logical slots).
    pub plugin: Option<String>,
    /// Database (logical slots).
    pub database: Option<String>,
    /// In use now.
    pub active: bool,
}

/// Reading a catalog failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the catalog ({what}) failed: {message}")]
pub struct CatalogError {
    what: &'static str,
    /// The server's message (tokio-postgres' own Display says only "db error").
    message: String,
    #[source]
    source: tokio_postgres::Error,
}

impl CatalogError {
    /// The driver's error.
    pub fn postgres(&self) -> &tokio_postgres::Error {
        &self.source
    }
}

fn ctx(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    move |source| CatalogError {
        what,
        message: match source.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => source.to_string(),
        },
        source,
    }
}

/// Reads the catalog of the database `client` is connected to, in one read-only
/// repeatable-read transaction (so every query sees the same moment).
pub async fn read(client: &Client) -> Result<Catalog, CatalogError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(ctx("begin"))?;
    let result = read_in_transaction(client).await;
    // Read-only: there is nothing to keep, so the transaction always ends with ROLLBACK.
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

async fn read_in_transaction(client: &Client) -> Result<Catalog, CatalogError> {
    let mut cat = Catalog::default();

    let rows = client
        .query("SELECT name, setting FROM pg_settings WHERE name = ANY($1)", &[&SETTINGS])
        .await
        .map_err(ctx("settings"))?;
    for r in rows {
        cat.settings.insert(r.get(0), r.get(1));
    }
    let version_num: i32 =
        cat.settings.get("server_version_num").and_then(|v| v.parse().ok()).unwrap_or(0);
    cat.server = read_server(client, version_num).await?;

    cat.roles = read_roles(client).await?;
    globals::read(&mut cat, client).await?;
    cat.extensions = read_extensions(client).await?;
    cat.available_extensions = read_available_extensions(client).await?;
    cat.schemas = read_schemas(client).await?;
    cat.relations = read_relations(client).await?;
    cat.routines_and_types = read_routines_and_types(client).await?;
    cat.large_objects = read_large_objects(client).await?;
    cat.replication_slots = read_replication_slots(client).await?;
    cat.sequences = read_sequences(client).await?;
    cat.index_backed_constraints = read_index_backed_constraints(client).await?;

    cat.publications = client
        .query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[])
        .await
        .map_err(ctx("publications"))?
        .iter()
        .map(|r| r.get(0))
        .collect();

    cat.active_wal_senders = client
        .query_one("SELECT count(*) FROM pg_stat_replication", &[])
        .await
        .map_err(ctx("wal senders"))?
        .get(0);

    Ok(cat)
}

/// Roles, with what the connecting role has the privileges of.
async fn read_roles(client: &Client) -> Result<Vec<Role>, CatalogError> {
    Ok(client
        .query(
            "SELECT rolname::text, rolsuper, rolcanlogin, rolreplication, \
                    pg_has_role(current_user, oid, 'USAGE') FROM pg_roles \
             ORDER BY rolname",
            &[],
        )
        .await
        .map_err(ctx("roles"))?
        .iter()
        .map(|r| Role {
            name: r.get(0),
            superuser: r.get(1),
            login: r.get(2),
            replication: r.get(3),
            has_privileges_of: r.get(4),
            ..Default::default()
        })
        .collect())
}

/// Installed extensions.
async fn read_extensions(client: &Client) -> Result<Vec<Extension>, CatalogError> {
    Ok(client
        .query(
            "SELECT e.extname::text, e.extversion, n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY e.extname",
            &[],
        )
        .await
        .map_err(ctx("extensions"))?
        .iter()
        .map(|r| Extension { name: r.get(0), version: r.get(1), schema: r.get(2) })
        .collect())
}

/// Every version of every extension the server could install, by extension.
async fn read_available_extensions(
    client: &Client,
) -> Result<BTreeMap<String, Vec<String>>, CatalogError> {
    let mut available: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in client
        .query(
            "SELECT name::text, version FROM pg_available_extension_versions ORDER BY name, version",
            &[],
        )
        .await
        .map_err(ctx("available extensions"))?
    {
        available.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(available)
}

/// Schemas.
async fn read_schemas(client: &Client) -> Result<Vec<Schema>, CatalogError> {
    Ok(client
        .query(&schemas_sql(), &[])
        .await
        .map_err(ctx("schemas"))?
        .iter()
        .map(|r| Schema {
            name: r.get(0),
            owner: r.get(1),
            grantees: r.get(2),
            can_create: r.get(3),
            can_use: r.get(4),
            extension: r.get(5),
        })
        .collect())
}

/// Relations (the kinds [`RelKind`] knows).
async fn read_relations(client: &Client) -> Result<Vec<Relation>, CatalogError> {
    Ok(client
        .query(&relations_sql(), &[])
        .await
        .map_err(ctx("relations"))?
        .iter()
        .filter_map(|r| {
            let kind = RelKind::from_relkind(r.get::<_, &str>(3))?;
            let parent_schema: Option<String> = r.get(10);
            let parent_name: Option<String> = r.get(11);
            Some(Relation {
                oid: r.get(0),
                schema: r.get(1),
                name: r.get(2),
                kind,
                unlogged: r.get::<_, &str>(4) == "u",
                owner: r.get(5),
                grantees: r.get(6),
                has_primary_key: r.get(7),
                replica_identity: r.get(8),
                has_replica_identity_index: r.get(9),
                partition_of: parent_schema.zip(parent_name),
                estimated_rows: r.get::<_, i64>(12).max(0),
                bytes: r.get(13),
                readable: r.get(14),
                generated_columns: r.get(15),
                identity_columns: r.get(16),
                extension: r.get(17),
                populated: r.get(18),
                builtin_types_only: r.get(19),
                pages: r.get::<_, i32>(20) as i64,
                integer_key: r.get(21),
                row_security: r.get(22),
                row_security_forced: r.get(23),
                row_security_applies: r.get(24),
                key_has_generated_column: r.get(25),
            })
        })
        .collect())
}

/// Functions and types, with their owners and grantees.
async fn read_routines_and_types(client: &Client) -> Result<Vec<OwnedObject>, CatalogError> {
    Ok(client
        .query(&owned_objects_sql(), &[])
        .await
        .map_err(ctx("functions and types"))?
        .iter()
        .map(|r| OwnedObject {
            kind: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            owner: r.get(3),
            grantees: r.get(4),
        })
        .collect())
}

/// Large objects: how many, their owners and grantees.
async fn read_large_objects(client: &Client) -> Result<LargeObjects, CatalogError> {
    let lo = client
        .query_one(
            "SELECT count(*), COALESCE(array_agg(DISTINCT pg_get_userbyid(lomowner)::text), '{}') \
             FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(ctx("large objects"))?;
    let grantees = client
        .query(
            "SELECT DISTINCT pg_get_userbyid(x.grantee)::text FROM pg_largeobject_metadata l, \
             aclexplode(l.lomacl) x WHERE x.grantee <> 0 ORDER BY 1",
            &[],
        )
        .await
        .map_err(ctx("large objects' grantees"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(LargeObjects { count: lo.get(0), owners: lo.get(1), grantees })
}

/// Replication slots.
async fn read_replication_slots(client: &Client) -> Result<Vec<ReplicationSlot>, CatalogError> {
    Ok(client
        .query(
            "SELECT slot_name::text, slot_type, plugin::text, database::text, active \
             FROM pg_replication_slots ORDER BY slot_name",
            &[],
        )
        .await
        .map_err(ctx("replication slots"))?
        .iter()
        .map(|r| ReplicationSlot {
            name: r.get(0),
            slot_type: r.get(1),
            plugin: r.get(2),
            database: r.get(3),
            active: r.get(4),
        })
        .collect())
}

/// Sequences and their last values.
async fn read_sequences(client: &Client) -> Result<Vec<SequenceValue>, CatalogError> {
    Ok(client
        .query(SEQUENCES_SQL, &[])
        .await
        .map_err(ctx("sequences"))?
        .iter()
        .map(|r| {
            let ts: Option<String> = r.get(3);
            let tn: Option<String> = r.get(4);
            SequenceValue {
                schema: r.get(0),
                name: r.get(1),
                last_value: r.get(2),
                owned_by: ts.zip(tn),
            }
        })
        .collect())
}

/// Primary keys and unique constraints with their indexes' definitions.
async fn read_index_backed_constraints(
    client: &Client,
) -> Result<Vec<IndexBackedConstraint>, CatalogError> {
    Ok(client
        .query(
            "SELECT n.nspname::text, c.relname::text, k.conname::text, \
                    CASE k.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, \
                    pg_get_indexdef(k.conindid) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_index i ON i.indexrelid = k.conindid \
             WHERE k.contype IN ('p', 'u') AND c.relkind = 'r' AND NOT k.condeferrable \
               AND i.indexprs IS NULL AND i.indpred IS NULL \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .map_err(ctx("constraints' indexes"))?
        .iter()
        .map(|r| IndexBackedConstraint {
            schema: r.get(0),
            table: r.get(1),
            name: r.get(2),
            kind: r.get(3),
            index_def: r.get(4),
        })
        .collect())
}

async fn read_server(client: &Client, version_num: i32) -> Result<Server, CatalogError> {
    // The locale columns of pg_database changed across versions: 15 added datlocprovider and
    // daticulocale, 17 renamed daticulocale to datlocale and added the builtin provider.
    let locale_cols = if version_num >= 170000 {
        "d.datlocprovider::text, d.datlocale"
    } else if version_num >= 150000 {
        "d.datlocprovider::text, d.daticulocale"
    } else {
        "'c'::text, NULL::text"
    };
    let sql = format!(
        "SELECT version(), current_database()::text, pg_encoding_to_char(d.encoding)::text, \
                d.datcollate::text, d.datctype::text, {locale_cols}, current_user::text, \
                r.rolsuper, \
                r.rolsuper OR r.rolreplication OR EXISTS ( \
                    SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' \
                    AND pg_has_role(current_user, g.oid, 'MEMBER')), \
                has_database_privilege(current_database(), 'CREATE'), \
                pg_has_role(current_user, d.datdba, 'USAGE'), \
                r.rolsuper OR r.rolbypassrls \
         FROM pg_database d, pg_roles r \
         WHERE d.datname = current_database() AND r.rolname = current_user"
    );
    let r = client.query_one(&sql, &[]).await.map_err(ctx("server"))?;
    let provider: String = r.get(5);
    // pg_control_system() is not granted to every role: without it, the identifier stays
    // unknown (and the stale-plan check relies on the catalog fingerprint alone).
    client.batch_execute("SAVEPOINT sysid").await.map_err(ctx("savepoint"))?;
    let system_identifier = match client
        .query_one("SELECT system_identifier::text FROM pg_control_system()", &[])
        .await
    {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(_) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT sysid").await.map_err(ctx("savepoint"))?;
            None
        }
    };
    Ok(Server {
        version_num,
        version: r.get(0),
        system_identifier,
        database: r.get(1),
        encoding: r.get(2),
        collate: r.get(3),
        ctype: r.get(4),
        locale_provider: match provider.as_str() {
            "i" => "icu",
            "b" => "builtin",
            _ => "libc",
        }
        .to_string(),
        locale: r.get(6),
        current_user: r.get(7),
        is_superuser: r.get(8),
        can_replicate: r.get(9),
        can_create_schema: r.get(10),
        owns_database: r.get(11),
        bypass_rls: r.get(12),
    })
}

/// Sequences with their values and owning tables. `pg_sequences.last_value` is NULL for a
/// sequence never used, and for one the role may not read.
const SEQUENCES_SQL: &str = "
SELECT s.schemaname::text, s.sequencename::text, s.last_value, tn.nspname::text, t.relname::text
FROM pg_sequences s
JOIN pg_namespace n ON n.nspname = s.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.sequencename
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid
LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2";

/// Fills `cat.tables_with_rows` for `tables` (schema, name): one query for all of them, each
/// table probed with `EXISTS (SELECT 1 FROM ONLY t)` (its own rows, not its inheritance
/// children's; reads one row at most, changes nothing).
pub async fn read_tables_with_rows(
    client: &Client,
    cat: &mut Catalog,
    tables: &[(String, String)],
) -> Result<(), CatalogError> {
    cat.tables_with_rows.clear();
    cat.tables_unreadable.clear();
    // Only tables the role may read can be probed: one unreadable table would fail the query
    // (and so would one that row-level security filters, under `row_security = off`).
    let readable = |s: &str, t: &str| {
        cat.relations
            .iter()
            .any(|r| r.schema == s && r.name == t && r.readable && !r.row_security_applies)
    };
    let (tables, unreadable): (Vec<_>, Vec<_>) =
        tables.iter().cloned().partition(|(s, t)| readable(s, t));
    for (s, t) in unreadable {
        cat.tables_unreadable.insert(crate::sql::qualified(&s, &t));
    }
    for chunk in tables.chunks(500) {
        let probes: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, (s, t))| {
                format!(
                    "SELECT {i} WHERE EXISTS (SELECT 1 FROM ONLY {})",
                    crate::sql::qualified_ident(s, t)
                )
            })
            .collect();
        let rows = client
            .query(&probes.join(" UNION ALL "), &[])
            .await
            .map_err(ctx("which tables hold rows"))?;
        for r in rows {
            let i: i32 = r.get(0);
            let (s, t) = &chunk[i as usize];
            cat.tables_with_rows.insert(crate::sql::qualified(s, t));
        }
    }
    Ok(())
}

/// Fills `cat.key_ranges` for `tables` (schema, table, integer key column): `min` and `max` of
/// the key, one index lookup each, all in one query.
pub async fn read_key_ranges(
    client: &Client,
    cat: &mut Catalog,
    tables: &[(String, String, String)],
) -> Result<(), CatalogError> {
    if tables.is_empty() {
        return Ok(());
    }
    let probes: Vec<String> = tables
        .iter()
        .enumerate()
        .map(|(i, (s, t, c))| {
            format!(
                "SELECT {i}, min({col})::int8, max({col})::int8 FROM ONLY {}",
                crate::sql::qualified_ident(s, t),
                col = crate::sql::ident(c)
            )
        })
        .collect();
    for r in client.query(&probes.join(" UNION ALL "), &[]).await.map_err(ctx("key ranges"))? {
        let i: i32 = r.get(0);
        let (s, t, _) = &tables[i as usize];
        if let (Some(lo), Some(hi)) = (r.get::<_, Option<i64>>(1), r.get::<_, Option<i64>>(2)) {
            cat.key_ranges.insert(crate::sql::qualified(s, t), (lo, hi));
        }
    }
    Ok(())
}

/// `text[]` of the roles granted privileges in the ACL column `acl` (`PUBLIC` for 0).
fn grantees(acl: &str) -> String {
    format!(
        "COALESCE((SELECT array_agg(DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC' \
                   ELSE pg_get_userbyid(x.grantee)::text END) FROM aclexplode({acl}) x), '{{}}')"
    )
}

/// The name of the extension the object (`catalog`, `oid`) belongs to, or NULL.
fn extension_of(catalog: &str, oid: &str) -> String {
    format!(
        "(SELECT e.extname::text FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid \
          WHERE d.classid = '{catalog}'::regclass AND d.objid = {oid} \
            AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' LIMIT 1)"
    )
}

/// Non-system schemas with owner, grantees, the connecting role's privileges, and extension.
fn schemas_sql() -> String {
    format!(
        "
SELECT n.nspname::text,
       pg_get_userbyid(n.nspowner)::text,
       {grantees_nspacl},
       has_schema_privilege(n.oid, 'CREATE'),
       has_schema_privilege(n.oid, 'USAGE'),
       {extension_ns}
FROM pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY n.nspname",
        grantees_nspacl = grantees("n.nspacl"),
        extension_ns = extension_of("pg_namespace", "n.oid"),
    )
}

/// Relations in non-system schemas, one row each, with everything preflight needs.
fn relations_sql() -> String {
    format!(
        "
SELECT c.oid,
       n.nspname::text,
       c.relname::text,
       c.relkind::text,
       c.relpersistence::text,
       pg_get_userbyid(c.relowner)::text,
       {grantees_relacl},
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p'),
       c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
       pn.nspname::text,
       pc.relname::text,
       c.reltuples::int8,
       CASE WHEN c.relkind IN ('r', 'm', 'S') THEN pg_table_size(c.oid) ELSE 0 END,
       CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT')
            ELSE has_table_privilege(c.oid, 'SELECT') END,
       COALESCE((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated <> ''), '{{}}'),
       COALESCE((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attidentity <> ''), '{{}}'),
       {extension_rel},
       c.relispopulated,
       NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                     AND (t.oid >= 16384 OR t.typelem >= 16384
                          OR t.oid = ANY ('{{{aliases}}}'::oid[])
                          OR t.typelem = ANY ('{{{aliases}}}'::oid[])
                          OR t.typsend::oid = 0 OR t.typreceive::oid = 0
                          OR EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem
                                     AND (e.typsend::oid = 0 OR e.typreceive::oid = 0)))),
       c.relpages,
       (SELECT a.attname::text FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = c.oid AND i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL
           AND i.indexprs IS NULL AND a.attnotnull
           AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
         ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1),
       c.relrowsecurity,
       c.relforcerowsecurity,
       c.relrowsecurity
         AND NOT EXISTS (SELECT 1 FROM pg_roles u WHERE u.rolname = current_user
                         AND (u.rolsuper OR u.rolbypassrls))
         AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE')),
       EXISTS (SELECT 1 FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                WHERE i.indrelid = c.oid AND a.attgenerated <> ''
                  AND ((c.relreplident = 'd' AND i.indisprimary)
                       OR (c.relreplident = 'i' AND i.indisreplident)))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits inh ON inh.inhrelid = c.oid AND c.relispartition
LEFT JOIN pg_class pc ON pc.oid = inh.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY n.nspname, c.relname",
        grantees_relacl = grantees("c.relacl"),
        extension_rel = extension_of("pg_class", "c.oid"),
        aliases = binary::OID_ALIASES.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    )
}

/// Functions and user-defined types (not table row types, not extension members).
fn owned_objects_sql() -> String {
    format!(
        "
SELECT 'function', n.nspname::text, p.oid::regprocedure::text,
       pg_get_userbyid(p.proowner)::text,
       {grantees_proacl}
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                  AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'type', n.nspname::text, format_type(t.oid, NULL),
       pg_get_userbyid(t.typowner)::text,
       {grantees_typacl}
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND t.typtype IN ('e', 'd', 'r', 'm', 'c')
  AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                  AND d.objid = t.oid AND d.deptype = 'e')
ORDER BY 1, 2, 3",
        grantees_proacl = grantees("p.proacl"),
        grantees_typacl = grantees("t.typacl"),
    )
}

/// A column of a target table, as change streaming needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// `GENERATED ALWAYS AS IDENTITY`: an `UPDATE` may not set it.
    pub identity_always: bool,
    /// Its type on the target (`atttypid`): statements name it for their parameters, so a
    /// key of any type (a composite, an enum) is compared as that type.
    pub type_oid: u32,
    /// Its type's name, for a cast to it whatever the `search_path`: schema-qualified and
    /// quoted, without a type modifier (`pg_catalog."bpchar"`, not `character(8)`: an explicit
    /// cast to a length cuts a longer value short, where assigning it fails; and `character`
    /// or `bit` alone would mean a length of 1).
    pub type_name: String,
    /// The name of the array type of its type, the same way (empty: it has none, as an array
    /// type has not): set-based statements pass values in binary as one of these.
    pub array_type_name: String,
    /// The built-in type whose binary form its values have: its type under every domain, `text`
    /// (25) for an enum (see `catalog::binary_types`).
    pub binary_base: u32,
}

/// The columns of `schema.table` that hold data of their own (not dropped, not generated), in
/// order; `None` if the table does not exist.
pub async fn read_table_columns(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<Vec<ColumnInfo>>, CatalogError> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attidentity = 'a', a.atttypid, \
                    (SELECT quote_ident(tn.nspname) || '.' || quote_ident(t.typname) \
                       FROM pg_type t JOIN pg_namespace tn ON tn.oid = t.typnamespace \
                      WHERE t.oid = a.atttypid), \
                    (SELECT quote_ident(tn.nspname) || '.' || quote_ident(at.typname) \
                       FROM pg_type t JOIN pg_type at ON at.oid = t.typarray \
                       JOIN pg_namespace tn ON tn.oid = at.typnamespace \
                      WHERE t.oid = a.atttypid), \
                    (WITH RECURSIVE d(oid, typtype, base) AS ( \
                         SELECT t.oid, t.typtype, t.typbasetype FROM pg_type t \
                         WHERE t.oid = a.atttypid \
                       UNION ALL \
                         SELECT t.oid, t.typtype, t.typbasetype FROM d \
                         JOIN pg_type t ON t.oid = d.base WHERE d.typtype = 'd') \
                     SELECT CASE typtype WHEN 'e' THEN 25 ELSE oid END FROM d \
                     WHERE typtype <> 'd') FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                  AND NOT a.attisdropped AND a.attgenerated = '' \
             WHERE n.nspname = $1 AND c.relname = $2 ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(ctx("table columns"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .filter_map(|r| {
                let name: Option<String> = r.get(0);
                let always: Option<bool> = r.get(1);
                let type_oid: Option<u32> = r.get(2);
                let type_name: Option<String> = r.get(3);
                let array_type_name: Option<String> = r.get(4);
                let binary_base: Option<u32> = r.get(5);
                Some(ColumnInfo {
                    name: name?,
                    identity_always: always.unwrap_or(false),
                    type_oid: type_oid.unwrap_or(0),
                    type_name: type_name.unwrap_or_default(),
                    array_type_name: array_type_name.unwrap_or_default(),
                    binary_base: binary_base.unwrap_or(0),
                })
            })
            .collect(),
    ))
}

/// What keeps the applier from reordering a target table's changes (coalescing them per row,
/// or grouping its inserts): each a description for the log, `None` when nothing does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOrder {
    /// Every change must go on its own, after every other table's: triggers or rules that fire
    /// for replicated rows (`ENABLE ALWAYS`/`REPLICA`), which may read anything.
    pub fires: Option<String>,
    /// Every change must go on its own: columns whose type has a cast from `text` of its own
    /// (set-based statements pass values as `text[]`).
    pub casts: Option<String>,
    /// Rows with different keys can meet: a unique index or exclusion constraint whose key
    /// columns (not its `INCLUDE`d ones) do not hold every column of `key`.
    pub across_keys: Option<String>,
}

/// Reads [`ApplyOrder`] for the target table `schema.table`, whose rows are told apart by the
/// columns `key` (the source's replica identity; empty: none).
pub async fn read_apply_order(
    client: &Client,
    schema: &str,
    table: &str,
    key: &[String],
) -> Result<ApplyOrder, CatalogError> {
    let row = client
        .query_one(
            "WITH t AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2), \
                  k AS (SELECT coalesce(array_agg(a.attnum), '{}') AS nums FROM pg_attribute a, t \
                         WHERE a.attrelid = t.oid AND a.attname = ANY($3::text[]) \
                           AND cardinality($3::text[]) > 0) \
             SELECT (SELECT string_agg(format('trigger %I', g.tgname), ', ' ORDER BY g.tgname) \
                       FROM pg_trigger g, t WHERE g.tgrelid = t.oid AND g.tgenabled IN ('A', 'R')), \
                    (SELECT string_agg(format('rule %I', r.rulename), ', ' ORDER BY r.rulename) \
                       FROM pg_rewrite r, t WHERE r.ev_class = t.oid AND r.rulename <> '_RETURN' \
                        AND r.ev_enabled IN ('A', 'R')), \
                    (SELECT string_agg(format('column %I (%s)', a.attname, format_type(a.atttypid, NULL)), \
                                       ', ' ORDER BY a.attnum) \
                       FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid, t \
                      WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped \
                        AND EXISTS (SELECT FROM pg_cast ca WHERE ca.castsource = 'text'::regtype \
                                      AND ca.castmethod = 'f' AND ca.casttarget IN \
                                          (ty.oid, ty.typbasetype))), \
                    (SELECT string_agg(format('index %s', i.indexrelid::regclass), ', ' \
                                       ORDER BY i.indexrelid) \
                       FROM pg_index i, t, k WHERE i.indrelid = t.oid \
                        AND (i.indisunique OR i.indisexclusion) \
                        AND (i.indisexclusion OR cardinality(k.nums) = 0 \
                             OR NOT (i.indkey::int2[])[0:i.indnkeyatts - 1] @> k.nums))",
            &[&schema, &table, &key],
        )
        .await
        .map_err(ctx("apply order"))?;
    let fires: Vec<String> = (0..2).filter_map(|i| row.get::<_, Option<String>>(i)).collect();
    Ok(ApplyOrder {
        fires: (!fires.is_empty()).then(|| fires.join(", ")),
        casts: row.get(2),
        across_keys: row.get(3),
    })
}

/// A replication slot's health, for `status` and `abort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHealth {
    /// Held by a session now.
    pub active: bool,
    /// The session's pid.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// WAL the slot keeps on the source's disk, bytes.
    pub retained_bytes: Option<i64>,
    /// Bytes of WAL still writable before the slot is invalidated (`max_slot_wal_keep_size`),
    /// when that setting limits it.
    pub safe_wal_size: Option<i64>,
    /// Confirmed position.
    pub confirmed_flush_lsn: Option<String>,
}

/// The slot `name` of the connected database, if it exists.
pub async fn read_slot(client: &Client, name: &str) -> Result<Option<SlotHealth>, CatalogError> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(ctx("server version"))?
        .get(0);
    // wal_status and safe_wal_size exist from PostgreSQL 13.
    let health =
        if version >= 130000 { "wal_status, safe_wal_size" } else { "NULL::text, NULL::int8" };
    let row = client
        .query_opt(
            &format!(
                "SELECT active, active_pid, {health}, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
                        confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1"
            ),
            &[&name],
        )
        .await
        .map_err(ctx("replication slot"))?;
    Ok(row.map(|r| SlotHealth {
        active: r.get(0),
        active_pid: r.get(1),
        wal_status: r.get(2),
        safe_wal_size: r.get(3),
        retained_bytes: r.get(4),
        confirmed_flush_lsn: r.get(5),
    }))
}

/// Whether the target has the replication origin `name`, and the source position it records.
pub async fn read_origin(
    client: &Client,
    name: &str,
) -> Result<Option<Option<String>>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT pg_replication_origin_progress(roname, true)::text FROM pg_replication_origin \
             WHERE roname = $1",
            &[&name],
        )
        .await
        .map_err(ctx("replication origin"))?;
    Ok(row.map(|r| r.get(0)))
}
