//! A migration of several databases (`databases:` in the migration plan): which of the source's
//! databases it moves, and each one's own migration (its **member**): the same plan with the
//! database in both connection strings, a name of its own (for its slot, publication and
//! origin), and a state directory of its own under the migration's. Pure: the command lists the
//! source's databases and runs each member through the same pipeline as a one-database plan.

use crate::migration_plan::{Filter, LoadedMigrationPlan};
use crate::pattern::Pattern;

/// Databases a whole-server migration never takes: managed services' own.
pub const PROVIDERS_OWN: &[&str] =
    &["rdsadmin", "azure_maintenance", "azure_sys", "cloudsqladmin", "_dodb"];

/// One database's migration.
#[derive(Debug, Clone)]
pub struct Member {
    /// The database (the same name on both servers).
    pub database: String,
    /// Its migration: the plan with this database, its own name and state directory.
    pub plan: LoadedMigrationPlan,
}

/// The databases `filter` selects from the source's (`names`: those that allow connections and
/// are not templates), in name order.
pub fn select(filter: &Filter, names: &[String]) -> Vec<String> {
    let parse = |v: &[serde_saphyr::Spanned<String>]| -> Vec<Pattern> {
        v.iter().filter_map(|p| Pattern::parse_schema(&p.value).ok()).collect()
    };
    let (include, exclude) = (parse(&filter.include), parse(&filter.exclude));
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| !PROVIDERS_OWN.contains(&n.as_str()))
        .filter(|n| include.is_empty() || include.iter().any(|p| p.matches_schema(n)))
        .filter(|n| !exclude.iter().any(|p| p.matches_schema(n)))
        .cloned()
        .collect();
    out.sort();
    out
}

/// The name of `database`'s member of migration `migration`: `<migration>-<database>` when
/// the database's name is plain (lowercase letters, digits, `_`) and short enough, else
/// `<migration>-h<8 hex digits of its hash>`; either way a valid migration name, unique per
/// database.
pub fn member_name(migration: &str, database: &str) -> String {
    let plain = database.starts_with(|c: char| c.is_ascii_lowercase())
        && database.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && migration.len() + 1 + database.len() <= 40 {
        format!("{migration}-{database}")
    } else {
        let hash = crate::hash::hash_parts([database]);
        let keep = 40usize.saturating_sub(10).min(migration.len());
        format!("{}-h{}", &migration[..keep], &hash[..8])
    }
}

/// Each database's member of `loaded` (a plan with `databases:`).
pub fn members(loaded: &LoadedMigrationPlan, databases: &[String]) -> Vec<Member> {
    let base_state = loaded.state_dir();
    databases
        .iter()
        .map(|database| {
            let mut plan = loaded.clone();
            let name = member_name(&loaded.spec.name.value, database);
            plan.spec.name.value = name.clone();
            plan.spec.databases = None;
            plan.spec.state_dir = Some(base_state.join(&name));
            // Setting `dbname` on a parsed string cannot fail.
            let _ = plan.source_conninfo.set("dbname", database.clone());
            let _ = plan.target_conninfo.set("dbname", database.clone());
            Member { database: database.clone(), plan }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(v: &[&str]) -> Vec<serde_saphyr::Spanned<String>> {
        let at = serde_saphyr::Location::UNKNOWN;
        v.iter().map(|p| serde_saphyr::Spanned::new(p.to_string(), at, at)).collect()
    }

    #[test]
    fn databases_are_selected_by_pattern_without_the_providers_own() {
        let names: Vec<String> =
            ["shop", "pagila", "rdsadmin", "shop_archive", "postgres"].map(String::from).into();
        let all = Filter { include: spanned(&["*"]), exclude: spanned(&["postgres"]) };
        assert_eq!(select(&all, &names), ["pagila", "shop", "shop_archive"]);
        let some = Filter { include: spanned(&["shop*"]), exclude: spanned(&["*_archive"]) };
        assert_eq!(select(&some, &names), ["shop"]);
    }

    #[test]
    fn member_names_are_valid_migration_names_unique_per_database() {
        assert_eq!(member_name("server", "shop"), "server-shop");
        let odd = member_name("server", "My Shop");
        assert!(odd.starts_with("server-h") && odd.len() == "server-h".len() + 8, "{odd}");
        assert_ne!(member_name("server", "a-b"), member_name("server", "a_b"));
        let long = member_name(&"m".repeat(40), "shop");
        assert!(long.len() <= 40, "{long}");
    }
}
