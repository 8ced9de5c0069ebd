//! The `objects:` pattern syntax of the migration plan: parsing a pattern and matching it against
//! catalog names. Pure: no I/O. `migration_plan` checks the patterns when it loads a plan;
//! `scope` applies them.
//!
//! A pattern is `schema.table` or `table` (any schema). `*` matches any run of characters and `?`
//! one character; inside double quotes everything is literal (`""` is a quote), so
//! `"my.schema"."T*"` names a schema with a dot and a table called `T*`. Names compare exactly,
//! case included, as they are stored in the catalog.

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
        Self::parse_name(raw, "schema")
    }

    /// Parses a pattern of one name (a schema, a role, a database: `what`).
    pub fn parse_name(raw: &str, what: &str) -> Result<Pattern, String> {
        let parts = split_parts(raw)?;
        match <[Glob; 1]>::try_from(parts) {
            Ok([name]) => Ok(Pattern { raw: raw.to_string(), schema: None, name }),
            Err(_) => Err(format!(
                "{what} pattern `{raw}` has a dot: quote it (\"a.b\") if the dot is in the name"
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
}
