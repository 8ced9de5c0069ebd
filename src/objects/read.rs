//! Reading every schema object of the database a client is connected to: one bulk query per kind
//! of object ([`READ_QUERIES`] in all, whatever the number of objects), all `SELECT`s, then
//! assembly into [`SchemaObject`]s with their dependencies mapped from `pg_depend`.
//!
//! The queries run with `search_path` set to empty (as pg_dump does), so that every name the
//! server's `pg_get_*def` functions and `format_type` print is schema-qualified; the previous
//! value is put back afterwards.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::acl::AclItem;
use super::ddl::{self, Column, SequenceParams};
use super::{
    ColumnAcl, IdentitySequence, ObjectKey, ObjectKind, ObjectsError, PolicyDef, SchemaObject,
    SequenceAcl, SubComment, TableInfo,
};
use crate::sql::{ident, qualified_ident};

/// How many queries [`read`] issues, whatever the size of the database.
pub const READ_QUERIES: usize = 19;

/// What a read cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Queries issued.
    pub queries: usize,
    /// Rows received.
    pub rows: usize,
}

/// Objects in these schemas are never read.
const SCOPE: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Objects with OIDs below this were created by initdb (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// Reads every object in non-system schemas (not members of extensions; extensions themselves
/// are objects), with dependencies from `pg_depend` mapped onto object keys.
///
/// Run it inside a transaction (`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`, see
/// [`read_snapshot`]) so that every query sees the same moment. `version_num` is the server's
/// `server_version_num` (PostgreSQL 13 to 17). The result is sorted by key.
pub async fn read(client: &Client, version_num: i32) -> Result<Vec<SchemaObject>, ObjectsError> {
    Ok(read_with_stats(client, version_num).await?.0)
}

/// [`read`] in its own read-only repeatable-read transaction (rolled back afterwards).
pub async fn read_snapshot(
    client: &Client,
    version_num: i32,
) -> Result<Vec<SchemaObject>, ObjectsError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(ObjectsError::query("begin"))?;
    let result = read(client, version_num).await;
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

/// Every object, and the catalog ids they stand for.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// The objects, sorted by key.
    pub objects: Vec<SchemaObject>,
    /// (catalog, OID) of everything the objects generated here create (themselves and their
    /// parts: a table's constraints and defaults, a type's array...), as pg_dump names them:
    /// pg_dump's entries for these need nothing from pg_dump.
    pub covered: BTreeSet<(u32, u32)>,
}

/// [`read`], with the catalog ids of what it read ([`Schema::covered`]).
pub async fn read_schema(client: &Client, version_num: i32) -> Result<Schema, ObjectsError> {
    Ok(read_schema_with_stats(client, version_num).await?.0)
}

/// [`read`], and what it cost.
pub async fn read_with_stats(
    client: &Client,
    version_num: i32,
) -> Result<(Vec<SchemaObject>, ReadStats), ObjectsError> {
    let (schema, stats) = read_schema_with_stats(client, version_num).await?;
    Ok((schema.objects, stats))
}

async fn read_schema_with_stats(
    client: &Client,
    version_num: i32,
) -> Result<(Schema, ReadStats), ObjectsError> {
    let mut reader = Reader { client, stats: ReadStats::default() };
    let rows = reader
        .query(
            "search_path",
            "SELECT pg_catalog.current_setting('search_path'), \
                    pg_catalog.set_config('search_path', '', false)",
            &[],
        )
        .await?;
    let old_path: String = rows[0].get(0);
    let result = read_all(&mut reader, version_num).await;
    let restored = reader
        .query(
            "search_path",
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &[&old_path],
        )
        .await;
    let objects = result?;
    restored?;
    Ok((objects, reader.stats))
}

struct Reader<'a> {
    client: &'a Client,
    stats: ReadStats,
}

impl Reader<'_> {
    async fn query(
        &mut self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ObjectsError> {
        self.stats.queries += 1;
        let rows = self.client.query(sql, params).await.map_err(ObjectsError::query(what))?;
        self.stats.rows += rows.len();
        Ok(rows)
    }
}

/// The system catalogs objects live in (`pg_depend.classid`, `pg_description.classoid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cat {
    Class,
    Type,
    Proc,
    Constraint,
    Trigger,
    Rewrite,
    AttrDef,
    Namespace,
    Extension,
    Policy,
    StatisticExt,
    Collation,
    Operator,
    OpClass,
    OpFamily,
    Amop,
    Amproc,
    Cast,
    TsParser,
    TsTemplate,
    TsDict,
    TsConfig,
    AccessMethod,
    ForeignDataWrapper,
    ForeignServer,
    UserMapping,
    Transform,
    EventTrigger,
    Conversion,
    Language,
    DefaultAcl,
    Publication,
    PublicationRel,
    PublicationNamespace,
    Other,
}

impl Cat {
    fn from_name(name: &str) -> Cat {
        match name {
            "pg_class" => Cat::Class,
            "pg_type" => Cat::Type,
            "pg_proc" => Cat::Proc,
            "pg_constraint" => Cat::Constraint,
            "pg_trigger" => Cat::Trigger,
            "pg_rewrite" => Cat::Rewrite,
            "pg_attrdef" => Cat::AttrDef,
            "pg_namespace" => Cat::Namespace,
            "pg_extension" => Cat::Extension,
            "pg_policy" => Cat::Policy,
            "pg_statistic_ext" => Cat::StatisticExt,
            "pg_collation" => Cat::Collation,
            "pg_operator" => Cat::Operator,
            "pg_opclass" => Cat::OpClass,
            "pg_opfamily" => Cat::OpFamily,
            "pg_amop" => Cat::Amop,
            "pg_amproc" => Cat::Amproc,
            "pg_cast" => Cat::Cast,
            "pg_ts_parser" => Cat::TsParser,
            "pg_ts_template" => Cat::TsTemplate,
            "pg_ts_dict" => Cat::TsDict,
            "pg_ts_config" => Cat::TsConfig,
            "pg_am" => Cat::AccessMethod,
            "pg_foreign_data_wrapper" => Cat::ForeignDataWrapper,
            "pg_foreign_server" => Cat::ForeignServer,
            "pg_user_mapping" => Cat::UserMapping,
            "pg_transform" => Cat::Transform,
            "pg_event_trigger" => Cat::EventTrigger,
            "pg_conversion" => Cat::Conversion,
            "pg_language" => Cat::Language,
            "pg_default_acl" => Cat::DefaultAcl,
            "pg_publication" => Cat::Publication,
            "pg_publication_rel" => Cat::PublicationRel,
            "pg_publication_namespace" => Cat::PublicationNamespace,
            _ => Cat::Other,
        }
    }

    /// The catalog's own OID (`pg_class.oid` of `pg_type`, ...), as pg_dump names it: fixed
    /// at initdb, the same in every version.
    fn class_oid(self) -> u32 {
        match self {
            Cat::Class => 1259,
            Cat::Type => 1247,
            Cat::Proc => 1255,
            Cat::Constraint => 2606,
            Cat::Trigger => 2620,
            Cat::Rewrite => 2618,
            Cat::AttrDef => 2604,
            Cat::Namespace => 2615,
            Cat::Extension => 3079,
            Cat::Policy => 3256,
            Cat::StatisticExt => 3381,
            Cat::Collation => 3456,
            Cat::Operator => 2617,
            Cat::OpClass => 2616,
            Cat::OpFamily => 2753,
            Cat::Amop => 2602,
            Cat::Amproc => 2603,
            Cat::Cast => 2605,
            Cat::TsParser => 3601,
            Cat::TsTemplate => 3764,
            Cat::TsDict => 3600,
            Cat::TsConfig => 3602,
            Cat::AccessMethod => 2601,
            Cat::ForeignDataWrapper => 2328,
            Cat::ForeignServer => 1417,
            Cat::UserMapping => 1418,
            Cat::Transform => 3576,
            Cat::EventTrigger => 3466,
            Cat::Conversion => 2607,
            Cat::Language => 2612,
            Cat::DefaultAcl => 826,
            Cat::Publication => 6104,
            Cat::PublicationRel => 6106,
            Cat::PublicationNamespace => 6237,
            Cat::Other => 0,
        }
    }
}

