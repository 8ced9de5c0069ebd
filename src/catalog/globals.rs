//! What a server holds outside its schemas: each role's definition (attributes, the kind of
//! password verifier it has, its settings), the memberships between roles, the database's own
//! properties (owner, connection limit, comment, grants, `ALTER DATABASE ... SET`), and the
//! server parameters that change how applications behave.
//!
//! Password verifiers themselves are never read here: only their kind, so that no catalog,
//! plan or state ever holds one. The step that creates a role reads its verifier as it runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::{CatalogError, Role, ctx};

/// Server parameters compared between source and target: what applications see by default
/// (dates, times, numbers, text search, name lookup), and what the extensions need loaded.
pub const APPLICATION_SETTINGS: &[&str] = &[
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "default_text_search_config",
    "search_path",
    "standard_conforming_strings",
    "bytea_output",
    "default_transaction_isolation",
    "xmloption",
    "extra_float_digits",
    "shared_preload_libraries",
];

/// The kind of password verifier a role has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordKind {
    /// The connecting role may not read `pg_authid` (not a superuser, as on managed services).
    #[default]
    Unknown,
    /// No password.
    None,
    /// A SCRAM-SHA-256 verifier: carried unchanged, it keeps working whatever the role's name.
    Scram,
    /// An MD5 hash (salted with the role's name).
    Md5,
}

/// A role's membership in another (`GRANT role TO member`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Membership {
    /// The role granted.
    pub role: String,
    /// The role it is granted to.
    pub member: String,
    /// WITH ADMIN OPTION.
    pub admin: bool,
    /// WITH INHERIT (PostgreSQL 16 and later; before, the member's INHERIT attribute decides).
    pub inherit: Option<bool>,
    /// WITH SET (PostgreSQL 16 and later).
    pub set: Option<bool>,
}

/// The database's own properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseProps {
    /// Owner.
    pub owner: String,
    /// Whether the owner is a superuser (the bootstrap user, usually: not an application's).
    pub owner_is_superuser: bool,
    /// `datconnlimit` (-1: none).
    pub connection_limit: i32,
    /// `COMMENT ON DATABASE`.
    pub comment: Option<String>,
    /// Effective ACL items (the default's when `datacl` is NULL), in order.
    pub acl: Vec<String>,
    /// `ALTER DATABASE ... SET` (for every role), name → value as stored.
    pub settings: Vec<(String, String)>,
}

/// Fills each role's definition, and reads memberships, database properties and application
/// settings.
pub(super) async fn read(cat: &mut super::Catalog, client: &Client) -> Result<(), CatalogError> {
    let version = cat.server.version_num;
    read_role_details(client, version, &mut cat.roles).await?;
    cat.memberships = read_memberships(client, version).await?;
    cat.database = read_database(client).await?;
    let rows = client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1)",
            &[&APPLICATION_SETTINGS],
        )
        .await
        .map_err(ctx("application settings"))?;
    for r in rows {
        cat.application_settings.insert(r.get(0), r.get(1));
    }
    cat.parameters = client
        .query("SELECT name, context FROM pg_settings", &[])
        .await
        .map_err(ctx("settings"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    cat.client_backends = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await
        .map_err(ctx("sessions"))?
        .get(0);
    Ok(())
}

/// Attributes, settings, password kind, and whether the connecting role may grant membership in
/// each role.
async fn read_role_details(
    client: &Client,
    version: i32,
    roles: &mut [Role],
) -> Result<(), CatalogError> {
    // Before 16, CREATEROLE may grant membership in any role but a superuser; from 16, only
    // ADMIN OPTION (which a CREATEROLE role has on the roles it created) allows it.
    let grantable = if version >= 160000 {
        "me.rolsuper OR pg_has_role(me.oid, r.oid, 'MEMBER WITH ADMIN OPTION')"
    } else {
        "me.rolsuper OR (me.rolcreaterole AND NOT r.rolsuper) \
         OR pg_has_role(me.oid, r.oid, 'MEMBER WITH ADMIN OPTION')"
    };
    let sql = format!(
        "SELECT r.rolname::text, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, \
                r.rolconnlimit, \
                CASE WHEN r.rolvaliduntil IS NULL THEN NULL \
                     WHEN isfinite(r.rolvaliduntil) THEN to_char(r.rolvaliduntil AT TIME ZONE 'UTC', \
                                                        'YYYY-MM-DD HH24:MI:SS.US') || '+00' \
                     ELSE r.rolvaliduntil::text END, \
                {grantable}, r.oid < 16384, \
                (SELECT s.setconfig FROM pg_db_role_setting s \
                  WHERE s.setrole = r.oid AND s.setdatabase = 0), \
                (SELECT s.setconfig FROM pg_db_role_setting s, pg_database d \
                  WHERE s.setrole = r.oid AND s.setdatabase = d.oid \
                    AND d.datname = current_database()) \
         FROM pg_roles r, pg_roles me WHERE me.rolname = current_user"
    );
    let rows = client.query(&sql, &[]).await.map_err(ctx("role definitions"))?;
    let mut by_name: BTreeMap<String, usize> =
        roles.iter().enumerate().map(|(i, r)| (r.name.clone(), i)).collect();
    for row in rows {
        let Some(&i) = by_name.get(&row.get::<_, String>(0)) else { continue };
        let r = &mut roles[i];
        r.inherit = row.get(1);
        r.createrole = row.get(2);
        r.createdb = row.get(3);
        r.bypassrls = row.get(4);
        r.connection_limit = row.get(5);
        r.valid_until = row.get(6);
        r.grantable = row.get(7);
        r.builtin = row.get(8);
        r.settings = split_settings(row.get(9));
        r.settings_here = split_settings(row.get(10));
    }
    // Which kind of verifier each role has: pg_authid is readable by superusers only.
    client.batch_execute("SAVEPOINT authid").await.map_err(ctx("savepoint"))?;
    match client
        .query(
            "SELECT rolname::text, CASE WHEN rolpassword IS NULL THEN 'none' \
                    WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' \
                    WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE 'unknown' END \
             FROM pg_authid",
            &[],
        )
        .await
    {
        Ok(rows) => {
            for row in rows {
                if let Some(i) = by_name.remove(&row.get::<_, String>(0)) {
                    roles[i].password = match row.get::<_, &str>(1) {
                        "none" => PasswordKind::None,
                        "scram" => PasswordKind::Scram,
                        "md5" => PasswordKind::Md5,
                        _ => PasswordKind::Unknown,
                    };
                }
            }
        }
        Err(_) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT authid").await.map_err(ctx("savepoint"))?
        }
    }
    Ok(())
}

