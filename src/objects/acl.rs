//! Privileges: `aclitem`s parsed from the server's text form, and the GRANT/REVOKE statements
//! that turn one ACL into another while keeping the order of its items (pg_dump prints grants in
//! that order, so the order is part of the object).

use serde::{Deserialize, Serialize};

use crate::sql::ident;

use super::CREATING_ROLE;

/// One `aclitem`: the privileges `grantor` gave `grantee`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclItem {
    /// The role receiving them; `""` is PUBLIC.
    pub grantee: String,
    /// The role that granted them.
    pub grantor: String,
    /// Privilege letters as `aclitem` prints them (`r` SELECT, `a` INSERT, `w` UPDATE, `d`
    /// DELETE, `D` TRUNCATE, `x` REFERENCES, `t` TRIGGER, `X` EXECUTE, `U` USAGE, `C` CREATE,
    /// `c` CONNECT, `T` TEMPORARY, `m` MAINTAIN, ...).
    pub privileges: String,
    /// The subset of `privileges` held WITH GRANT OPTION.
    pub grantable: String,
}

impl AclItem {
    /// An item; `privileges` in `aclitem` form (`r*w`: SELECT with grant option, UPDATE).
    pub fn new(grantee: &str, privileges: &str, grantor: &str) -> AclItem {
        let mut item = AclItem {
            grantee: grantee.into(),
            grantor: grantor.into(),
            privileges: String::new(),
            grantable: String::new(),
        };
        for c in privileges.chars() {
            if c == '*' {
                if let Some(last) = item.privileges.chars().last() {
                    item.grantable.push(last);
                }
            } else {
                item.privileges.push(c);
            }
        }
        item
    }

    /// Parses `aclitem` text: `grantee=privileges/grantor`, names double-quoted when needed.
    pub fn parse(text: &str) -> Option<AclItem> {
        let (grantee, rest) = parse_role(text, '=')?;
        let rest = rest.strip_prefix('=')?;
        let slash = rest.find('/')?;
        let privileges = &rest[..slash];
        if !privileges.chars().all(|c| c == '*' || c.is_ascii_alphabetic()) {
            return None;
        }
        let (grantor, tail) = parse_role(&rest[slash + 1..], '\0')?;
        if !tail.is_empty() || grantor.is_empty() {
            return None;
        }
        Some(AclItem::new(&grantee, privileges, &grantor))
    }

    fn has(&self, c: char) -> bool {
        self.privileges.contains(c)
    }

    fn has_grant_option(&self, c: char) -> bool {
        self.grantable.contains(c)
    }
}

impl std::fmt::Display for AclItem {
    /// The `aclitem` text form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = |name: &str| {
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                name.to_string()
            } else {
                format!("\"{}\"", name.replace('"', "\"\""))
            }
        };
        let mut privileges = String::new();
        for c in self.privileges.chars() {
            privileges.push(c);
            if self.has_grant_option(c) {
                privileges.push('*');
            }
        }
        write!(f, "{}={}/{}", role(&self.grantee), privileges, role(&self.grantor))
    }
}

/// A role name at the start of `s` (double-quoted or up to `stop`), and the rest.
fn parse_role(s: &str, stop: char) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if let Some((_, '"')) = chars.peek() {
                    chars.next();
                    name.push('"');
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = s.find(stop).unwrap_or(s.len());
        Some((s[..end].to_string(), &s[end..]))
    }
}

/// The SQL keyword of a privilege letter.
fn privilege_keyword(c: char) -> Option<&'static str> {
    Some(match c {
        'a' => "INSERT",
        'r' => "SELECT",
        'w' => "UPDATE",
        'd' => "DELETE",
        'D' => "TRUNCATE",
        'x' => "REFERENCES",
        't' => "TRIGGER",
        'X' => "EXECUTE",
        'U' => "USAGE",
        'C' => "CREATE",
        'c' => "CONNECT",
        'T' => "TEMPORARY",
        's' => "SET",
        'A' => "ALTER SYSTEM",
        'm' => "MAINTAIN",
        _ => return None,
    })
}

/// What GRANT/REVOKE statements are about.
pub(crate) struct Target {
    /// `TABLE`, `SEQUENCE`, `FUNCTION`, `SCHEMA`, `TYPE`, ... (`TABLES`, ... for default
    /// privileges).
    object_type: String,
    /// Quoted name (empty for default privileges).
    name: String,
    /// Quoted column, for column privileges.
    column: Option<String>,
    /// Put before every GRANT and REVOKE (`ALTER DEFAULT PRIVILEGES FOR ROLE .. `).
    prefix: String,
}