fn parse_acl(items: Option<Vec<String>>) -> Result<Vec<AclItem>, ObjectsError> {
    items
        .unwrap_or_default()
        .iter()
        .map(|s| {
            AclItem::parse(s)
                .ok_or_else(|| ObjectsError::Unexpected { what: "aclitem", value: s.clone() })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

fn schemas_sql() -> String {
    format!(
        "SELECT n.oid, n.nspname::text, pg_get_userbyid(n.nspowner)::text,
                COALESCE(n.nspacl, acldefault('n', n.nspowner))::text[],
                acldefault('n', n.nspowner)::text[]
         FROM pg_namespace n WHERE {SCOPE}"
    )
}

const EXTENSIONS_SQL: &str = "SELECT e.oid, e.extname::text, n.nspname::text, e.extversion
     FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.oid >= 16384";

fn types_sql(version_num: i32) -> String {
    // Multiranges exist from PostgreSQL 14.
    let multirange = if version_num >= 140000 {
        "COALESCE(r.rngmultitypid, 0), (SELECT quote_ident(mn.nspname) || '.' || quote_ident(mt.typname)
                           FROM pg_type mt JOIN pg_namespace mn ON mn.oid = mt.typnamespace
                           WHERE mt.oid = r.rngmultitypid)"
    } else {
        "0::oid, NULL::text"
    };
    format!(
        "SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text, t.typrelid, t.typelem,
                t.typarray, pg_get_userbyid(t.typowner)::text,
                COALESCE(t.typacl, acldefault('T', t.typowner))::text[],
                acldefault('T', t.typowner)::text[],
                CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                     WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) END,
                CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
                t.typnotnull,
                CASE WHEN t.typtype = 'd'
                     THEN pg_get_expr(t.typdefaultbin, 'pg_type'::regclass) END,
                CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation
                     THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                CASE WHEN t.typtype = 'r' THEN format_type(r.rngsubtype, NULL) END,
                (SELECT quote_ident(opn.nspname) || '.' || quote_ident(oc.opcname)
                 FROM pg_opclass oc JOIN pg_namespace opn ON opn.oid = oc.opcnamespace
                 WHERE oc.oid = r.rngsubopc),
                (SELECT quote_ident(rn.nspname) || '.' || quote_ident(rc.collname)
                 FROM pg_collation rc JOIN pg_namespace rn ON rn.oid = rc.collnamespace
                 WHERE rc.oid = r.rngcollation),
                NULLIF(r.rngcanonical::oid, 0)::regproc::text,
                NULLIF(r.rngsubdiff::oid, 0)::regproc::text,
                {multirange},
                c.relkind::text
         FROM pg_type t
         JOIN pg_namespace n ON n.oid = t.typnamespace
         LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
         LEFT JOIN pg_collation co ON co.oid = t.typcollation
         LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
         LEFT JOIN pg_range r ON r.rngtypid = t.oid
         LEFT JOIN pg_class c ON c.oid = t.typrelid
         WHERE {SCOPE}"
    )
}

fn functions_sql() -> String {
    format!(
        "SELECT p.oid, n.nspname::text, p.proname::text, oidvectortypes(p.proargtypes),
                pg_get_function_identity_arguments(p.oid), p.prokind::text,
                CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
                pg_get_userbyid(p.proowner)::text,
                COALESCE(p.proacl, acldefault('f', p.proowner))::text[],
                acldefault('f', p.proowner)::text[],
                pg_get_function_arguments(p.oid), p.proparallel::text,
                a.aggkind::text, a.aggtransfn::text, format_type(a.aggtranstype, NULL),
                a.aggtransspace, NULLIF(a.aggfinalfn::oid, 0)::regproc::text, a.aggfinalextra,
                a.aggfinalmodify::text, NULLIF(a.aggcombinefn::oid, 0)::regproc::text,
                NULLIF(a.aggserialfn::oid, 0)::regproc::text,
                NULLIF(a.aggdeserialfn::oid, 0)::regproc::text, a.agginitval,
                NULLIF(a.aggmtransfn::oid, 0)::regproc::text,
                NULLIF(a.aggminvtransfn::oid, 0)::regproc::text,
                CASE WHEN a.aggmtranstype <> 0 THEN format_type(a.aggmtranstype, NULL) END,
                a.aggmtransspace, NULLIF(a.aggmfinalfn::oid, 0)::regproc::text,
                a.aggmfinalextra, a.aggmfinalmodify::text, a.aggminitval,
                (SELECT 'OPERATOR(' || quote_ident(opn.nspname) || '.' || o.oprname || ')'
                 FROM pg_operator o JOIN pg_namespace opn ON opn.oid = o.oprnamespace
                 WHERE o.oid = a.aggsortop)
         FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid
         WHERE {SCOPE}"
    )
}

fn relations_sql() -> String {
    format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
                pg_get_userbyid(c.relowner)::text,
                COALESCE(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\",
                                              c.relowner))::text[],
                acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\",
                           c.relowner)::text[],
                c.reloptions::text[], tc.reloptions::text[], c.relispartition,
                CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
                CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                ARRAY(SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid
                      ORDER BY i.inhseqno),
                c.relrowsecurity, c.relforcerowsecurity, c.relreplident::text, am.amname::text,
                CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                GREATEST(c.reltuples, 0)::int8,
                CASE WHEN c.relkind IN ('r', 'm') THEN pg_table_size(c.oid) ELSE 0 END,
                c.relispopulated,
                format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                s.seqcache, s.seqcycle,
                CASE WHEN c.reloftype <> 0 THEN format_type(c.reloftype, NULL) END
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
         LEFT JOIN pg_am am ON am.oid = c.relam
         LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c', 'f') AND {SCOPE}"
    )
}

fn columns_sql(version_num: i32) -> String {
    // attcompression exists from PostgreSQL 14; attstattarget is NULL by default from 17.
    let compression = if version_num >= 140000 { "a.attcompression::text" } else { "''::text" };
    format!(
        "SELECT a.attrelid, a.attnum::int4, a.attname::text, format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), ad.oid, a.attidentity::text,
                a.attgenerated::text,
                CASE WHEN a.attcollation <> t.typcollation
                     THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                a.attislocal, a.attstorage::text, t.typstorage::text, {compression},
                COALESCE(a.attstattarget, -1)::int4, a.attoptions::text[], a.attacl::text[]
         FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
         LEFT JOIN pg_collation co ON co.oid = a.attcollation
         LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
         WHERE a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'p', 'v', 'm', 'c', 'f') AND {SCOPE}
         ORDER BY a.attrelid, a.attnum"
    )
}

fn constraints_sql() -> String {
    format!(
        "SELECT co.oid, co.conrelid, co.contypid, co.conname::text, co.contype::text,
                pg_get_constraintdef(co.oid), co.convalidated, co.conislocal, co.conparentid,
                COALESCE(co.conkey, '{{}}')::int2[]
         FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
         WHERE co.contype IN ('c', 'f', 'p', 'u', 'x') AND {SCOPE}"
    )
}

fn indexes_sql() -> String {
    format!(
        "SELECT i.indexrelid, i.indrelid, ic.relname::text, pg_get_indexdef(i.indexrelid),
                i.indisclustered, i.indisreplident,
                COALESCE((SELECT h.inhparent FROM pg_inherits h WHERE h.inhrelid = i.indexrelid),
                         0),
                COALESCE((SELECT co.oid FROM pg_constraint co
                          WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid
                            AND co.contype IN ('p', 'u', 'x')), 0),
                ARRAY(SELECT a.attnum::int4 || '=' || a.attstattarget::int4
                      FROM pg_attribute a WHERE a.attrelid = i.indexrelid
                        AND COALESCE(a.attstattarget, -1) >= 0 ORDER BY a.attnum)
         FROM pg_index i
         JOIN pg_class ic ON ic.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = ic.relnamespace
         WHERE {SCOPE}"
    )
}

fn triggers_sql(version_num: i32) -> String {
    // Partitions' clones of a partitioned table's trigger have tgparentid from PostgreSQL 13;
    // they are read only when their enabled state differs from their parent's.
    let (parent, filter) = if version_num >= 130000 {
        (
            "t.tgparentid",
            "((NOT t.tgisinternal AND t.tgparentid = 0) OR (t.tgparentid <> 0 AND t.tgenabled <> \
              (SELECT p.tgenabled FROM pg_trigger p WHERE p.oid = t.tgparentid)))",
        )
    } else {
        ("0::oid", "NOT t.tgisinternal")
    };
    format!(
        "SELECT t.oid, t.tgrelid, t.tgname::text, pg_get_triggerdef(t.oid, false),
                t.tgenabled::text, {parent}
         FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {filter} AND {SCOPE}"
    )
}

fn rules_sql() -> String {
    format!(
        "SELECT r.oid, r.ev_class, r.rulename::text,
                CASE WHEN r.rulename <> '_RETURN' THEN pg_get_ruledef(r.oid) END,
                r.ev_enabled::text
         FROM pg_rewrite r
         JOIN pg_class c ON c.oid = r.ev_class
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SCOPE}"
    )
}

fn policies_sql() -> String {
    format!(
        "SELECT p.oid, p.polrelid, p.polname::text, p.polcmd::text, p.polpermissive,
                ARRAY(SELECT CASE WHEN r.role = 0 THEN '' ELSE pg_get_userbyid(r.role)::text END
                      FROM unnest(p.polroles) WITH ORDINALITY AS r(role, ord) ORDER BY r.ord),
                pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
         FROM pg_policy p
         JOIN pg_class c ON c.oid = p.polrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {SCOPE}"
    )
}

fn statistics_sql(version_num: i32) -> String {
    // stxstattarget exists from PostgreSQL 13 and is NULL by default from 17.
    let target =
        if version_num >= 130000 { "COALESCE(s.stxstattarget, -1)::int4" } else { "-1::int4" };
    format!(
        "SELECT s.oid, n.nspname::text, s.stxname::text, s.stxrelid,
                pg_get_statisticsobjdef(s.oid), pg_get_userbyid(s.stxowner)::text, {target}
         FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
         WHERE {SCOPE}"
    )
}

fn collations_sql(version_num: i32) -> String {
    // The ICU locale moved from collcollate to colliculocale in PostgreSQL 15, and to colllocale
    // (shared with the builtin provider) in 17; ICU rules exist from 16.
    let locale = match version_num {
        170000.. => "c.colllocale",
        150000.. => "c.colliculocale",
        _ => "NULL::text",
    };
    let rules = if version_num >= 160000 { "c.collicurules" } else { "NULL::text" };
    format!(
        "SELECT c.oid, n.nspname::text, c.collname::text, pg_get_userbyid(c.collowner)::text,
                c.collprovider::text, c.collisdeterministic, c.collcollate::text,
                c.collctype::text, {locale}, {rules}
         FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
         WHERE {SCOPE}"
    )
}

/// Default privileges; the built-in ones are the baseline of global entries, nothing is the
/// baseline of per-schema ones (as pg_dump has it).
const DEFAULT_ACLS_SQL: &str = "SELECT pg_get_userbyid(d.defaclrole)::text,
            COALESCE(n.nspname::text, ''), d.defaclobjtype::text, d.defaclacl::text[],
            CASE WHEN d.defaclnamespace = 0
                 THEN acldefault(CASE d.defaclobjtype WHEN 'S' THEN 's' WHEN 'f' THEN 'f'
                                     WHEN 'T' THEN 'T' WHEN 'n' THEN 'n' ELSE 'r' END::\"char\",
                                 d.defaclrole)
                 ELSE '{}'::aclitem[] END::text[]
     FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace";

/// Comments: the public schema was created by initdb, everything else after.
const COMMENTS_SQL: &str = "SELECT d.classoid::regclass::text, d.objoid, d.objsubid, d.description
     FROM pg_description d
     WHERE d.objoid >= 16384 OR d.classoid = 'pg_namespace'::regclass";

