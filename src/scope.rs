//! Which schemas and tables a migration covers: the `objects:` filters of the migration plan,
//! parsed into patterns (see `pattern` for their syntax) and applied to catalog names. Pure: no
//! I/O.

use crate::migration_plan::Objects;
use crate::pattern::Pattern;

/// Schemas that are never migrated: the system's own.
pub fn is_system_schema(name: &str) -> bool {
    name == "pg_catalog"
        || name == "information_schema"
        || name.starts_with("pg_toast")
        || name.starts_with("pg_temp_")
}

/// The scope of a migration: the `objects:` filters, parsed.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    include_schemas: Vec<Pattern>,
    exclude_schemas: Vec<Pattern>,
    include_tables: Vec<Pattern>,
    exclude_tables: Vec<Pattern>,
}

impl Scope {
    /// Builds the scope from the migration plan (patterns were validated when it was loaded).
    pub fn new(objects: &Objects) -> Scope {
        let schema = |v: &Vec<serde_saphyr::Spanned<String>>| {
            v.iter().filter_map(|p| Pattern::parse_schema(&p.value).ok()).collect()
        };
        let table = |v: &Vec<serde_saphyr::Spanned<String>>| {
            v.iter().filter_map(|p| Pattern::parse_table(&p.value).ok()).collect()
        };
        Scope {
            include_schemas: schema(&objects.schemas.include),
            exclude_schemas: schema(&objects.schemas.exclude),
            include_tables: table(&objects.tables.include),
            exclude_tables: table(&objects.tables.exclude),
        }
    }

    /// Whether objects in `schema` are migrated.
    pub fn schema_in_scope(&self, schema: &str) -> bool {
        !is_system_schema(schema)
            && (self.include_schemas.is_empty()
                || self.include_schemas.iter().any(|p| p.matches_schema(schema)))
            && !self.exclude_schemas.iter().any(|p| p.matches_schema(schema))
    }

    /// Whether the table `schema.table` is migrated.
    pub fn table_in_scope(&self, schema: &str, table: &str) -> bool {
        self.schema_in_scope(schema)
            && (self.include_tables.is_empty()
                || self.include_tables.iter().any(|p| p.matches_table(schema, table)))
            && !self.exclude_tables.iter().any(|p| p.matches_table(schema, table))
    }

    /// Patterns that match no schema or table of the given lists (a typo, usually).
    pub fn unmatched_patterns<'a>(
        &'a self,
        schemas: &[&str],
        tables: &[(&str, &str)],
    ) -> Vec<&'a str> {
        let mut out = vec![];
        for p in self.include_schemas.iter().chain(&self.exclude_schemas) {
            if !schemas.iter().any(|s| p.matches_schema(s)) {
                out.push(p.raw.as_str());
            }
        }
        for p in self.include_tables.iter().chain(&self.exclude_tables) {
            if !tables.iter().any(|(s, t)| p.matches_table(s, t)) {
                out.push(p.raw.as_str());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_applies_include_then_exclude_and_never_system_schemas() {
        let objects: Objects = serde_saphyr::from_str(
            "schemas: {include: [public, app*]}\ntables: {exclude: ['public.tmp_*']}",
        )
        .unwrap();
        let scope = Scope::new(&objects);
        assert!(scope.table_in_scope("public", "film"));
        assert!(scope.table_in_scope("app_v2", "orders"));
        assert!(!scope.table_in_scope("public", "tmp_import"));
        assert!(!scope.table_in_scope("other", "film"));
        assert!(!Scope::default().schema_in_scope("pg_catalog"));
        assert!(!Scope::default().schema_in_scope("pg_toast_temp_1"));
    }

    #[test]
    fn unmatched_patterns_are_reported() {
        let objects: Objects =
            serde_saphyr::from_str("tables: {include: ['public.film', 'public.flim']}").unwrap();
        let scope = Scope::new(&objects);
        let unmatched = scope.unmatched_patterns(&["public"], &[("public", "film")]);
        assert_eq!(unmatched, vec!["public.flim"]);
    }
}
