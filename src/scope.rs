//! Which schemas and tables a migration covers: the `objects:` patterns of the migration plan,
//! parsed and matched against catalog names. Pure: no I/O.
//!
//! A pattern is `schema.table` or `table` (any schema). `*` matches any run of characters and `?`
//! one character; inside double quotes everything is literal (`""` is a quote), so
//! `"my.schema"."T*"` names a schema with a dot and a table called `T*`. Names compare exactly,
//! case included, as they are stored in the catalog.

use crate::spec::Objects;

/// Schemas that are never migrated: the system's own.
pub fn is_system_schema(name: &str) -> bool {
    name == "pg_catalog"
        || name == "information_schema"
        || name.starts_with("pg_toast")
        || name.starts_with("pg_temp_")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    One,
}

/// One part of a pattern (a schema or a table name), as glob tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<Tok>);

impl Glob {
    fn matches(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        glob_match(&self.0, &chars)
    }
}

fn glob_match(p: &[Tok], s: &[char]) -> bool {
    // Iterative matching with backtracking to the last `*` (linear in practice).
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(Tok::Lit(c)) if *c == s[si] => {
                pi += 1;
                si += 1;
            }
            Some(Tok::One) => {
                pi += 1;
                si += 1;
            }
            Some(Tok::Any) => {
                star = Some((pi, si));
                pi += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Any)
}

/// A parsed `objects:` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written in the migration plan.
    pub raw: String,
    schema: Option<Glob>,
    name: Glob,
}

impl Pattern {
    /// Parses a schema pattern (one part).
    pub fn parse_schema(raw: &str) -> Result<Pattern, String> {
        let parts = split_parts(raw)?;
        match <[Glob; 1]>::try_from(parts) {
            Ok([name]) => Ok(Pattern { raw: raw.to_string(), schema: None, name }),
            Err(_) => Err(format!(
                "schema pattern `{raw}` has a dot: quote it (\"a.b\") if the dot is in the name"
            )),
        }
    }

    /// Parses a table pattern: `schema.table` or `table`.
    pub fn parse_table(raw: &str) -> Result<Pattern, String> {
        let mut parts = split_parts(raw)?;
        match parts.len() {
            1 => Ok(Pattern { raw: raw.to_string(), schema: None, name: parts.remove(0) }),
            2 => {
                let name = parts.remove(1);
                Ok(Pattern { raw: raw.to_string(), schema: Some(parts.remove(0)), name })
            }
            _ => Err(format!(
                "table pattern `{raw}` has more than one dot: write schema.table, and quote \
                 names that contain dots"
            )),
        }
    }

    /// Whether this schema pattern matches `schema`.
    pub fn matches_schema(&self, schema: &str) -> bool {
        self.name.matches(schema)
    }

    /// Whether this table pattern matches `schema.table`.
    pub fn matches_table(&self, schema: &str, table: &str) -> bool {
        self.schema.as_ref().is_none_or(|s| s.matches(schema)) && self.name.matches(table)
    }
}

fn split_parts(raw: &str) -> Result<Vec<Glob>, String> {
    if raw.trim().is_empty() {
        return Err("empty pattern".into());
    }
    let mut parts = vec![];
    let mut cur = vec![];
    let mut chars = raw.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push(Tok::Lit('"'));
            }
            ('"', _) => in_quotes = !in_quotes,
            (c, true) => cur.push(Tok::Lit(c)),
            ('.', false) => parts.push(Glob(std::mem::take(&mut cur))),
            ('*', false) => cur.push(Tok::Any),
            ('?', false) => cur.push(Tok::One),
            (c, false) => cur.push(Tok::Lit(c)),
        }
    }
    if in_quotes {
        return Err(format!("pattern `{raw}` has an unterminated double quote"));
    }
    parts.push(Glob(cur));
    if parts.iter().any(|g| g.0.is_empty()) {
        return Err(format!("pattern `{raw}` has an empty part"));
    }
    Ok(parts)
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
    fn globs_match_like_shell_wildcards() {
        let p = Pattern::parse_table("public.film_*").unwrap();
        assert!(p.matches_table("public", "film_actor"));
        assert!(!p.matches_table("public", "film"));
        assert!(!p.matches_table("other", "film_actor"));
        let p = Pattern::parse_table("pay??nt*").unwrap();
        assert!(p.matches_table("any", "payment_p2022_01"));
        assert!(Pattern::parse_table("*").unwrap().matches_table("s", ""));
    }

    #[test]
    fn names_compare_case_sensitively() {
        let p = Pattern::parse_table("public.Users").unwrap();
        assert!(p.matches_table("public", "Users"));
        assert!(!p.matches_table("public", "users"));
    }

    #[test]
    fn quotes_make_dots_and_wildcards_literal() {
        let p = Pattern::parse_table(r#""my.schema"."T*""#).unwrap();
        assert!(p.matches_table("my.schema", "T*"));
        assert!(!p.matches_table("my.schema", "Tx"));
        let p = Pattern::parse_table(r#"s."a""b""#).unwrap();
        assert!(p.matches_table("s", "a\"b"));
    }

    #[test]
    fn malformed_patterns_are_rejected_with_the_reason() {
        assert!(Pattern::parse_table("a.b.c").unwrap_err().contains("more than one dot"));
        assert!(Pattern::parse_table("a.").unwrap_err().contains("empty part"));
        assert!(Pattern::parse_table("\"a").unwrap_err().contains("unterminated"));
        assert!(Pattern::parse_schema("a.b").unwrap_err().contains("has a dot"));
    }

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
