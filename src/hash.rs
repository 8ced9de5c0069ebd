//! The hashes that identify things by their content: plan ids, fingerprints of the inputs, the
//! suffix that keeps two migration names apart.

/// SHA-256 of the parts, hex.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_separate_their_parts() {
        assert_ne!(hash_parts(["ab", "c"]), hash_parts(["a", "bc"]));
        assert_eq!(hash_parts(["x"]), hash_parts(["x"]));
        assert_eq!(hash_parts(["x"]).len(), 64);
    }
}
