//! Whether a publication's changes may stream with binary values: the column types of its
//! tables, read from the source, and the pure decision on them.
//!
//! pgoutput sends a value in binary (the type's send function) when the stream asks for it and
//! the type has one; the target reads it with the receive function. That is cheaper on both
//! servers than text (no output and input functions: half the target's `COPY` of a wide row),
//! but only safe where the binary form means the same on both servers: built-in scalar types
//! (fixed since PostgreSQL 7.4), arrays of them, built-in ranges, enums (sent as their label),
//! and domains over any of those. An array of an enum or of a composite, or a composite, carries
//! the *source's* type oids inside the value; an extension's type may change its binary form
//! between versions of the extension: any such column keeps the whole stream in text.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::CatalogError;

/// One column of a published table, its type resolved through domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamColumn {
    /// `schema.table.column`, quoted where needed.
    pub column: String,
    /// Its declared type (a domain stays a domain here: pgoutput names this oid).
    pub type_oid: u32,
    /// The declared type's name, `schema.name` (quoted where needed; whatever the
    /// `search_path`).
    pub type_name: String,
    /// Part of the replica identity's key (primary key or identity index).
    pub key: bool,
    /// The type under every domain.
    pub base: u32,
    /// `typtype` of `base`: `b` base, `c` composite, `e` enum, `r` range, `m` multirange...
    pub typtype: char,
    /// `base` has a binary send function.
    pub has_send: bool,
    /// `typcategory` of `base` (`A`: an array).
    pub category: char,
    /// The element type of an array (0 otherwise), and its `typtype`.
    pub elem: u32,
    /// `typtype` of `elem`.
    pub elem_typtype: char,
    /// `elem` has binary send and receive functions (true when there is no `elem`).
    pub elem_has_send: bool,
}

/// Every column of every table of `publication`.
pub async fn read_stream_columns(
    client: &Client,
    publication: &str,
) -> Result<Vec<StreamColumn>, CatalogError> {
    let rows = client
        .query(
            "WITH RECURSIVE cols AS ( \
                 SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) AS col, \
                        a.atttypid AS typ, a.atttypid AS base, \
                        a.attnum = ANY (coalesce((SELECT (i.indkey::int2[])[0:i.indnkeyatts - 1] \
                            FROM pg_index i \
                            WHERE i.indrelid = c.oid AND CASE c.relreplident \
                                WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident \
                                ELSE false END LIMIT 1), '{}')) AS is_key \
                 FROM pg_publication_tables p \
                 JOIN pg_namespace n ON n.nspname = p.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                                    AND NOT a.attisdropped \
                 WHERE p.pubname = $1 \
               UNION ALL \
                 SELECT cols.col, cols.typ, t.typbasetype, cols.is_key \
                 FROM cols JOIN pg_type t ON t.oid = cols.base AND t.typtype = 'd' \
             ) \
             SELECT cols.col, cols.typ, \
                    (SELECT format('%I.%I', tn.nspname, d.typname) FROM pg_type d \
                       JOIN pg_namespace tn ON tn.oid = d.typnamespace WHERE d.oid = cols.typ), \
                    cols.is_key, t.oid, t.typtype::text, t.typsend <> 0 AND t.typreceive <> 0, \
                    t.typcategory::text, t.typelem, coalesce(e.typtype::text, ''), \
                    coalesce(e.typsend <> 0 AND e.typreceive <> 0, true) \
             FROM cols JOIN pg_type t ON t.oid = cols.base \
             LEFT JOIN pg_type e ON e.oid = t.typelem \
             WHERE t.typtype <> 'd' \
             ORDER BY 1",
            &[&publication],
        )
        .await
        .map_err(super::ctx("the published columns' types"))?;
    let ch = |s: String| s.chars().next().unwrap_or(' ');
    Ok(rows
        .iter()
        .map(|r| StreamColumn {
            column: r.get(0),
            type_oid: r.get(1),
            type_name: r.get(2),
            key: r.get(3),
            base: r.get(4),
            typtype: ch(r.get(5)),
            has_send: r.get(6),
            category: ch(r.get(7)),
            elem: r.get(8),
            elem_typtype: ch(r.get(9)),
            elem_has_send: r.get(10),
        })
        .collect())
}