/// Objects of the kinds whose DDL comes from pg_dump (see `crate::dump`): their catalog, OID,
/// `pg_identify_object`'s type, schema and identity, pg_dump's tag where its entry has no OID
/// of its own (a base type's shell: the type's name; a user mapping: `USER MAPPING <user>
/// SERVER <server>`), and a base type's array type. Extension members are left out (the
/// extension creates them), and so are array types (each belongs to its element type).
fn dumped_sql(version_num: i32) -> String {
    // Publications of schemas exist from PostgreSQL 15.
    let publication_schemas = if version_num >= 150000 {
        "UNION ALL SELECT 'pg_publication_namespace'::regclass, oid, NULL, 0
                   FROM pg_publication_namespace"
    } else {
        ""
    };
    format!(
        "WITH o(classid, objid, tag, array_type) AS (
         SELECT 'pg_operator'::regclass, oid, NULL::text, 0::oid FROM pg_operator
         UNION ALL SELECT 'pg_opclass'::regclass, oid, NULL, 0 FROM pg_opclass
         UNION ALL SELECT 'pg_opfamily'::regclass, oid, NULL, 0 FROM pg_opfamily
         UNION ALL SELECT 'pg_cast'::regclass, oid, NULL, 0 FROM pg_cast
         UNION ALL SELECT 'pg_ts_parser'::regclass, oid, NULL, 0 FROM pg_ts_parser
         UNION ALL SELECT 'pg_ts_template'::regclass, oid, NULL, 0 FROM pg_ts_template
         UNION ALL SELECT 'pg_ts_dict'::regclass, oid, NULL, 0 FROM pg_ts_dict
         UNION ALL SELECT 'pg_ts_config'::regclass, oid, NULL, 0 FROM pg_ts_config
         UNION ALL SELECT 'pg_am'::regclass, oid, NULL, 0 FROM pg_am
         UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid, NULL, 0
                   FROM pg_foreign_data_wrapper
         UNION ALL SELECT 'pg_foreign_server'::regclass, oid, NULL, 0 FROM pg_foreign_server
         UNION ALL SELECT 'pg_user_mapping'::regclass, umid,
                          'USER MAPPING ' || usename || ' SERVER ' || srvname, 0
                   FROM pg_user_mappings
         UNION ALL SELECT 'pg_transform'::regclass, oid, NULL, 0 FROM pg_transform
         UNION ALL SELECT 'pg_event_trigger'::regclass, oid, NULL, 0 FROM pg_event_trigger
         UNION ALL SELECT 'pg_conversion'::regclass, oid, NULL, 0 FROM pg_conversion
         UNION ALL SELECT 'pg_language'::regclass, oid, NULL, 0 FROM pg_language
         UNION ALL SELECT 'pg_type'::regclass, t.oid, t.typname::text, t.typarray FROM pg_type t
                   WHERE t.typtype IN ('b', 'p')
                     AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
         UNION ALL SELECT 'pg_class'::regclass, oid, NULL, 0 FROM pg_class WHERE relkind = 'f'
         UNION ALL SELECT 'pg_publication'::regclass, oid, NULL, 0 FROM pg_publication
                   WHERE pubname NOT LIKE 'pgtransit\\_%'
         UNION ALL SELECT 'pg_publication_rel'::regclass, r.oid, NULL, 0
                   FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname NOT LIKE 'pgtransit\\_%'
         {publication_schemas}
     )
     SELECT o.classid::regclass::text, o.objid, i.type, COALESCE(i.schema, ''), i.identity,
            o.tag, o.array_type
     FROM o, pg_identify_object(o.classid, o.objid, 0) i
     WHERE o.objid >= 16384
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid
                       AND d.objid = o.objid AND d.deptype = 'e')
       AND (i.schema IS NULL OR (i.schema NOT IN ('pg_catalog', 'information_schema')
            AND i.schema NOT LIKE 'pg\\_toast%' AND i.schema NOT LIKE 'pg\\_temp\\_%'))"
    )
}

/// Dependencies between objects created after initdb (pinned ones are never needed).
const DEPEND_SQL: &str = "SELECT d.classid::regclass::text, d.objid, d.objsubid,
            d.refclassid::regclass::text, d.refobjid, d.refobjsubid, d.deptype::text
     FROM pg_depend d
     WHERE d.objid >= 16384 AND d.refobjid >= 16384
       AND d.deptype IN ('n', 'a', 'i', 'e', 'P', 'S')";

// ---------------------------------------------------------------------------------------------
// Raw rows
// ---------------------------------------------------------------------------------------------

struct RawRelation {
    oid: u32,
    schema: String,
    name: String,
    kind: String,
    persistence: String,
    owner: String,
    acl: Vec<AclItem>,
    default_acl: Vec<AclItem>,
    options: Vec<String>,
    toast_options: Vec<String>,
    is_partition: bool,
    bound: Option<String>,
    partition_key: Option<String>,
    parents: Vec<u32>,
    row_security: bool,
    force_row_security: bool,
    replica_identity: String,
    access_method: Option<String>,
    view_definition: Option<String>,
    estimated_rows: i64,
    bytes: i64,
    populated: bool,
    sequence: Option<SequenceParams>,
    /// A typed table's type (`CREATE TABLE ... OF type`).
    of_type: Option<String>,
}

impl RawRelation {
    fn sql(&self) -> String {
        qualified_ident(&self.schema, &self.name)
    }
}

struct RawColumn {
    column: Column,
    attrdef: Option<u32>,
    acl: Option<Vec<String>>,
}

struct RawConstraint {
    oid: u32,
    relid: u32,
    typid: u32,
    name: String,
    kind: String,
    definition: String,
    validated: bool,
    local: bool,
    parent: u32,
    key: Vec<i16>,
}

struct RawIndex {
    oid: u32,
    relid: u32,
    name: String,
    definition: String,
    clustered: bool,
    replica_identity: bool,
    parent: u32,
    constraint: u32,
    stat_targets: Vec<String>,
}

struct RawDepend {
    cat: Cat,
    oid: u32,
    sub: i32,
    ref_cat: Cat,
    ref_oid: u32,
    ref_sub: i32,
    kind: String,
}

/// Where a comment goes.
enum CommentTarget {
    Object(usize),
    Sub(usize, String),
}

/// Objects under construction, and how catalog rows map onto them.
#[derive(Default)]
struct Builder {
    objects: Vec<SchemaObject>,
    index: HashMap<ObjectKey, usize>,
    keys: HashMap<(Cat, u32), ObjectKey>,
    comments: HashMap<(Cat, u32, i32), CommentTarget>,
    /// Extension members → the extension's OID.
    members: HashMap<(Cat, u32), u32>,
    extension_keys: HashMap<u32, ObjectKey>,
}

impl Builder {
    fn push(&mut self, object: SchemaObject) -> usize {
        let i = self.objects.len();
        self.index.entry(object.key.clone()).or_insert(i);
        self.objects.push(object);
        i
    }

    fn is_member(&self, cat: Cat, oid: u32) -> bool {
        self.members.contains_key(&(cat, oid))
    }

    /// The key of the object (`cat`, `oid`) is part of: its own, its table's, or its extension's.
    fn lookup(&self, cat: Cat, oid: u32) -> Option<ObjectKey> {
        if let Some(key) = self.keys.get(&(cat, oid)) {
            return Some(key.clone());
        }
        let extension = self.members.get(&(cat, oid))?;
        self.extension_keys.get(extension).cloned()
    }
}

fn table_bound_key(kind: ObjectKind, rel: &RawRelation, name: &str) -> ObjectKey {
    ObjectKey::new(kind, &rel.schema, format!("{}.{name}", rel.name))
}

fn trigger_state(table_sql: &str, name: &str, enabled: &str, always: bool) -> Option<String> {
    let action = match enabled {
        "D" => "DISABLE TRIGGER",
        "A" => "ENABLE ALWAYS TRIGGER",
        "R" => "ENABLE REPLICA TRIGGER",
        _ if always => "ENABLE TRIGGER",
        _ => return None,
    };
    Some(format!("ALTER TABLE {table_sql} {action} {}", ident(name)))
}

fn rule_state(table_sql: &str, name: &str, enabled: &str) -> Option<String> {
    let action = match enabled {
        "D" => "DISABLE RULE",
        "A" => "ENABLE ALWAYS RULE",
        "R" => "ENABLE REPLICA RULE",
        _ => return None,
    };
    Some(format!("ALTER TABLE {table_sql} {action} {}", ident(name)))
}

/// The statements creating index `oid` and, for a partitioned index, its partitions' indexes
/// (or constraints) attached to it, as pg_dump does, so that their names are kept.
struct IndexTree<'a> {
    indexes: &'a HashMap<u32, RawIndex>,
    children: &'a HashMap<u32, Vec<u32>>,
    relations: &'a HashMap<u32, RawRelation>,
    constraints: &'a HashMap<u32, RawConstraint>,
}

impl IndexTree<'_> {
    fn index_sql(&self, idx: &RawIndex) -> String {
        qualified_ident(&self.relations[&idx.relid].schema, &idx.name)
    }

    fn emit(&self, oid: u32, out: &mut Vec<String>) {
        let idx = &self.indexes[&oid];
        let table_sql = self.relations[&idx.relid].sql();
        match self.constraints.get(&idx.constraint) {
            Some(con) => out.push(format!(
                "ALTER TABLE ONLY {table_sql} ADD CONSTRAINT {} {}",
                ident(&con.name),
                con.definition
            )),
            None => out.push(idx.definition.clone()),
        }
        if idx.clustered {
            out.push(format!("ALTER TABLE {table_sql} CLUSTER ON {}", ident(&idx.name)));
        }
        if idx.replica_identity {
            out.push(format!(
                "ALTER TABLE ONLY {table_sql} REPLICA IDENTITY USING INDEX {}",
                ident(&idx.name)
            ));
        }
        for target in &idx.stat_targets {
            if let Some((column, value)) = target.split_once('=') {
                out.push(format!(
                    "ALTER INDEX {} ALTER COLUMN {column} SET STATISTICS {value}",
                    self.index_sql(idx)
                ));
            }
        }
        for &child in self.children.get(&oid).map(Vec::as_slice).unwrap_or_default() {
            self.emit(child, out);
            out.push(format!(
                "ALTER INDEX {} ATTACH PARTITION {}",
                self.index_sql(idx),
                self.index_sql(&self.indexes[&child])
            ));
        }
    }

    /// `oid` and every index below it.
    fn descendants(&self, oid: u32, out: &mut Vec<u32>) {
        out.push(oid);
        for &child in self.children.get(&oid).map(Vec::as_slice).unwrap_or_default() {
            self.descendants(child, out);
        }
    }
}

fn opt<T: Default>(value: Option<T>) -> T {
    value.unwrap_or_default()
}

