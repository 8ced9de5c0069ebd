//! Quoting of SQL identifiers and literals. Every identifier pgtransit puts in SQL goes through
//! [`ident`] (always double-quoted, so case, spaces and keywords survive); [`display`] is the
//! lighter form for messages, quoting only names that need it.

/// `name` as a double-quoted SQL identifier (`"` doubled), as libpq's `PQescapeIdentifier`.
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `schema.name`, both quoted, for SQL.
pub fn qualified_ident(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `value` as an SQL string literal (`'` doubled; `E'...'` when it holds a backslash).
pub fn literal(value: &str) -> String {
    let escaped = value.replace('\'', "''");
    if escaped.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

/// `name` for messages: bare when it is a plain lowercase identifier, quoted otherwise.
pub fn display(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { ident(name) }
}

/// `schema.name` for messages.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", display(schema), display(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_quotes_doubled() {
        assert_eq!(ident("film"), "\"film\"");
        assert_eq!(ident("My \"odd\" name"), "\"My \"\"odd\"\" name\"");
        assert_eq!(qualified_ident("public", "Order"), "\"public\".\"Order\"");
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b"), r"E'a\\b'");
    }

    #[test]
    fn display_quotes_only_what_needs_it() {
        assert_eq!(qualified("public", "film"), "public.film");
        assert_eq!(qualified("public", "Film"), "public.\"Film\"");
        assert_eq!(display("a b"), "\"a b\"");
    }
}
