//! The cutover's expected write gap, from the last measurements: the stream's lag and rate of
//! changes (the state's `sync`), what continuous verification proved and when (`verification`),
//! and the cutover steps of the execution plan. Pure: `plan` shows it so an operator can choose
//! the moment.

use crate::execution_plan::{CutoverEstimate, Step, VerifyTable, Work};
use crate::state::State;

/// The fence going up, and the clean-up, as measured on small and large databases alike.
const FENCE: f64 = 0.05;
const CLEAN_UP: f64 = 0.05;
/// The drain's floor: the barrier's commit, sent by the walsender, applied.
const DRAIN_LATENCY: f64 = 0.05;
/// Per sequence (set in one session with the others), and once.
const PER_SEQUENCE: f64 = 0.006;
const SEQUENCES_ONCE: f64 = 0.01;
/// Rows compared by key per second (both sides at once).
const ROWS_BY_KEY_PER_SECOND: f64 = 50_000.0;
/// Rows checksummed in full per second (both sides at once), on a 2-core machine.
const ROWS_IN_FULL_PER_SECOND: f64 = 1_000_000.0;

/// The expected write gap of a cutover now (`now`: Unix seconds), for an execution plan's
/// `steps` and `tables`; `None` before the stream ran.
pub fn cutover(
    state: &State,
    steps: &[Step],
    tables: &[VerifyTable],
    now: f64,
) -> Option<CutoverEstimate> {
    let sync = state.sync.as_ref()?;
    let mut basis = vec![];
    let lag = sync.lag_seconds.unwrap_or(0.0);
    let drain = DRAIN_LATENCY + lag;
    basis.push(format!("the stream's lag when last measured: {lag:.1} s"));
    let count = |f: fn(&Work) -> bool| steps.iter().filter(|s| f(&s.work)).count();
    let sequences = count(|w| matches!(w, Work::SetSequence { .. }));
    let refreshes =
        steps.iter().filter(|s| s.id.starts_with("cutover:refresh:") && s.action.is_work()).count();
    let seq_time = SEQUENCES_ONCE + PER_SEQUENCE * (sequences + refreshes) as f64;
    basis.push(format!("{sequences} sequences, {refreshes} materialized views"));
    let rate = sync.changes_per_second.unwrap_or(0.0);
    let continuous = count(|w| matches!(w, Work::ContinuousVerify { .. })) > 0;
    let (mut by_key, mut in_full, mut proven) = (0.0, 0.0, 0);
    for t in tables {
        let name = crate::sql::qualified(&t.schema, &t.table);
        let proof = state.verification.as_ref().and_then(|v| v.tables.get(&name));
        let as_of = proof.filter(|_| continuous).and_then(|p| p.proven_as_of());
        match as_of {
            // Rows changed since (all tables' rate: an upper bound for one table).
            Some(at) => {
                proven += 1;
                by_key += rate * (now - at).max(0.0);
            }
            None => in_full += table_rows(state, &name) as f64,
        }
    }
    basis.push(format!(
        "{rate:.0} rows changed per second; {proven} of {} tables proven while streaming, the \
         others ({} rows) compared in full",
        tables.len(),
        crate::preflight::thousands(in_full as i64)
    ));
    let verification = by_key / ROWS_BY_KEY_PER_SECOND + in_full / ROWS_IN_FULL_PER_SECOND;
    let total = FENCE + drain + seq_time + verification + CLEAN_UP;
    Some(CutoverEstimate {
        fence: FENCE,
        drain,
        sequences: seq_time,
        verification,
        clean_up: CLEAN_UP,
        total,
        basis,
    })
}

/// A table's rows: as copied, plus inserts less deletes applied since.
fn table_rows(state: &State, name: &str) -> i64 {
    let Some(sync) = &state.sync else { return 0 };
    let copied: u64 = sync
        .tables
        .iter()
        .filter(|t| crate::sql::qualified(&t.schema, &t.table) == name)
        .flat_map(|t| std::iter::once(&t.copy_step).chain(&t.parts))
        .filter_map(|id| state.steps.get(id).and_then(|r| r.rows))
        .sum();
    let applied = sync.per_table.get(name).copied().unwrap_or_default();
    (copied as i64 + applied.inserts as i64 - applied.deletes as i64).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution_plan::{Action, Phase, StreamTable};
    use crate::state::{ChunkProof, Proofs, SyncState, TableProof};

    fn step(id: &str, work: Work) -> Step {
        Step {
            id: id.into(),
            phase: Phase::Cutover,
            action: Action::Run,
            object: id.into(),
            sql: String::new(),
            estimate: None,
            note: None,
            diff: None,
            work,
            after: vec![],
            table: None,
        }
    }

    #[test]
    fn the_expected_write_gap_counts_rows_changed_since_each_proof_and_unproven_tables_in_full() {
        let table =
            |name: &str| VerifyTable { schema: "public".into(), table: name.into(), key: None };
        let tables = vec![table("proven"), table("never")];
        let steps = vec![
            step(
                "sync:verify",
                Work::ContinuousVerify {
                    tables: tables.clone(),
                    rows_per_second: 0,
                    repair: false,
                },
            ),
            step(
                "cutover:sequence:a",
                Work::SetSequence { schema: "public".into(), sequence: "a".into(), margin: 0 },
            ),
        ];
        let mut state = State::new("m");
        state.sync = Some(SyncState {
            lag_seconds: Some(1.0),
            changes_per_second: Some(100.0),
            tables: vec![StreamTable {
                schema: "public".into(),
                table: "never".into(),
                copy_step: "load:table:public.never".into(),
                parts: vec![],
            }],
            ..SyncState::default()
        });
        state.start("load:table:public.never");
        state.finish("load:table:public.never", Some(1_000_000));
        let chunk =
            ChunkProof { equal: true, lsn: "0/10".into(), at: 990.0, ..ChunkProof::default() };
        let mut proofs = Proofs::default();
        proofs.tables.insert(
            "public.proven".into(),
            TableProof { complete: vec![chunk], ..TableProof::default() },
        );
        state.verification = Some(proofs);
        let e = cutover(&state, &steps, &tables, 1000.0).unwrap();
        // 100 rows/s for the 10 s since the proof, by key; a million rows in full.
        assert!((e.verification - (1000.0 / ROWS_BY_KEY_PER_SECOND + 1.0)).abs() < 1e-9, "{e:?}");
        assert!((e.drain - (DRAIN_LATENCY + 1.0)).abs() < 1e-9, "{e:?}");
        assert!((e.sequences - (SEQUENCES_ONCE + PER_SEQUENCE)).abs() < 1e-9, "{e:?}");
        let sum = e.fence + e.drain + e.sequences + e.verification + e.clean_up;
        assert!((e.total - sum).abs() < 1e-9);
        assert!(e.basis.iter().any(|b| b.contains("1 of 2 tables proven")), "{e:?}");
        // Without continuous verification, every table is compared in full.
        let e = cutover(&state, &steps[1..], &tables, 1000.0).unwrap();
        assert!(e.basis.iter().any(|b| b.contains("0 of 2 tables proven")), "{e:?}");
    }
}