async fn read_all(r: &mut Reader<'_>, version_num: i32) -> Result<Schema, ObjectsError> {
    let schema_rows = r.query("schemas", &schemas_sql(), &[]).await?;
    let extension_rows = r.query("extensions", EXTENSIONS_SQL, &[]).await?;
    let type_rows = r.query("types", &types_sql(version_num), &[]).await?;
    let function_rows = r.query("functions", &functions_sql(), &[]).await?;
    let relation_rows = r.query("relations", &relations_sql(), &[]).await?;
    let column_rows = r.query("columns", &columns_sql(version_num), &[]).await?;
    let constraint_rows = r.query("constraints", &constraints_sql(), &[]).await?;
    let index_rows = r.query("indexes", &indexes_sql(), &[]).await?;
    let trigger_rows = r.query("triggers", &triggers_sql(version_num), &[]).await?;
    let rule_rows = r.query("rules", &rules_sql(), &[]).await?;
    let policy_rows = r.query("policies", &policies_sql(), &[]).await?;
    let statistics_rows = r.query("statistics", &statistics_sql(version_num), &[]).await?;
    let collation_rows = r.query("collations", &collations_sql(version_num), &[]).await?;
    let default_acl_rows = r.query("default privileges", DEFAULT_ACLS_SQL, &[]).await?;
    let comment_rows = r.query("comments", COMMENTS_SQL, &[]).await?;
    let depend_rows = r.query("dependencies", DEPEND_SQL, &[]).await?;
    let dumped_rows = r.query("objects pg_dump creates", &dumped_sql(version_num), &[]).await?;

    let mut b = Builder::default();
    let depends = raw_depends(&depend_rows);
    for d in depends.iter().filter(|d| d.kind == "e" && d.ref_cat == Cat::Extension) {
        b.members.insert((d.cat, d.oid), d.ref_oid);
    }
    let internal = internal_parts(&depends);
    let owned_sequences = sequences_owned_by_columns(&depends);

    let schema_keys = add_schemas(&mut b, &schema_rows)?;
    add_extensions(&mut b, &extension_rows, &schema_keys);
    add_collations(&mut b, &collation_rows);
    add_default_privileges(&mut b, &default_acl_rows, &schema_keys)?;
    let relations = raw_relations(&relation_rows)?;
    let columns = raw_columns(&column_rows);
    let constraints = raw_constraints(&constraint_rows);
    let data =
        RelationData::new(&b, &depends, &relations, &columns, &constraints, &owned_sequences);
    let type_links = add_types(&mut b, &type_rows, &data)?;
    add_functions(&mut b, &function_rows, &internal)?;
    add_relations(&mut b, &data)?;
    let child_constraints = add_table_constraints(&mut b, &data);
    add_indexes(&mut b, &index_rows, &relations, &constraints);
    map_child_constraints(&mut b, &constraints, child_constraints);
    add_triggers(&mut b, &trigger_rows, &relations);
    add_rules(&mut b, &rule_rows, &relations);
    add_policies(&mut b, &policy_rows, &relations);
    add_statistics(&mut b, &statistics_rows, &relations);
    map_type_links(&mut b, &type_links, &internal);
    add_dumped(&mut b, &dumped_rows, &depends);
    attach_comments(&mut b, &comment_rows);
    add_dependencies(&mut b, &depends, &owned_sequences, &relations);
    Ok(finish(b, &schema_keys))
}

fn raw_depends(depend_rows: &[Row]) -> Vec<RawDepend> {
    depend_rows
        .iter()
        .map(|row| RawDepend {
            cat: Cat::from_name(row.get(0)),
            oid: row.get(1),
            sub: row.get(2),
            ref_cat: Cat::from_name(row.get(3)),
            ref_oid: row.get(4),
            ref_sub: row.get(5),
            kind: row.get(6),
        })
        .collect()
}

/// Objects that are internal parts of another (range constructors of their range type, ...).
fn internal_parts(depends: &[RawDepend]) -> HashMap<(Cat, u32), (Cat, u32)> {
    depends
        .iter()
        .filter(|d| d.kind == "i" && d.cat == Cat::Proc)
        .map(|d| ((d.cat, d.oid), (d.ref_cat, d.ref_oid)))
        .collect()
}

/// Sequences owned by a column: sequence → (table, attnum, identity).
fn sequences_owned_by_columns(depends: &[RawDepend]) -> HashMap<u32, (u32, i32, bool)> {
    let mut owned_sequences: HashMap<u32, (u32, i32, bool)> = HashMap::new();
    for d in depends {
        if d.cat == Cat::Class
            && d.ref_cat == Cat::Class
            && d.sub == 0
            && d.ref_sub > 0
            && (d.kind == "a" || d.kind == "i")
        {
            owned_sequences.insert(d.oid, (d.ref_oid, d.ref_sub, d.kind == "i"));
        }
    }
    owned_sequences
}

/// Schemas, with their keys by name.
fn add_schemas(
    b: &mut Builder,
    schema_rows: &[Row],
) -> Result<HashMap<String, ObjectKey>, ObjectsError> {
    let mut schema_keys: HashMap<String, ObjectKey> = HashMap::new();
    for row in schema_rows {
        let oid: u32 = row.get(0);
        if b.is_member(Cat::Namespace, oid) {
            continue;
        }
        let name: String = row.get(1);
        let key = ObjectKey::new(ObjectKind::Schema, "", &name);
        let mut o = SchemaObject::new(key.clone(), vec![format!("CREATE SCHEMA {}", ident(&name))]);
        o.owner = Some(row.get(2));
        o.acl = Some(parse_acl(row.get(3))?);
        o.default_acl = parse_acl(row.get(4))?;
        let i = b.push(o);
        b.keys.insert((Cat::Namespace, oid), key.clone());
        b.comments.insert((Cat::Namespace, oid, 0), CommentTarget::Object(i));
        schema_keys.insert(name, key);
    }
    Ok(schema_keys)
}

/// Extensions (those created by initdb, such as plpgsql, are not read).
fn add_extensions(
    b: &mut Builder,
    extension_rows: &[Row],
    schema_keys: &HashMap<String, ObjectKey>,
) {
    for row in extension_rows {
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        let schema: String = row.get(2);
        let version: String = row.get(3);
        let key = ObjectKey::new(ObjectKind::Extension, "", &name);
        let mut o = SchemaObject::new(
            key.clone(),
            vec![format!(
                "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} VERSION {}",
                ident(&name),
                ident(&schema),
                crate::sql::literal(&version)
            )],
        );
        if let Some(schema_key) = schema_keys.get(&schema) {
            o.depends_on.insert(schema_key.clone());
        }
        let i = b.push(o);
        b.keys.insert((Cat::Extension, oid), key.clone());
        b.extension_keys.insert(oid, key);
        b.comments.insert((Cat::Extension, oid, 0), CommentTarget::Object(i));
    }
}

/// Collations (the ones a provider lists at initdb are in pg_catalog, not read).
fn add_collations(b: &mut Builder, collation_rows: &[Row]) {
    for row in collation_rows {
        let oid: u32 = row.get(0);
        if b.is_member(Cat::Collation, oid) {
            continue;
        }
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let provider: String = row.get(4);
        let deterministic: bool = row.get(5);
        let collate: Option<String> = row.get(6);
        let ctype: Option<String> = row.get(7);
        let locale: Option<String> = row.get(8);
        let rules: Option<String> = row.get(9);
        let mut items = vec![format!(
            "provider = {}",
            match provider.as_str() {
                "i" => "icu",
                "b" => "builtin",
                "c" => "libc",
                _ => continue,
            }
        )];
        if !deterministic {
            items.push("deterministic = false".into());
        }
        let lit = |v: &Option<String>| crate::sql::literal(v.as_deref().unwrap_or_default());
        match provider.as_str() {
            "c" if collate == ctype => items.push(format!("locale = {}", lit(&collate))),
            "c" => {
                items.push(format!("lc_collate = {}", lit(&collate)));
                items.push(format!("lc_ctype = {}", lit(&ctype)));
            }
            _ => items.push(format!("locale = {}", lit(&locale.or(collate)))),
        }
        if rules.is_some() {
            items.push(format!("rules = {}", lit(&rules)));
        }
        let name_sql = qualified_ident(&schema, &name);
        let key = ObjectKey::new(ObjectKind::Collation, &schema, &name);
        let mut o = SchemaObject::new(
            key.clone(),
            vec![format!("CREATE COLLATION {name_sql} ({})", items.join(", "))],
        );
        o.owner = Some(row.get(3));
        let i = b.push(o);
        b.keys.insert((Cat::Collation, oid), key);
        b.comments.insert((Cat::Collation, oid, 0), CommentTarget::Object(i));
    }
}

/// Default privileges.
fn add_default_privileges(
    b: &mut Builder,
    default_acl_rows: &[Row],
    schema_keys: &HashMap<String, ObjectKey>,
) -> Result<(), ObjectsError> {
    for row in default_acl_rows {
        let role: String = row.get(0);
        let schema: String = row.get(1);
        if !schema.is_empty() && !schema_keys.contains_key(&schema) {
            continue;
        }
        let objects = match row.get::<_, &str>(2) {
            "r" => "tables",
            "S" => "sequences",
            "f" => "functions",
            "T" => "types",
            "n" => "schemas",
            _ => continue,
        };
        let key =
            ObjectKey::new(ObjectKind::DefaultPrivileges, &schema, format!("{role}.{objects}"));
        let mut o = SchemaObject::new(key, Vec::new());
        o.owner = Some(role);
        o.acl = Some(parse_acl(row.get(3))?);
        o.default_acl = parse_acl(row.get(4))?;
        b.push(o);
    }
    Ok(())
}

/// Relations by OID.
fn raw_relations(relation_rows: &[Row]) -> Result<HashMap<u32, RawRelation>, ObjectsError> {
    let mut relations: HashMap<u32, RawRelation> = HashMap::new();
    for row in relation_rows {
        let oid: u32 = row.get(0);
        let seq_type: Option<String> = row.get(22);
        relations.insert(
            oid,
            RawRelation {
                oid,
                schema: row.get(1),
                name: row.get(2),
                kind: row.get(3),
                persistence: row.get(4),
                owner: row.get(5),
                acl: parse_acl(row.get(6))?,
                default_acl: parse_acl(row.get(7))?,
                options: opt(row.get(8)),
                toast_options: opt(row.get(9)),
                is_partition: row.get(10),
                bound: row.get(11),
                partition_key: row.get(12),
                parents: row.get(13),
                row_security: row.get(14),
                force_row_security: row.get(15),
                replica_identity: row.get(16),
                access_method: row.get(17),
                view_definition: row.get(18),
                estimated_rows: row.get(19),
                bytes: row.get(20),
                populated: row.get(21),
                sequence: seq_type.map(|type_sql| SequenceParams {
                    type_sql,
                    start: row.get(23),
                    increment: row.get(24),
                    min: row.get(25),
                    max: row.get(26),
                    cache: row.get(27),
                    cycle: row.get(28),
                    persistence: None,
                }),
                of_type: row.get(29),
            },
        );
    }
    Ok(relations)
}