/// The type (`schema.name`, quoted where needed, as [`StreamColumn::type_name`]) of every column
/// of `tables`, by `schema.table.column` as [`StreamColumn::column`] names it.
pub async fn read_column_types(
    client: &Client,
    tables: &[(String, String)],
) -> Result<HashMap<String, String>, CatalogError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
    let rows = client
        .query(
            "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname), \
                    format('%I.%I', tn.nspname, t.typname) \
             FROM unnest($1::text[], $2::text[]) AS w(nspname, relname) \
             JOIN pg_namespace n ON n.nspname = w.nspname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_namespace tn ON tn.oid = t.typnamespace",
            &[&schemas, &names],
        )
        .await
        .map_err(super::ctx("the target's column types"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The `reg*` types (`regclass`, `regtype`, `regconfig`...): their binary form is the object's
/// oid on the source, which the target would take as is (its text form is the object's name,
/// looked up again).
pub const OID_ALIASES: &[u32] = &[24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191];

/// Oids below this are PostgreSQL's own, the same in every version (`FirstGenbkiObjectId`).
const BUILT_IN: u32 = 10_000;

/// Key types whose binary form pgtransit reads back into text (the keys continuous verification
/// looks up): `bool`, `int8`, `int2`, `int4`, `text`, `oid`, `name`, `bpchar`, `varchar`,
/// `uuid`, `date`, `timestamp`, `timestamptz`, `numeric`.
pub const KEY_TYPES: &[u32] =
    &[16, 20, 21, 23, 25, 26, 19, 1042, 1043, 2950, 1082, 1114, 1184, 1700];

/// For a stream in binary: each published column type's oid, with the built-in type whose
/// binary form its values have (`text` for an enum, whose label is sent). `on_target`: each
/// column's type on the target ([`read_column_types`]), which must be the same. `Err` names the
/// first column that keeps the stream in text, and why.
pub fn binary_types(
    columns: &[StreamColumn],
    on_target: &HashMap<String, String>,
) -> Result<HashMap<u32, u32>, String> {
    let mut types = HashMap::new();
    for c in columns {
        let why = if on_target.get(&c.column).is_some_and(|t| *t != c.type_name) {
            Some("has another type on the target")
        } else if !c.has_send || (c.category == 'A' && !c.elem_has_send) {
            Some("has no binary form")
        } else if OID_ALIASES.contains(&c.base)
            || (c.category == 'A' && OID_ALIASES.contains(&c.elem))
        {
            Some("is sent in binary as a source oid")
        } else if !match c.typtype {
            'e' => true,
            'b' => {
                c.base < BUILT_IN
                    && (c.category != 'A'
                        || (c.elem < BUILT_IN && matches!(c.elem_typtype, 'b' | 'r' | 'm')))
            }
            'r' | 'm' => c.base < BUILT_IN,
            _ => false,
        } {
            Some("has a binary form that is not the same on every server")
        } else if c.key && c.typtype != 'e' && !KEY_TYPES.contains(&c.base) {
            Some("is part of a key pgtransit reads only in text")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("column {} of type {} {why}", c.column, c.type_name));
        }
        types.insert(c.type_oid, if c.typtype == 'e' { 25 } else { c.base });
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(
        name: &str,
        base: u32,
        typtype: char,
        category: char,
        elem: (u32, char),
    ) -> StreamColumn {
        StreamColumn {
            column: format!("public.t.{name}"),
            type_oid: base,
            type_name: name.into(),
            key: false,
            base,
            typtype,
            has_send: true,
            category,
            elem: elem.0,
            elem_typtype: elem.1,
            elem_has_send: true,
        }
    }

    #[test]
    fn built_in_scalars_arrays_ranges_enums_and_domains_stream_in_binary() {
        let mut domain = col("year", 23, 'b', 'N', (0, ' '));
        domain.type_oid = 16_500;
        let mut enum_key = col("mood", 16_600, 'e', 'E', (0, ' '));
        enum_key.key = true;
        let mut int_key = col("id", 20, 'b', 'N', (0, ' '));
        int_key.key = true;
        let columns = [
            int_key,
            col("ts", 1114, 'b', 'D', (0, ' ')),
            col("ints", 1007, 'b', 'A', (23, 'b')),
            col("during", 3912, 'r', 'R', (0, ' ')),
            domain,
            enum_key,
        ];
        let types = binary_types(&columns, &HashMap::new()).unwrap();
        assert_eq!(types[&16_500], 23, "a domain is read as its base type");
        assert_eq!(types[&16_600], 25, "an enum's label comes as text");
        assert_eq!(types[&1007], 1007);
        assert!(
            binary_types(&[col("spans", 3905, 'b', 'A', (3904, 'r'))], &HashMap::new()).is_ok()
        );
    }

    #[test]
    fn values_that_carry_the_sources_oids_or_an_extensions_format_keep_the_stream_in_text() {
        let refused = |c: StreamColumn| binary_types(&[c], &HashMap::new()).unwrap_err();
        assert!(refused(col("moods", 16_601, 'b', 'A', (16_600, 'e'))).contains("moods"));
        assert!(refused(col("pair", 16_700, 'c', 'C', (0, ' '))).contains("not the same"));
        assert!(refused(col("rows", 273, 'b', 'A', (83, 'c'))).contains("not the same"));
        assert!(refused(col("geom", 17_000, 'b', 'U', (0, ' '))).contains("not the same"));
        let mut no_send = col("acl", 1033, 'b', 'U', (0, ' '));
        no_send.has_send = false;
        assert!(refused(no_send).contains("no binary form"));
        let mut interval_key = col("span", 1186, 'b', 'T', (0, ' '));
        interval_key.key = true;
        assert!(refused(interval_key).contains("key"));
        assert!(refused(col("cfg", 3734, 'b', 'N', (0, ' '))).contains("source oid"));
        assert!(refused(col("rels", 2210, 'b', 'A', (2205, 'b'))).contains("source oid"));
        let mut acls = col("acls", 1034, 'b', 'A', (1033, 'b'));
        acls.elem_has_send = false;
        assert!(refused(acls).contains("no binary form"));
        let other = HashMap::from([("public.t.ts".to_string(), "timestamp with time zone".into())]);
        let ts = col("ts", 1114, 'b', 'D', (0, ' '));
        assert!(binary_types(&[ts], &other).unwrap_err().contains("another type on the target"));
    }
}
