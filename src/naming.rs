//! Names of everything pgtransit creates outside its state directory (replication slot,
//! publication, replication origin), derived only from the migration's name, so a resumed or
//! repeated run finds and reuses its own objects instead of creating others.

/// The migration name as an SQL-name fragment: `-` becomes `_` (slot names allow only lowercase
/// letters, digits and `_`), and then a short hash of the name is appended, so `a-b` and `a_b`
/// never share a slot (an `abort` of one must not remove the other's).
fn stem(migration: &str) -> String {
    if !migration.contains('-') {
        return migration.to_string();
    }
    let hash = crate::hash::hash_parts([migration]);
    format!("{}_{}", migration.replace('-', "_"), &hash[..8])
}

/// The logical replication slot on the source.
pub fn slot_name(migration: &str) -> String {
    format!("pgtransit_{}", stem(migration))
}

/// The publication on the source.
pub fn publication_name(migration: &str) -> String {
    format!("pgtransit_{}", stem(migration))
}

/// The replication origin on the target.
pub fn origin_name(migration: &str) -> String {
    format!("pgtransit_{}", stem(migration))
}

/// The prefix of the logical messages the stream of `slot` emits on the source (its
/// heartbeats; the cutover's barrier is [`barrier_prefix`]).
pub fn message_prefix(slot: &str) -> String {
    format!("pgtransit:{slot}")
}

/// The prefix of the cutover's barrier message on the source.
pub fn barrier_prefix(slot: &str) -> String {
    format!("{}:barrier", message_prefix(slot))
}

/// The prefix of the marker continuous verification emits on the source after taking a
/// consistent point (so the stream reaches that point on an idle source too).
pub fn proof_prefix(slot: &str) -> String {
    format!("{}:proof", message_prefix(slot))
}

/// The temporary slot continuous verification creates for each consistent point (dropped by
/// the server when its session ends).
pub fn proof_slot_name(slot: &str) -> String {
    let hash = crate::hash::hash_parts([slot]);
    format!("pgtransit_proof_{}", &hash[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_valid_slot_names() {
        let name = slot_name("shop-2024_eu");
        assert!(name.starts_with("pgtransit_shop_2024_eu_"), "{name}");
        assert_eq!(name, slot_name("shop-2024_eu"));
        assert!(name.len() <= 63);
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_ne!(publication_name("a-b"), publication_name("a_b"));
        assert_eq!(publication_name("a_b"), "pgtransit_a_b");
        assert_eq!(origin_name("a"), "pgtransit_a");
        let longest = slot_name(&"a-".repeat(20));
        assert!(longest.len() <= 63, "{longest}");
    }
}