impl Target {
    pub(crate) fn object(object_type: &str, name: &str) -> Self {
        Target {
            object_type: object_type.into(),
            name: name.into(),
            column: None,
            prefix: String::new(),
        }
    }

    pub(crate) fn column(table: &str, column: &str) -> Self {
        Target { column: Some(column.into()), ..Target::object("TABLE", table) }
    }

    /// `ALTER DEFAULT PRIVILEGES {prefix} GRANT .. ON {objects}`.
    pub(crate) fn default_privileges(prefix: &str, objects: &str) -> Self {
        Target {
            object_type: objects.into(),
            name: String::new(),
            column: None,
            prefix: format!("ALTER DEFAULT PRIVILEGES {prefix} "),
        }
    }

    fn privileges(&self, letters: &str) -> String {
        let list: Vec<String> = letters
            .chars()
            .filter_map(privilege_keyword)
            .map(|k| match &self.column {
                Some(col) => format!("{k} ({col})"),
                None => k.to_string(),
            })
            .collect();
        list.join(", ")
    }

    fn all(&self) -> String {
        match &self.column {
            Some(col) => format!("ALL ({col})"),
            None => "ALL".to_string(),
        }
    }

    fn on(&self) -> String {
        if self.name.is_empty() {
            format!("ON {}", self.object_type)
        } else {
            format!("ON {} {}", self.object_type, self.name)
        }
    }
}

/// A role in GRANT/REVOKE.
fn role_spec(name: &str) -> String {
    if name.is_empty() {
        "PUBLIC".to_string()
    } else if name == CREATING_ROLE {
        "CURRENT_USER".to_string()
    } else {
        ident(name)
    }
}

/// `statements`, run as `grantor` when it is not the owner (as pg_dump does).
fn as_grantor(grantor: &str, owner: &str, statements: Vec<String>, out: &mut Vec<String>) {
    if statements.is_empty() {
        return;
    }
    let other = grantor != owner && grantor != CREATING_ROLE;
    if other {
        out.push(format!("SET SESSION AUTHORIZATION {}", ident(grantor)));
    }
    out.extend(statements);
    if other {
        out.push("RESET SESSION AUTHORIZATION".to_string());
    }
}

fn letters_where(item: &AclItem, keep: impl Fn(char) -> bool) -> String {
    item.privileges.chars().filter(|&c| keep(c)).collect()
}

/// GRANTs giving a new item's privileges (appended at the end of the ACL).
fn grant_item(target: &Target, item: &AclItem) -> Vec<String> {
    let mut out = Vec::new();
    let grantee = role_spec(&item.grantee);
    let plain = letters_where(item, |c| !item.has_grant_option(c));
    if !plain.is_empty() {
        out.push(format!("GRANT {} {} TO {grantee}", target.privileges(&plain), target.on()));
    }
    if !item.grantable.is_empty() {
        out.push(format!(
            "GRANT {} {} TO {grantee} WITH GRANT OPTION",
            target.privileges(&item.grantable),
            target.on()
        ));
    }
    out
}