/// Columns by relation OID.
fn raw_columns(column_rows: &[Row]) -> HashMap<u32, Vec<RawColumn>> {
    let mut columns: HashMap<u32, Vec<RawColumn>> = HashMap::new();
    for row in column_rows {
        let relid: u32 = row.get(0);
        columns.entry(relid).or_default().push(RawColumn {
            column: Column {
                attnum: row.get(1),
                name: row.get(2),
                type_sql: row.get(3),
                not_null: row.get(4),
                default: row.get(5),
                identity: row.get(7),
                generated: row.get(8),
                collation: row.get(9),
                is_local: row.get(10),
                storage: row.get(11),
                type_storage: row.get(12),
                compression: row.get(13),
                stat_target: row.get(14),
                options: opt(row.get(15)),
            },
            attrdef: row.get(6),
            acl: row.get(16),
        });
    }
    columns
}

/// Constraints (of tables and of domains) by OID.
fn raw_constraints(constraint_rows: &[Row]) -> HashMap<u32, RawConstraint> {
    let mut constraints: HashMap<u32, RawConstraint> = HashMap::new();
    for row in constraint_rows {
        let oid: u32 = row.get(0);
        constraints.insert(
            oid,
            RawConstraint {
                oid,
                relid: row.get(1),
                typid: row.get(2),
                name: row.get(3),
                kind: row.get(4),
                definition: row.get(5),
                validated: row.get(6),
                local: row.get(7),
                parent: row.get(8),
                key: row.get(9),
            },
        );
    }
    constraints
}

/// Relations, their columns and constraints (and domains' constraints) as read, with the
/// lookups that the assembly of types, relations and constraints shares.
struct RelationData<'a> {
    relations: &'a HashMap<u32, RawRelation>,
    columns: &'a HashMap<u32, Vec<RawColumn>>,
    constraints: &'a HashMap<u32, RawConstraint>,
    /// Sequences owned by a column: sequence → (table, attnum, identity).
    owned_sequences: &'a HashMap<u32, (u32, i32, bool)>,
    /// Every constraint, in name order.
    constraint_oids: Vec<u32>,
    /// By table, in name order.
    of_rel: HashMap<u32, Vec<&'a RawConstraint>>,
    /// By domain, in name order.
    of_type: HashMap<u32, Vec<&'a RawConstraint>>,
    /// See [`checks_calling_functions`].
    calls_function: BTreeSet<u32>,
    /// Identity sequences by table: (sequence, attnum).
    identity_of: HashMap<u32, Vec<(u32, i32)>>,
}

impl<'a> RelationData<'a> {
    fn new(
        b: &Builder,
        depends: &[RawDepend],
        relations: &'a HashMap<u32, RawRelation>,
        columns: &'a HashMap<u32, Vec<RawColumn>>,
        constraints: &'a HashMap<u32, RawConstraint>,
        owned_sequences: &'a HashMap<u32, (u32, i32, bool)>,
    ) -> RelationData<'a> {
        let mut constraint_oids: Vec<u32> = constraints.keys().copied().collect();
        constraint_oids.sort_unstable_by_key(|o| (&constraints[o].name, *o));
        // By table and by domain, in name order.
        let mut of_rel: HashMap<u32, Vec<&RawConstraint>> = HashMap::new();
        let mut of_type: HashMap<u32, Vec<&RawConstraint>> = HashMap::new();
        for oid in &constraint_oids {
            let c = &constraints[oid];
            if c.relid != 0 {
                of_rel.entry(c.relid).or_default().push(c);
            } else if c.typid != 0 {
                of_type.entry(c.typid).or_default().push(c);
            }
        }
        let calls_function = checks_calling_functions(b, depends, constraints);
        // Identity sequences by table: (sequence, attnum).
        let mut identity_of: HashMap<u32, Vec<(u32, i32)>> = HashMap::new();
        for (&seq, &(table, attnum, identity)) in owned_sequences {
            if identity {
                identity_of.entry(table).or_default().push((seq, attnum));
            }
        }
        RelationData {
            relations,
            columns,
            constraints,
            owned_sequences,
            constraint_oids,
            of_rel,
            of_type,
            calls_function,
            identity_of,
        }
    }

    fn constraints_of_rel(&self, oid: u32) -> &[&'a RawConstraint] {
        self.of_rel.get(&oid).map(Vec::as_slice).unwrap_or_default()
    }

    fn constraints_of_type(&self, oid: u32) -> &[&'a RawConstraint] {
        self.of_type.get(&oid).map(Vec::as_slice).unwrap_or_default()
    }

    fn columns_of(&self, oid: u32) -> &'a [RawColumn] {
        self.columns.get(&oid).map(Vec::as_slice).unwrap_or_default()
    }

    fn plain_columns(&self, oid: u32) -> Vec<Column> {
        self.columns_of(oid).iter().map(|c| c.column.clone()).collect()
    }
}

/// Types: enums, composites, ranges, domains. (Table row types, arrays and multiranges map onto
/// their owner in [`map_type_links`].) Returns every type's links: (oid, relid, array,
/// multirange).
fn add_types(
    b: &mut Builder,
    type_rows: &[Row],
    data: &RelationData,
) -> Result<Vec<(u32, u32, u32, u32)>, ObjectsError> {
    let mut type_links: Vec<(u32, u32, u32, u32)> = Vec::new(); // oid, relid, array, multirange
    for row in type_rows {
        let oid: u32 = row.get(0);
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let typtype: String = row.get(3);
        let relid: u32 = row.get(4);
        type_links.push((oid, relid, row.get(6), row.get(20)));
        if b.is_member(Cat::Type, oid) {
            continue;
        }
        let name_sql = qualified_ident(&schema, &name);
        let relkind: Option<String> = row.get(22);
        let (kind, ddl) = match typtype.as_str() {
            "e" => {
                let labels: Vec<String> = opt(row.get(10));
                (ObjectKind::Type, vec![ddl::create_enum(&name_sql, &labels)])
            }
            "c" if relkind.as_deref() == Some("c") => (
                ObjectKind::Type,
                vec![ddl::create_composite(&name_sql, &data.plain_columns(relid))],
            ),
            "r" => {
                let params = ddl::RangeParams {
                    subtype: opt(row.get(15)),
                    opclass: row.get(16),
                    collation: row.get(17),
                    canonical: row.get(18),
                    subtype_diff: row.get(19),
                    multirange: row.get(21),
                };
                (ObjectKind::Type, vec![ddl::create_range(&name_sql, &params)])
            }
            "d" => {
                let checks: Vec<(String, String, bool)> = data
                    .constraints_of_type(oid)
                    .iter()
                    .filter(|c| c.kind == "c")
                    .map(|c| (c.name.clone(), c.definition.clone(), c.validated))
                    .collect();
                let params = ddl::DomainParams {
                    base: opt(row.get(11)),
                    not_null: row.get(12),
                    default: row.get(13),
                    collation: row.get(14),
                    checks,
                };
                (ObjectKind::Domain, ddl::create_domain(&name_sql, &params))
            }
            _ => continue,
        };
        let key = ObjectKey::new(kind, &schema, &name);
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.owner = Some(row.get(7));
        o.acl = Some(parse_acl(row.get(8))?);
        o.default_acl = parse_acl(row.get(9))?;
        let i = b.push(o);
        b.keys.insert((Cat::Type, oid), key.clone());
        b.comments.insert((Cat::Type, oid, 0), CommentTarget::Object(i));
        if relid != 0 {
            b.keys.insert((Cat::Class, relid), key.clone());
            for c in data.columns_of(relid) {
                let target = format!("COLUMN {name_sql}.{}", ident(&c.column.name));
                b.comments
                    .insert((Cat::Class, relid, c.column.attnum), CommentTarget::Sub(i, target));
            }
        }
        for c in data.constraints_of_type(oid) {
            b.keys.insert((Cat::Constraint, c.oid), key.clone());
            let target = format!("CONSTRAINT {} ON DOMAIN {name_sql}", ident(&c.name));
            b.comments.insert((Cat::Constraint, c.oid, 0), CommentTarget::Sub(i, target));
        }
    }
    Ok(type_links)
}

/// Functions, procedures, aggregates.
fn add_functions(
    b: &mut Builder,
    function_rows: &[Row],
    internal: &HashMap<(Cat, u32), (Cat, u32)>,
) -> Result<(), ObjectsError> {
    for row in function_rows {
        let oid: u32 = row.get(0);
        if b.is_member(Cat::Proc, oid) || internal.contains_key(&(Cat::Proc, oid)) {
            continue;
        }
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let arg_types: String = row.get(3);
        let identity: String = row.get(4);
        let prokind: String = row.get(5);
        let name_sql = qualified_ident(&schema, &name);
        let (kind, sql_type, ddl) = if prokind == "a" {
            let arguments: String = row.get(10);
            let params = ddl::AggregateParams {
                arguments: if arguments.is_empty() { "*".into() } else { arguments },
                parallel: row.get(11),
                kind: opt(row.get(12)),
                sfunc: opt(row.get(13)),
                stype: opt(row.get(14)),
                sspace: opt(row.get(15)),
                finalfunc: row.get(16),
                finalfunc_extra: opt(row.get(17)),
                finalfunc_modify: opt(row.get(18)),
                combinefunc: row.get(19),
                serialfunc: row.get(20),
                deserialfunc: row.get(21),
                initcond: row.get(22),
                msfunc: row.get(23),
                minvfunc: row.get(24),
                mstype: row.get(25),
                msspace: opt(row.get(26)),
                mfinalfunc: row.get(27),
                mfinalfunc_extra: opt(row.get(28)),
                mfinalfunc_modify: opt(row.get(29)),
                minitcond: row.get(30),
                sortop: row.get(31),
            };
            (ObjectKind::Aggregate, "AGGREGATE", ddl::create_aggregate(&name_sql, &params))
        } else {
            let definition: String = opt(row.get(6));
            let word = if prokind == "p" { "PROCEDURE" } else { "FUNCTION" };
            (ObjectKind::Function, word, definition.trim_end().to_string())
        };
        let key = ObjectKey::new(kind, &schema, format!("{name}({arg_types})"));
        let mut o = SchemaObject::new(key.clone(), vec![ddl]);
        o.sql_type = sql_type.into();
        let signature = if prokind == "a" && identity.is_empty() { "*".into() } else { identity };
        o.sql_name = format!("{name_sql}({signature})");
        o.owner = Some(row.get(7));
        o.acl = Some(parse_acl(row.get(8))?);
        o.default_acl = parse_acl(row.get(9))?;
        let i = b.push(o);
        b.keys.insert((Cat::Proc, oid), key);
        b.comments.insert((Cat::Proc, oid, 0), CommentTarget::Object(i));
    }
    Ok(())
}

