//! The rollback window (`cutover.rollback_window`): after the cutover, the old source follows
//! the new primary until the operator lets go. Pure: the window's migration plan, which
//! pgtransit writes at the cutover (the migration the other way round, streaming only, from the
//! slot created on the target at the cutover point), its name and where it lives.

use std::path::PathBuf;

use crate::migration_plan::{Fence, Filter, KeylessTables, LoadedMigrationPlan};

/// The name of the window's migration (`<name>-rb`, shortened with a hash when too long).
pub fn reverse_name(name: &str) -> String {
    let plain = format!("{name}-rb");
    if plain.len() <= 40 {
        return plain;
    }
    let hash = crate::hash::hash_parts([name]);
    format!("{}-rb{}", &name[..30.min(name.len())], &hash[..6])
}

/// Where the window's migration plan is written: the migration's state directory.
pub fn reverse_plan_path(loaded: &LoadedMigrationPlan) -> PathBuf {
    loaded.state_dir().join("rollback.yaml")
}

/// A YAML string (JSON's quoting is YAML's double-quoted style).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

fn filter(out: &mut String, key: &str, f: &Filter) {
    if f.include.is_empty() && f.exclude.is_empty() {
        return;
    }
    out.push_str(&format!("  {key}:\n"));
    for (what, list) in [("include", &f.include), ("exclude", &f.exclude)] {
        if !list.is_empty() {
            let items: Vec<String> = list.iter().map(|p| quoted(&p.value)).collect();
            out.push_str(&format!("    {what}: [{}]\n", items.join(", ")));
        }
    }
}

/// The window's migration plan: the servers swapped (their URLs as the migration plan has
/// them: `${VAR}` references, never a password), the same scope, the roles map inverted, the
/// same sync, cutover and verification options, and `rollback_of`.
pub fn reverse_plan_text(loaded: &LoadedMigrationPlan) -> String {
    let spec = &loaded.spec;
    let name = &spec.name.value;
    let mut out = format!(
        "# The rollback window of migration {name}, written by pgtransit at its cutover: the\n\
         # target's changes stream back to the old source from the cutover point.\n\
         # `pgtransit rollback {path}` goes back; `pgtransit finish {path}` closes the window.\n\
         version: 1\n\
         name: {}\n\
         mode: online\n\
         rollback_of: {name}\n\
         source:\n  url: {}\n\
         target:\n  url: {}\n",
        reverse_name(name),
        quoted(&spec.target.url.value),
        quoted(&spec.source.url.value),
        path = loaded.path.display(),
    );
    let (schemas, tables) = (&spec.objects.schemas, &spec.objects.tables);
    if !(schemas.include.is_empty()
        && schemas.exclude.is_empty()
        && tables.include.is_empty()
        && tables.exclude.is_empty())
    {
        out.push_str("objects:\n");
        filter(&mut out, "schemas", schemas);
        filter(&mut out, "tables", tables);
    }
    if !spec.roles.map.is_empty() {
        out.push_str("roles:\n  map:\n");
        for (from, to) in &spec.roles.map {
            out.push_str(&format!("    {}: {}\n", quoted(to), quoted(from)));
        }
    }
    out.push_str("sync:\n");
    if let Some(lag) = spec.sync.max_lag {
        out.push_str(&format!("  max_lag: {}ms\n", lag.0.as_millis()));
    }
    if spec.sync.tables_without_key == KeylessTables::ReplicaIdentityFull {
        out.push_str("  tables_without_key: replica_identity_full\n");
    }
    if let Some(w) = spec.sync.slot_wal_warning {
        out.push_str(&format!("  slot_wal_warning: {}B\n", w.0));
    }
    let fence = match spec.cutover.fence {
        Fence::ReadOnly => "read_only",
        Fence::LockTables => "lock_tables",
    };
    out.push_str(&format!(
        "cutover:\n  fence: {fence}\n  sequence_margin: {}\n",
        spec.cutover.sequence_margin
    ));
    let v = &spec.verify;
    out.push_str(&format!(
        "verify:\n  row_counts: {}\n  checksums: {}\n  continuous: {}\n  rows_per_second: {}\n",
        v.row_counts, v.checksums, v.continuous, v.rows_per_second
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LoadedMigrationPlan {
        crate::migration_plan::parse(
            std::path::Path::new("/plans/m.yaml"),
            text.to_string(),
            &|name| (name == "TARGET_HOST").then(|| "db.example.com".to_string()),
        )
        .unwrap()
    }

    #[test]
    fn the_window_plan_swaps_the_servers_inverts_the_roles_map_and_keeps_the_scope() {
        let forward = parse(
            "version: 1\nname: shop\nmode: online\n\
             source:\n  url: postgresql://app@10.0.0.5/shop\n\
             target:\n  url: postgresql://admin@${TARGET_HOST}/shop?sslmode=verify-full\n\
             objects:\n  schemas:\n    include: [public, \"Sales\"]\n  tables:\n    exclude: [\"public.log_*\"]\n\
             roles:\n  map:\n    app: app_owner\n\
             sync:\n  max_lag: 2s\n  tables_without_key: replica_identity_full\n\
             cutover:\n  fence: lock_tables\n  sequence_margin: 100\n  rollback_window: true\n",
        );
        let text = reverse_plan_text(&forward);
        let reverse = parse(&text);
        let spec = &reverse.spec;
        assert_eq!(spec.name.value, "shop-rb");
        assert_eq!(spec.rollback_of.as_deref(), Some("shop"));
        assert_eq!(
            spec.source.url.value, "postgresql://admin@${TARGET_HOST}/shop?sslmode=verify-full",
            "as the plan has it: the variable, not its value"
        );
        assert_eq!(spec.target.url.value, "postgresql://app@10.0.0.5/shop");
        assert_eq!(spec.roles.map.get("app_owner").map(String::as_str), Some("app"));
        let includes: Vec<&str> =
            spec.objects.schemas.include.iter().map(|p| p.value.as_str()).collect();
        assert_eq!(includes, ["public", "Sales"]);
        assert_eq!(spec.objects.tables.exclude[0].value, "public.log_*");
        assert_eq!(spec.sync.max_lag.map(|d| d.0.as_secs()), Some(2));
        assert_eq!(spec.sync.tables_without_key, KeylessTables::ReplicaIdentityFull);
        assert_eq!(spec.cutover.fence, Fence::LockTables);
        assert_eq!(spec.cutover.sequence_margin, 100);
        assert!(!spec.cutover.rollback_window, "no window of the window");
        assert_eq!(reverse_plan_path(&forward), forward.state_dir().join("rollback.yaml"));
    }

    #[test]
    fn a_long_name_keeps_the_window_name_within_forty_characters() {
        let long = "a".repeat(40);
        let name = reverse_name(&long);
        assert!(name.len() <= 40 && name.starts_with(&"a".repeat(30)), "{name}");
        assert_ne!(reverse_name(&"a".repeat(39)), reverse_name(&"a".repeat(40)));
    }
}