/// Statements turning ACL `current` into `desired` (both effective ACLs of an object owned by
/// `owner`), keeping the order of the items, which pg_dump's output follows: items of
/// `current` that match the next item of `desired` (same grantee and grantor) stay where they
/// are and have their privileges adjusted, the others are revoked, and what remains of
/// `desired` is granted, in order, at the end.
pub(crate) fn transition(
    target: &Target,
    owner: &str,
    current: &[AclItem],
    desired: &[AclItem],
) -> Vec<String> {
    let mut kept: Vec<(&AclItem, &AclItem)> = Vec::new();
    let mut removed: Vec<&AclItem> = Vec::new();
    let mut next = 0;
    for cur in current {
        match desired.get(next) {
            Some(want) if want.grantee == cur.grantee && want.grantor == cur.grantor => {
                kept.push((cur, want));
                next += 1;
            }
            _ => removed.push(cur),
        }
    }
    let mut out = Vec::new();
    // Last first, so that what a grantee granted on goes before the grantee's own privileges.
    for item in removed.iter().rev() {
        let stmt =
            format!("REVOKE {} {} FROM {}", target.all(), target.on(), role_spec(&item.grantee));
        as_grantor(&item.grantor, owner, vec![stmt], &mut out);
    }
    for (cur, want) in kept {
        let grantee = role_spec(&want.grantee);
        let on = target.on();
        let mut stmts = Vec::new();
        // Grants first: the item never becomes empty (and is never removed) on the way.
        let add = letters_where(want, |c| !cur.has(c) && !want.has_grant_option(c));
        if !add.is_empty() {
            stmts.push(format!("GRANT {} {on} TO {grantee}", target.privileges(&add)));
        }
        let add_go = letters_where(want, |c| want.has_grant_option(c) && !cur.has_grant_option(c));
        if !add_go.is_empty() {
            stmts.push(format!(
                "GRANT {} {on} TO {grantee} WITH GRANT OPTION",
                target.privileges(&add_go)
            ));
        }
        let drop_go = letters_where(cur, |c| {
            cur.has_grant_option(c) && want.has(c) && !want.has_grant_option(c)
        });
        if !drop_go.is_empty() {
            stmts.push(format!(
                "REVOKE GRANT OPTION FOR {} {on} FROM {grantee}",
                target.privileges(&drop_go)
            ));
        }
        let drop = letters_where(cur, |c| !want.has(c));
        if !drop.is_empty() {
            stmts.push(format!("REVOKE {} {on} FROM {grantee}", target.privileges(&drop)));
        }
        as_grantor(&want.grantor, owner, stmts, &mut out);
    }
    for item in &desired[next..] {
        as_grantor(&item.grantor, owner, grant_item(target, item), &mut out);
    }
    if !target.prefix.is_empty() {
        for statement in &mut out {
            if statement.starts_with("GRANT ") || statement.starts_with("REVOKE ") {
                statement.insert_str(0, &target.prefix);
            }
        }
    }
    out
}

/// Merges items that have the same grantee and grantor (the first keeps its place), as the
/// server does when roles are renamed into each other.
fn merge(items: Vec<AclItem>) -> Vec<AclItem> {
    let mut out: Vec<AclItem> = Vec::with_capacity(items.len());
    for item in items {
        if let Some(prev) =
            out.iter_mut().find(|p| p.grantee == item.grantee && p.grantor == item.grantor)
        {
            for c in item.privileges.chars() {
                if !prev.has(c) {
                    prev.privileges.push(c);
                }
            }
            for c in item.grantable.chars() {
                if !prev.has_grant_option(c) {
                    prev.grantable.push(c);
                }
            }
        } else {
            out.push(item);
        }
    }
    out
}

/// `items` with roles mapped for the target: `source_owner` becomes `owner`, other roles go
/// through `roles`; items whose grantee or grantor maps to nothing are left out.
pub(crate) fn map_acl(
    items: &[AclItem],
    source_owner: &str,
    owner: &str,
    roles: &dyn Fn(&str) -> Option<String>,
) -> Vec<AclItem> {
    let map = |name: &str| -> Option<String> {
        if name.is_empty() {
            Some(String::new())
        } else if name == source_owner {
            Some(owner.to_string())
        } else {
            roles(name)
        }
    };
    merge(
        items
            .iter()
            .filter_map(|item| {
                Some(AclItem {
                    grantee: map(&item.grantee)?,
                    grantor: map(&item.grantor)?,
                    ..item.clone()
                })
            })
            .collect(),
    )
}

/// `items` after `ALTER .. OWNER TO new` (the server's aclnewowner).
pub(crate) fn rename_role(items: &[AclItem], old: &str, new: &str) -> Vec<AclItem> {
    let rename = |name: &str| if name == old { new.to_string() } else { name.to_string() };
    merge(
        items
            .iter()
            .map(|item| AclItem {
                grantee: rename(&item.grantee),
                grantor: rename(&item.grantor),
                ..item.clone()
            })
            .collect(),
    )
}

/// `desired` with every item that is exactly the source's default replaced by the target's
/// default item of the same grantee and grantor.
pub(crate) fn rebase_defaults(
    desired: &[AclItem],
    source_default: &[AclItem],
    target_default: &[AclItem],
) -> Vec<AclItem> {
    desired
        .iter()
        .map(|item| {
            if source_default.contains(item)
                && let Some(t) = target_default
                    .iter()
                    .find(|t| t.grantee == item.grantee && t.grantor == item.grantor)
            {
                return t.clone();
            }
            item.clone()
        })
        .collect()
}