/// `name=value` entries of `setconfig`, split at the first `=`.
fn split_settings(config: Option<Vec<String>>) -> Vec<(String, String)> {
    config
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(n, v)| (n.to_string(), v.to_string())))
        .collect()
}

async fn read_memberships(client: &Client, version: i32) -> Result<Vec<Membership>, CatalogError> {
    let options = if version >= 160000 {
        "bool_or(m.inherit_option), bool_or(m.set_option)"
    } else {
        "NULL::bool, NULL::bool"
    };
    // From 16, one membership may be granted several times by different grantors: one each.
    let sql = format!(
        "SELECT g.rolname::text, u.rolname::text, bool_or(m.admin_option), {options} \
         FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
         JOIN pg_roles u ON u.oid = m.member GROUP BY 1, 2 ORDER BY 1, 2"
    );
    Ok(client
        .query(&sql, &[])
        .await
        .map_err(ctx("role memberships"))?
        .iter()
        .map(|r| Membership {
            role: r.get(0),
            member: r.get(1),
            admin: r.get(2),
            inherit: r.get(3),
            set: r.get(4),
        })
        .collect())
}

async fn read_database(client: &Client) -> Result<DatabaseProps, CatalogError> {
    let r = client
        .query_one(
            "SELECT o.rolname::text, o.rolsuper, d.datconnlimit, \
                    shobj_description(d.oid, 'pg_database'), \
                    coalesce(d.datacl, acldefault('d', d.datdba))::text[], \
                    (SELECT s.setconfig FROM pg_db_role_setting s \
                      WHERE s.setdatabase = d.oid AND s.setrole = 0) \
             FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(ctx("database"))?;
    Ok(DatabaseProps {
        owner: r.get(0),
        owner_is_superuser: r.get(1),
        connection_limit: r.get(2),
        comment: r.get(3),
        acl: r.get(4),
        settings: split_settings(r.get(5)),
    })
}

/// A database of the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    /// Name.
    pub name: String,
    /// Encoding (`UTF8`).
    pub encoding: String,
    /// `datcollate`.
    pub collate: String,
    /// `datctype`.
    pub ctype: String,
}

/// The server's databases that take connections and are not templates, by name.
pub async fn read_databases(client: &Client) -> Result<Vec<DatabaseInfo>, CatalogError> {
    Ok(client
        .query(
            "SELECT datname::text, pg_encoding_to_char(encoding)::text, datcollate::text, \
                    datctype::text \
             FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(ctx("databases"))?
        .iter()
        .map(|r| DatabaseInfo {
            name: r.get(0),
            encoding: r.get(1),
            collate: r.get(2),
            ctype: r.get(3),
        })
        .collect())
}

/// What the server has for replication, slots and WAL senders, and for sessions (a migration of
/// several databases streams each with a slot and a WAL sender of its own, and loads them with
/// sessions of their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationCapacity {
    /// Sessions a role without special rights may open: `max_connections` less those reserved
    /// (`superuser_reserved_connections`, `reserved_connections`).
    pub open_connections: i64,
    /// Client sessions now.
    pub client_backends: i64,
    /// `max_replication_slots`.
    pub max_slots: i64,
    /// `max_wal_senders`.
    pub max_senders: i64,
    /// Every slot of the server, and whether a session streams from it now.
    pub slots: Vec<(String, bool)>,
    /// WAL senders at work now.
    pub active_senders: i64,
}

/// The server's [`ReplicationCapacity`].
pub async fn read_replication_capacity(
    client: &Client,
) -> Result<ReplicationCapacity, CatalogError> {
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8, \
                    current_setting('max_wal_senders')::int8, \
                    (SELECT count(*) FROM pg_stat_replication), \
                    (SELECT sum(CASE name WHEN 'max_connections' THEN setting::int8 \
                                          ELSE -setting::int8 END) \
                     FROM pg_settings WHERE name IN ('max_connections', \
                          'superuser_reserved_connections', 'reserved_connections'))::int8, \
                    (SELECT count(*) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend')",
            &[],
        )
        .await
        .map_err(ctx("replication settings"))?;
    let slots = client
        .query("SELECT slot_name::text, active FROM pg_replication_slots ORDER BY 1", &[])
        .await
        .map_err(ctx("replication slots"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(ReplicationCapacity {
        max_slots: row.get(0),
        max_senders: row.get(1),
        slots,
        active_senders: row.get(2),
        open_connections: row.get(3),
        client_backends: row.get(4),
    })
}