/// Relations' keys, first (partitions and children refer to their parents); returns the OIDs of
/// the relations that are objects of their own, in order.
fn add_relation_keys(b: &mut Builder, data: &RelationData) -> Vec<u32> {
    let (relations, owned_sequences) = (data.relations, data.owned_sequences);
    let is_identity = |oid: u32| owned_sequences.get(&oid).is_some_and(|s| s.2);
    let mut rel_oids: Vec<u32> = relations
        .keys()
        .copied()
        .filter(|&o| !b.is_member(Cat::Class, o) && !is_identity(o))
        .collect();
    rel_oids.sort_unstable();
    let rel_kind = |rel: &RawRelation| match rel.kind.as_str() {
        "r" | "p" => Some(ObjectKind::Table),
        "v" => Some(ObjectKind::View),
        "m" => Some(ObjectKind::MaterializedView),
        "S" => Some(ObjectKind::Sequence),
        _ => None,
    };
    rel_oids.retain(|o| rel_kind(&relations[o]).is_some());
    for &oid in &rel_oids {
        let rel = &relations[&oid];
        if let Some(kind) = rel_kind(rel) {
            b.keys.insert((Cat::Class, oid), ObjectKey::new(kind, &rel.schema, &rel.name));
        }
    }
    for (&seq, &(table, _, identity)) in owned_sequences {
        if identity && let Some(key) = b.keys.get(&(Cat::Class, table)).cloned() {
            b.keys.insert((Cat::Class, seq), key);
        }
    }
    rel_oids
}

/// Tables, views, materialized views and sequences (identity sequences are part of their table);
/// a sequence owned by a column gets its `OWNED BY` as an object of its own.
fn add_relations(b: &mut Builder, data: &RelationData) -> Result<(), ObjectsError> {
    let (relations, identity_of) = (data.relations, &data.identity_of);
    let rel_oids = add_relation_keys(b, data);
    let mut ownerships: Vec<SchemaObject> = Vec::new();
    for &oid in &rel_oids {
        let rel = &relations[&oid];
        let key = b.keys[&(Cat::Class, oid)].clone();
        let name_sql = rel.sql();
        let cols = data.columns_of(oid);
        let plain: Vec<Column> = cols.iter().map(|c| c.column.clone()).collect();
        let parents: Vec<&RawRelation> =
            rel.parents.iter().filter_map(|p| relations.get(p)).collect();
        let mut options = ddl::options_list(&rel.options, "");
        options.extend(ddl::options_list(&rel.toast_options, "toast."));
        let access_method = rel.access_method.clone().filter(|am| am != "heap");
        let mut table = None;
        let (ddl, info) = match rel.kind.as_str() {
            "r" | "p" => {
                table_ddl(data, oid, rel, &name_sql, &plain, &parents, options, access_method)
            }
            "v" | "m" => {
                let materialized = rel.kind == "m";
                let ddl = ddl::create_view(
                    &name_sql,
                    materialized,
                    access_method.as_deref().filter(|_| materialized),
                    &rel.options,
                    rel.view_definition.as_deref().unwrap_or_default(),
                    &plain,
                );
                let info = materialized.then(|| TableInfo {
                    columns_for_copy: plain.iter().map(|c| c.name.clone()).collect(),
                    estimated_rows: rel.estimated_rows,
                    bytes: rel.bytes,
                    unlogged: false,
                    replica_identity: rel.replica_identity.clone(),
                    matview: true,
                    populated: rel.populated,
                    ..TableInfo::default()
                });
                (ddl, info)
            }
            _ => {
                let params = rel.sequence.clone().unwrap_or_default();
                if let Some(own) = sequence_ownership(b, data, oid, rel, &name_sql, &key) {
                    table = own.table.clone();
                    ownerships.push(own);
                }
                (vec![ddl::create_sequence(&name_sql, rel.persistence == "u", &params)], None)
            }
        };
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.table = table;
        o.table_info = info;
        o.owner = Some(rel.owner.clone());
        o.acl = Some(rel.acl.clone());
        o.default_acl = rel.default_acl.clone();
        for c in cols {
            if let Some(acl) = &c.acl {
                let acl = parse_acl(Some(acl.clone()))?;
                if !acl.is_empty() {
                    o.column_acls.push(ColumnAcl { column: c.column.name.clone(), acl });
                }
            }
        }
        for p in &parents {
            if let Some(k) = b.keys.get(&(Cat::Class, p.oid)) {
                o.depends_on.insert(k.clone());
            }
        }
        let mut identity_seqs: Vec<&RawRelation> = identity_of
            .get(&oid)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|(seq, _)| relations.get(seq))
            .collect();
        identity_seqs.sort_by_key(|s| &s.name);
        for s in &identity_seqs {
            o.sequence_acls.push(SequenceAcl {
                sequence: s.sql(),
                acl: s.acl.clone(),
                default_acl: s.default_acl.clone(),
            });
        }
        let i = b.push(o);
        for s in &identity_seqs {
            let target = format!("SEQUENCE {}", s.sql());
            b.comments.insert((Cat::Class, s.oid, 0), CommentTarget::Sub(i, target));
        }
        b.comments.insert((Cat::Class, oid, 0), CommentTarget::Object(i));
        for c in cols {
            let target = format!("COLUMN {name_sql}.{}", ident(&c.column.name));
            b.comments.insert((Cat::Class, oid, c.column.attnum), CommentTarget::Sub(i, target));
            if let Some(attrdef) = c.attrdef {
                b.keys.insert((Cat::AttrDef, attrdef), key.clone());
            }
        }
    }
    for o in ownerships {
        b.push(o);
    }
    Ok(())
}

/// A table's DDL and what the copy needs to know about it.
#[allow(clippy::too_many_arguments)]
fn table_ddl(
    data: &RelationData,
    oid: u32,
    rel: &RawRelation,
    name_sql: &str,
    plain: &[Column],
    parents: &[&RawRelation],
    options: Vec<String>,
    access_method: Option<String>,
) -> (Vec<String>, Option<TableInfo>) {
    let checks = data
        .constraints_of_rel(oid)
        .iter()
        .filter(|c| c.kind == "c" && !data.calls_function.contains(&c.oid))
        .filter(|c| c.validated && (c.local || rel.is_partition))
        .map(|c| (c.name.clone(), c.definition.clone()))
        .collect();
    let mut identity: Vec<(i32, String, SequenceParams)> = Vec::new();
    let mut identity_sequences = Vec::new();
    for &(seq, attnum) in data.identity_of.get(&oid).map(Vec::as_slice).unwrap_or_default() {
        if let Some(s) = data.relations.get(&seq)
            && let Some(params) = &s.sequence
        {
            let mut params = params.clone();
            // (On 13 and 14 an unlogged table's identity sequence is logged, the
            // only kind: said so for a target of 15 or later, where it would follow
            // the table; the planner leaves it out for an older target.)
            if s.persistence != rel.persistence {
                params.persistence = Some(if s.persistence == "u" { "UNLOGGED" } else { "LOGGED" });
            }
            identity.push((attnum, s.sql(), params));
            if let Some(c) = plain.iter().find(|c| c.attnum == attnum) {
                identity_sequences.push(IdentitySequence {
                    column: c.name.clone(),
                    schema: s.schema.clone(),
                    name: s.name.clone(),
                });
            }
        }
    }
    identity_sequences.sort_by(|a, b| a.column.cmp(&b.column));
    let partition_parent = parents.first().filter(|_| rel.is_partition);
    let parent_columns = if rel.is_partition {
        Vec::new()
    } else {
        parents
            .iter()
            .flat_map(|p| data.columns_of(p.oid))
            .map(|c| (c.column.name.clone(), c.column.default.is_some(), c.column.not_null))
            .collect()
    };
    let spec = ddl::TableSpec {
        name_sql: name_sql.to_string(),
        unlogged: rel.persistence == "u",
        columns: plain,
        identity,
        checks,
        inherits: if rel.is_partition {
            Vec::new()
        } else {
            parents.iter().map(|p| p.sql()).collect()
        },
        parent_columns,
        partition_key: rel.partition_key.clone(),
        partition: partition_parent.map(|p| (p.sql(), rel.bound.clone().unwrap_or_default())),
        access_method,
        options,
        replica_identity: rel.replica_identity.clone(),
        row_security: rel.row_security,
        force_row_security: rel.force_row_security,
        of_type: rel.of_type.clone(),
    };
    let primary_key_columns =
        data.constraints_of_rel(oid).iter().find(|c| c.kind == "p").map(|c| {
            c.key
                .iter()
                .filter_map(|&n| plain.iter().find(|col| col.attnum == i32::from(n)))
                .map(|col| col.name.clone())
                .collect::<Vec<_>>()
        });
    let info = TableInfo {
        columns_for_copy: plain
            .iter()
            .filter(|c| c.generated.is_empty())
            .map(|c| c.name.clone())
            .collect(),
        generated_columns: plain
            .iter()
            .filter(|c| !c.generated.is_empty())
            .map(|c| c.name.clone())
            .collect(),
        estimated_rows: rel.estimated_rows,
        bytes: rel.bytes,
        unlogged: rel.persistence == "u",
        partitioned: rel.kind == "p",
        partition_of: partition_parent.map(|p| (p.schema.clone(), p.name.clone())),
        inherits: if rel.is_partition {
            Vec::new()
        } else {
            parents.iter().map(|p| (p.schema.clone(), p.name.clone())).collect()
        },
        has_primary_key: primary_key_columns.is_some(),
        primary_key_columns: primary_key_columns.unwrap_or_default(),
        replica_identity: rel.replica_identity.clone(),
        identity_sequences,
        matview: false,
        populated: true,
    };
    (ddl::create_table(&spec), Some(info))
}

/// The `ALTER SEQUENCE ... OWNED BY` of a sequence owned by a column.
fn sequence_ownership(
    b: &Builder,
    data: &RelationData,
    oid: u32,
    rel: &RawRelation,
    name_sql: &str,
    key: &ObjectKey,
) -> Option<SchemaObject> {
    if let Some(&(t, attnum, _)) = data.owned_sequences.get(&oid)
        && let Some(owner) = data.relations.get(&t)
        && let Some(col) = data.columns_of(t).iter().find(|c| c.column.attnum == attnum)
    {
        let own_key = ObjectKey::new(ObjectKind::SequenceOwnership, &rel.schema, &rel.name);
        let mut own = SchemaObject::new(
            own_key,
            vec![format!(
                "ALTER SEQUENCE {name_sql} OWNED BY {}.{}",
                owner.sql(),
                ident(&col.column.name)
            )],
        );
        own.table = Some((owner.schema.clone(), owner.name.clone()));
        own.depends_on.insert(key.clone());
        if let Some(k) = b.keys.get(&(Cat::Class, t)) {
            own.depends_on.insert(k.clone());
        }
        return Some(own);
    }
    None
}

/// A relation object's key and index.
fn table_of(b: &Builder, relid: u32) -> Option<(ObjectKey, usize)> {
    let key = b.keys.get(&(Cat::Class, relid))?;
    let &i = b.index.get(key)?;
    matches!(key.kind, ObjectKind::Table | ObjectKind::View | ObjectKind::MaterializedView)
        .then(|| (key.clone(), i))
}

/// Check constraints and foreign keys (primary keys, unique and exclusion constraints go with
/// their indexes, [`add_indexes`]); returns the partitions' copies, for
/// [`map_child_constraints`].
fn add_table_constraints(b: &mut Builder, data: &RelationData) -> Vec<u32> {
    let mut child_constraints: Vec<u32> = Vec::new();
    for &coid in &data.constraint_oids {
        let c = &data.constraints[&coid];
        if c.relid == 0 {
            continue;
        }
        let Some((table_key, table_index)) = table_of(b, c.relid) else { continue };
        let rel = &data.relations[&c.relid];
        let separate = match c.kind.as_str() {
            "c" => c.local && (!c.validated || data.calls_function.contains(&coid)),
            "f" => c.parent == 0,
            _ => continue,
        };
        if c.parent != 0 {
            child_constraints.push(coid);
            continue;
        }
        if !separate {
            b.keys.insert((Cat::Constraint, coid), table_key);
            if c.validated && (c.local || rel.is_partition) {
                let target = format!("CONSTRAINT {} ON {}", ident(&c.name), rel.sql());
                b.comments
                    .insert((Cat::Constraint, coid, 0), CommentTarget::Sub(table_index, target));
            }
            continue;
        }
        let (kind, only) = if c.kind == "f" {
            (ObjectKind::ForeignKey, if rel.kind == "p" { "" } else { "ONLY " })
        } else {
            (ObjectKind::Constraint, "")
        };
        let key = table_bound_key(kind, rel, &c.name);
        let mut o = SchemaObject::new(
            key.clone(),
            vec![format!(
                "ALTER TABLE {only}{} ADD CONSTRAINT {} {}",
                rel.sql(),
                ident(&c.name),
                c.definition
            )],
        );
        o.sql_name = format!("{} ON {}", ident(&c.name), rel.sql());
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        b.keys.insert((Cat::Constraint, coid), key);
        b.comments.insert((Cat::Constraint, coid, 0), CommentTarget::Object(i));
    }
    child_constraints
}

/// Indexes, and the constraints they back; a partitioned index carries its partitions'.
fn add_indexes(
    b: &mut Builder,
    index_rows: &[Row],
    relations: &HashMap<u32, RawRelation>,
    constraints: &HashMap<u32, RawConstraint>,
) {
    let mut indexes: HashMap<u32, RawIndex> = HashMap::new();
    for row in index_rows {
        let idx = RawIndex {
            oid: row.get(0),
            relid: row.get(1),
            name: row.get(2),
            definition: row.get(3),
            clustered: row.get(4),
            replica_identity: row.get(5),
            parent: row.get(6),
            constraint: row.get(7),
            stat_targets: row.get(8),
        };
        if table_of(b, idx.relid).is_some() {
            indexes.insert(idx.oid, idx);
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for idx in indexes.values() {
        if indexes.contains_key(&idx.parent) {
            children.entry(idx.parent).or_default().push(idx.oid);
        }
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| indexes[a].name.cmp(&indexes[b].name));
    }
    let mut roots: Vec<u32> =
        indexes.values().filter(|i| !indexes.contains_key(&i.parent)).map(|i| i.oid).collect();
    roots.sort_unstable();
    let tree = IndexTree { indexes: &indexes, children: &children, relations, constraints };
    for root in roots {
        let idx = &indexes[&root];
        let rel = &relations[&idx.relid];
        let Some((table_key, _)) = table_of(b, idx.relid) else { continue };
        let constraint = constraints.get(&idx.constraint);
        let (key, sql_type, sql_name) = match constraint {
            Some(con) => (
                table_bound_key(ObjectKind::Constraint, rel, &con.name),
                "CONSTRAINT",
                format!("{} ON {}", ident(&con.name), rel.sql()),
            ),
            None => (
                ObjectKey::new(ObjectKind::Index, &rel.schema, &idx.name),
                "INDEX",
                qualified_ident(&rel.schema, &idx.name),
            ),
        };
        let mut ddl = Vec::new();
        tree.emit(root, &mut ddl);
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.sql_type = sql_type.into();
        o.sql_name = sql_name;
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        let mut all = Vec::new();
        tree.descendants(root, &mut all);
        for oid in all {
            let member = &indexes[&oid];
            let member_rel = &relations[&member.relid];
            b.keys.insert((Cat::Class, oid), key.clone());
            let con = constraints.get(&member.constraint);
            if let Some(con) = con {
                b.keys.insert((Cat::Constraint, con.oid), key.clone());
            }
            let target = if oid == root {
                CommentTarget::Object(i)
            } else if let Some(con) = con {
                CommentTarget::Sub(
                    i,
                    format!("CONSTRAINT {} ON {}", ident(&con.name), member_rel.sql()),
                )
            } else {
                CommentTarget::Sub(i, format!("INDEX {}", tree.index_sql(member)))
            };
            match con {
                Some(con) => {
                    // The index behind the constraint may have a comment of its own.
                    let index = format!("INDEX {}", tree.index_sql(member));
                    b.comments.insert((Cat::Class, oid, 0), CommentTarget::Sub(i, index));
                    b.comments.insert((Cat::Constraint, con.oid, 0), target)
                }
                None => b.comments.insert((Cat::Class, oid, 0), target),
            };
        }
    }
}

/// Partitions' copies of a foreign key (or of a constraint whose index is not read) map onto the
/// constraint they were copied from.
fn map_child_constraints(
    b: &mut Builder,
    constraints: &HashMap<u32, RawConstraint>,
    child_constraints: Vec<u32>,
) {
    for coid in child_constraints {
        let mut top = coid;
        let mut seen = HashSet::new();
        while let Some(c) = constraints.get(&top) {
            if c.parent == 0 || !seen.insert(top) {
                break;
            }
            top = c.parent;
        }
        if let Some(key) = b.keys.get(&(Cat::Constraint, top)).cloned() {
            b.keys.insert((Cat::Constraint, coid), key);
        }
    }
}

/// Triggers; partitions' clones whose enabled state differs from their parent's are part of the
/// parent's.
fn add_triggers(b: &mut Builder, trigger_rows: &[Row], relations: &HashMap<u32, RawRelation>) {
    struct RawTrigger {
        oid: u32,
        relid: u32,
        name: String,
        definition: String,
        enabled: String,
        parent: u32,
    }
    let mut triggers: Vec<RawTrigger> = trigger_rows
        .iter()
        .map(|row| RawTrigger {
            oid: row.get(0),
            relid: row.get(1),
            name: row.get(2),
            definition: row.get(3),
            enabled: row.get(4),
            parent: row.get(5),
        })
        .filter(|t| table_of(b, t.relid).is_some())
        .collect();
    triggers.sort_by(|a, b| {
        (&relations[&a.relid].name, &a.name).cmp(&(&relations[&b.relid].name, &b.name))
    });
    let mut trigger_objects: HashMap<(u32, String), usize> = HashMap::new();
    for t in triggers.iter().filter(|t| t.parent == 0) {
        let rel = &relations[&t.relid];
        let Some((table_key, _)) = table_of(b, t.relid) else { continue };
        let key = table_bound_key(ObjectKind::Trigger, rel, &t.name);
        let mut ddl = vec![t.definition.clone()];
        ddl.extend(trigger_state(&rel.sql(), &t.name, &t.enabled, false));
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.sql_name = format!("{} ON {}", ident(&t.name), rel.sql());
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        trigger_objects.insert((t.relid, t.name.clone()), i);
        b.keys.insert((Cat::Trigger, t.oid), key);
        b.comments.insert((Cat::Trigger, t.oid, 0), CommentTarget::Object(i));
    }
    for t in triggers.iter().filter(|t| t.parent != 0) {
        // The trigger it was cloned from has the same name on a partition ancestor.
        let mut relid = t.relid;
        let mut found = None;
        for _ in 0..64 {
            let Some(rel) = relations.get(&relid) else { break };
            let Some(&parent) = rel.parents.first().filter(|_| rel.is_partition) else { break };
            if let Some(&i) = trigger_objects.get(&(parent, t.name.clone())) {
                found = Some(i);
                break;
            }
            relid = parent;
        }
        if let Some(i) = found {
            let rel = &relations[&t.relid];
            b.objects[i].ddl.extend(trigger_state(&rel.sql(), &t.name, &t.enabled, true));
            let key = b.objects[i].key.clone();
            b.keys.insert((Cat::Trigger, t.oid), key);
        }
    }
}

/// Rules (a view's _RETURN rule is the view).
fn add_rules(b: &mut Builder, rule_rows: &[Row], relations: &HashMap<u32, RawRelation>) {
    for row in rule_rows {
        let oid: u32 = row.get(0);
        let relid: u32 = row.get(1);
        let name: String = row.get(2);
        let Some((table_key, _)) = table_of(b, relid) else { continue };
        let Some(definition): Option<String> = row.get(3) else {
            b.keys.insert((Cat::Rewrite, oid), table_key);
            continue;
        };
        let enabled: String = row.get(4);
        let rel = &relations[&relid];
        let key = table_bound_key(ObjectKind::Rule, rel, &name);
        let mut ddl = vec![definition.trim_end().trim_end_matches(';').to_string()];
        ddl.extend(rule_state(&rel.sql(), &name, &enabled));
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.sql_name = format!("{} ON {}", ident(&name), rel.sql());
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        b.keys.insert((Cat::Rewrite, oid), key);
        b.comments.insert((Cat::Rewrite, oid, 0), CommentTarget::Object(i));
    }
}

/// Policies.
fn add_policies(b: &mut Builder, policy_rows: &[Row], relations: &HashMap<u32, RawRelation>) {
    for row in policy_rows {
        let oid: u32 = row.get(0);
        let relid: u32 = row.get(1);
        let Some((table_key, _)) = table_of(b, relid) else { continue };
        let rel = &relations[&relid];
        let name: String = row.get(2);
        let command = match row.get::<_, &str>(3) {
            "r" => "SELECT",
            "a" => "INSERT",
            "w" => "UPDATE",
            "d" => "DELETE",
            _ => "ALL",
        };
        let policy = PolicyDef {
            name: name.clone(),
            table_sql: rel.sql(),
            permissive: row.get(4),
            command: command.into(),
            roles: row.get(5),
            using: row.get(6),
            with_check: row.get(7),
        };
        let key = table_bound_key(ObjectKind::Policy, rel, &name);
        let mut o = SchemaObject::new(key.clone(), vec![policy.render(&|r| Some(r.to_string()))]);
        o.policy = Some(policy);
        o.sql_name = format!("{} ON {}", ident(&name), rel.sql());
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        b.keys.insert((Cat::Policy, oid), key);
        b.comments.insert((Cat::Policy, oid, 0), CommentTarget::Object(i));
    }
}

/// Extended statistics.
fn add_statistics(b: &mut Builder, statistics_rows: &[Row], relations: &HashMap<u32, RawRelation>) {
    for row in statistics_rows {
        let oid: u32 = row.get(0);
        if b.is_member(Cat::StatisticExt, oid) {
            continue;
        }
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let relid: u32 = row.get(3);
        let Some((table_key, _)) = table_of(b, relid) else { continue };
        let rel = &relations[&relid];
        let name_sql = qualified_ident(&schema, &name);
        let mut ddl = vec![row.get::<_, String>(4)];
        let target: i32 = row.get(6);
        if target >= 0 {
            ddl.push(format!("ALTER STATISTICS {name_sql} SET STATISTICS {target}"));
        }
        let key = ObjectKey::new(ObjectKind::Statistics, &schema, &name);
        let mut o = SchemaObject::new(key.clone(), ddl);
        o.sql_name = name_sql;
        o.owner = Some(row.get(5));
        o.table = Some((rel.schema.clone(), rel.name.clone()));
        o.depends_on.insert(table_key);
        let i = b.push(o);
        b.keys.insert((Cat::StatisticExt, oid), key);
        b.comments.insert((Cat::StatisticExt, oid, 0), CommentTarget::Object(i));
    }
}

/// Row types belong to their relation, multiranges to their range, arrays to their element;
/// internal parts to what they are part of.
fn map_type_links(
    b: &mut Builder,
    type_links: &[(u32, u32, u32, u32)],
    internal: &HashMap<(Cat, u32), (Cat, u32)>,
) {
    for &(oid, relid, _, _) in type_links {
        if relid != 0
            && !b.keys.contains_key(&(Cat::Type, oid))
            && let Some(key) = b.keys.get(&(Cat::Class, relid)).cloned()
        {
            b.keys.insert((Cat::Type, oid), key);
        }
    }
    for &(oid, _, _, multirange) in type_links {
        if multirange != 0
            && let Some(key) = b.keys.get(&(Cat::Type, oid)).cloned()
        {
            b.keys.entry((Cat::Type, multirange)).or_insert(key);
        }
    }
    for &(oid, _, array, _) in type_links {
        if array != 0
            && let Some(key) = b.lookup(Cat::Type, oid)
        {
            b.keys.entry((Cat::Type, array)).or_insert(key);
        }
    }
    for (&(cat, oid), &(ref_cat, ref_oid)) in internal {
        if let Some(key) = b.lookup(ref_cat, ref_oid) {
            b.keys.entry((cat, oid)).or_insert(key);
        }
    }
}

/// Comments, onto the objects (or parts of objects) they are about.
fn attach_comments(b: &mut Builder, comment_rows: &[Row]) {
    for row in comment_rows {
        let cat = Cat::from_name(row.get(0));
        let oid: u32 = row.get(1);
        let sub: i32 = row.get(2);
        let text: String = row.get(3);
        match b.comments.get(&(cat, oid, sub)) {
            Some(CommentTarget::Object(i)) => b.objects[*i].comment = Some(text),
            Some(CommentTarget::Sub(i, target)) => {
                b.objects[*i].sub_comments.push(SubComment { target: target.clone(), text });
            }
            None => {}
        }
    }
}

/// Dependencies, from `pg_depend` (extension membership aside).
fn add_dependencies(
    b: &mut Builder,
    depends: &[RawDepend],
    owned_sequences: &HashMap<u32, (u32, i32, bool)>,
    relations: &HashMap<u32, RawRelation>,
) {
    for d in depends.iter().filter(|d| d.kind != "e") {
        if d.oid < FIRST_NORMAL_OID || b.is_member(d.cat, d.oid) {
            continue;
        }
        let owned_by = d.cat == Cat::Class
            && d.kind == "a"
            && owned_sequences.get(&d.oid).is_some_and(|s| s.0 == d.ref_oid && !s.2);
        let from = if owned_by {
            relations
                .get(&d.oid)
                .map(|s| ObjectKey::new(ObjectKind::SequenceOwnership, &s.schema, &s.name))
        } else {
            b.lookup(d.cat, d.oid)
        };
        let (Some(from), Some(to)) = (from, b.lookup(d.ref_cat, d.ref_oid)) else { continue };
        if from != to
            && let Some(&i) = b.index.get(&from)
        {
            b.objects[i].depends_on.insert(to);
        }
    }
}

/// The objects, each depending on its schema and only on objects read, sorted by key; with the
/// catalog ids covered.
fn finish(b: Builder, schema_keys: &HashMap<String, ObjectKey>) -> Schema {
    let mut objects = b.objects;
    let known: BTreeSet<ObjectKey> = objects.iter().map(|o| o.key.clone()).collect();
    for o in &mut objects {
        if let Some(schema) = schema_keys.get(&o.key.schema) {
            o.depends_on.insert(schema.clone());
        }
        let own = o.key.clone();
        o.depends_on.retain(|k| *k != own && known.contains(k));
        o.sub_comments.sort();
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let covered = b
        .keys
        .iter()
        .filter(|(_, key)| !key.is_dumped())
        .map(|(&(cat, oid), _)| (cat.class_oid(), oid))
        .collect();
    Schema { objects, covered }
}

/// Check constraints that call a function of the database's own: created apart, after the
/// table and the function (as pg_dump does), since the function may take the table's row type
/// (a cycle: table → constraint → function → table).
fn checks_calling_functions(
    b: &Builder,
    depends: &[RawDepend],
    constraints: &HashMap<u32, RawConstraint>,
) -> BTreeSet<u32> {
    depends
        .iter()
        .filter(|d| d.cat == Cat::Constraint && d.ref_cat == Cat::Proc)
        .filter(|d| d.ref_oid >= FIRST_NORMAL_OID && !b.is_member(Cat::Proc, d.ref_oid))
        .map(|d| d.oid)
        .filter(|oid| constraints.get(oid).is_some_and(|c| c.kind == "c" && c.relid != 0))
        .collect()
}

/// The objects whose DDL comes from pg_dump (see [`dumped_sql`]), without DDL yet
/// ([`super::attach_dump`] fills it in): keyed so that `pg_depend` maps onto them like any
/// other object. A base type's array stands for the type; an operator class's or family's
/// members (`pg_amop`, `pg_amproc`) for their class or family.
fn add_dumped(b: &mut Builder, rows: &[Row], depends: &[RawDepend]) {
    for row in rows {
        let cat = Cat::from_name(row.get(0));
        let oid: u32 = row.get(1);
        // NULL for an object dropped while this runs (outside a snapshot).
        let (Some(kind_word), Some(identity)) =
            (row.get::<_, Option<String>>(2), row.get::<_, Option<String>>(4))
        else {
            continue;
        };
        let schema: String = row.get(3);
        let kind = if kind_word == "event trigger" {
            ObjectKind::EventTrigger
        } else {
            ObjectKind::Dumped
        };
        let key = ObjectKey::new(kind, &schema, format!("{kind_word} {identity}"));
        let mut o = SchemaObject::new(key.clone(), vec![]);
        // Publications (and the tables and schemas they publish) after the data, as pg_dump.
        if kind_word.starts_with("publication") {
            o.section = super::Section::PostData;
        }
        o.catalog_id = Some((cat.class_oid(), oid));
        o.dump_tag = row.get(5);
        b.push(o);
        b.keys.insert((cat, oid), key.clone());
        let array: u32 = row.get(6);
        if array != 0 {
            b.keys.insert((Cat::Type, array), key);
        }
    }
    for d in depends {
        if matches!(d.cat, Cat::Amop | Cat::Amproc)
            && matches!(d.ref_cat, Cat::OpClass | Cat::OpFamily)
            && matches!(d.kind.as_str(), "a" | "i")
            && let Some(key) = b.keys.get(&(d.ref_cat, d.ref_oid)).cloned()
        {
            b.keys.entry((d.cat, d.oid)).or_insert(key);
        }
    }
}
