//! What `pgtransit status` reports: computed from the state (and, when the servers answer,
//! their live WAL position and slot), as plain data the report renders. No I/O here.

use serde::Serialize;

use crate::catalog::SlotHealth;
use crate::state::{Counters, CutoverStatus, State, StepStatus};

/// Retained WAL above which `status` warns (the slot keeps the source's WAL on its disk), when
/// the migration plan does not say (`sync.slot_wal_warning`).
pub const RETAINED_WAL_WARNING: u64 = 1 << 30;

/// One table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableStatus {
    /// `schema.table`.
    pub name: String,
    /// `pending`, `copying`, `copied` or `streaming`.
    pub state: &'static str,
    /// Rows copied.
    pub rows: Option<u64>,
    /// Bytes copied.
    pub bytes: Option<u64>,
    /// Changes applied to it since the copy.
    pub applied: Counters,
    /// What continuous verification proved of it, once it compared any of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proven: Option<TableProven>,
}

/// How much of a table continuous verification proved equal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableProven {
    /// The share of its rows proven equal: 1 once a pass over all of it did, else the pass
    /// under way's rows against the table's (as copied and changed since).
    pub fraction: f64,
    /// As of when (Unix seconds): the oldest chunk of the last complete pass, or of the pass
    /// under way.
    pub as_of: Option<f64>,
    /// Where rows differ (`id 1..100000: id=7, id=9`), as last compared.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differing: Vec<String>,
}

/// Continuous verification, all tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerificationStatus {
    /// Complete passes over every table.
    pub passes: u64,
    /// Consistent points taken.
    pub rounds: u64,
    /// Rows compared on each side.
    pub rows_compared: u64,
    /// The longest the stream stood still at a consistent point (seconds).
    pub longest_pause: f64,
    /// When a chunk was last compared (Unix seconds).
    pub last_at: Option<f64>,
    /// Why the last round failed, if it did.
    pub error: Option<String>,
    /// Rows found different and copied again (`verify.repair`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<crate::state::RepairRecord>,
}

/// The migration's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The migration's name.
    pub migration: String,
    /// `not_started`, `applying` (schema, load, post-load), `streaming`, `stopped` (streaming
    /// stopped, resumable), `cutting_over`, `cut_over`, `failed`, `complete` (offline).
    pub phase: &'static str,
    /// The process applying now (the lock holder's description), if any.
    pub running: Option<String>,
    /// Every table streams and the lag is under `sync.max_lag`.
    pub ready_for_cutover: bool,
    /// Source WAL not yet applied on the target.
    pub lag_bytes: Option<u64>,
    /// Age of the oldest change not yet applied (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// `sync.max_lag`, seconds.
    pub max_lag_seconds: Option<f64>,
    /// The source position applied on the target.
    pub applied_lsn: Option<String>,
    /// How the stream's values come: `binary`, or `text` with why not binary.
    pub values: Option<String>,
    /// The source's current position.
    pub source_lsn: Option<String>,
    /// Changes applied, all tables.
    pub applied: Counters,
    /// Per table.
    pub tables: Vec<TableStatus>,
    /// The slot on the source, when it could be read.
    pub slot: Option<SlotHealth>,
    /// Things the operator should look at.
    pub warnings: Vec<String>,
    /// Why streaming or apply stopped, when it failed.
    pub error: Option<String>,
    /// Continuous verification, once it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
    /// The cutover, once started: status, write gap, what was verified.
    pub cutover: Option<crate::state::CutoverState>,
}

/// What was read live from the source, when it answered.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// `pg_current_wal_lsn()`.
    pub source_lsn: Option<u64>,
    /// The migration's slot.
    pub slot: Option<SlotHealth>,
    /// Whether the source answered at all.
    pub reachable: bool,
}

/// What continuous verification proved of table `name` (`copied`: rows copied).
fn proven(p: &crate::state::Proofs, name: &str, copied: Option<u64>) -> Option<TableProven> {
    let tp = p.tables.get(name)?;
    let differing = tp
        .differing()
        .map(|c| {
            let key = tp.key.as_deref();
            let keys = if c.differing_keys.is_empty() {
                format!("{} rows on the source, {} on the target", c.rows, c.target_rows)
            } else {
                c.differing_keys.join(", ")
            };
            format!("{}: {keys}", c.range(key))
        })
        .collect();
    let (fraction, as_of) = if tp.proven_at().is_some() {
        (1.0, tp.proven_as_of())
    } else {
        let done: i64 = tp.current.iter().filter(|c| c.equal).map(|c| c.rows).sum();
        let total = copied.unwrap_or(0).max(tp.rows().max(0) as u64).max(1);
        ((done as f64 / total as f64).min(0.99), crate::state::oldest_at(&tp.current))
    };
    Some(TableProven { fraction, as_of, differing })
}

/// What the cutover's state says: the phase when it is done or under way (true: done, nothing
/// more to say), or how an interrupted or failed one left things.
fn cutover_said(st: &mut Status) -> bool {
    match st.cutover.as_ref().map(|c| c.status) {
        Some(CutoverStatus::Done) => {
            st.phase = "cut_over";
            st.warnings.clear();
            return true;
        }
        Some(CutoverStatus::Failed) | None => {}
        Some(_) if st.running.is_some() => st.phase = "cutting_over",
        Some(CutoverStatus::Verified) => st.warnings.push(
            "a cutover was verified and waiting for the migration's other databases when it was \
             interrupted: `pgtransit apply` finishes it if every database was verified (the \
             decision to go was recorded), and lifts its fence otherwise"
                .into(),
        ),
        Some(CutoverStatus::CleaningUp) => st.warnings.push(
            "a cutover was verified (the target is the new primary) and its clean-up was \
             interrupted: the replication slot may still hold the source's WAL. `pgtransit apply` \
             finishes it; `pgtransit abort` removes what is left"
                .into(),
        ),
        Some(_) => st.warnings.push(
            "a cutover was interrupted before verification passed: the source may still be \
             fenced (read-only). `pgtransit apply` lifts the fence and resumes; `pgtransit \
             abort` lifts it too"
                .into(),
        ),
    }
    if st.cutover.as_ref().is_some_and(|c| c.status == CutoverStatus::Failed && !c.fence_lifted) {
        st.warnings.push(
            "the failed cutover could not lift its fence: the source is still read-only for new \
             sessions (`pgtransit abort` lifts it, or ALTER DATABASE ... RESET \
             default_transaction_read_only)"
                .into(),
        );
    }
    false
}

/// Computes the status. `running` is the lock holder, if an apply runs now; `now` is Unix time;
/// `wal_warning`: the slot's retained WAL that deserves a warning.
pub fn compute(
    migration: &str,
    state: Option<&State>,
    running: Option<String>,
    live: &Live,
    now: f64,
    wal_warning: u64,
) -> Status {
    let mut st = Status {
        migration: migration.to_string(),
        phase: "not_started",
        running: running.clone(),
        ready_for_cutover: false,
        lag_bytes: None,
        lag_seconds: None,
        max_lag_seconds: None,
        applied_lsn: None,
        values: None,
        source_lsn: live.source_lsn.map(crate::stream::lsn_text),
        applied: Counters::default(),
        tables: vec![],
        slot: live.slot.clone(),
        warnings: vec![],
        error: None,
        verification: None,
        cutover: None,
    };
    let Some(state) = state else { return st };
    st.verification = state.verification.as_ref().map(|p| VerificationStatus {
        passes: p.passes,
        rounds: p.rounds,
        rows_compared: p.rows_compared,
        longest_pause: p.longest_pause,
        last_at: p.last_at,
        error: p.error.clone(),
        repairs: p.repairs.clone(),
    });
    st.cutover = state.cutover.clone();
    let failed = state.steps.values().find(|s| s.status == StepStatus::Failed);
    st.error = failed.and_then(|s| s.error.clone());
    let Some(sync) = &state.sync else {
        st.phase = match (running.is_some(), state.applying.is_some(), failed.is_some()) {
            (true, _, _) => "applying",
            (false, _, true) => "failed",
            (false, true, false) => "stopped",
            (false, false, false) => "complete",
        };
        return st;
    };
    // Streaming now: the apply holding the lock says so, and said it lately.
    let reporter_runs = match (&running, sync.pid) {
        (Some(holder), Some(pid)) => holder.starts_with(&format!("pid {pid} ")),
        _ => false,
    };
    let streaming = sync.streaming && reporter_runs && now - sync.reported_at < 10.0;
    st.max_lag_seconds = Some(sync.max_lag_seconds);
    st.applied = sync.applied;
    st.applied_lsn = sync.applied_lsn.clone();
    st.values = sync.values.clone();
    if sync.error.is_some() {
        st.error = sync.error.clone();
    }
    let mut all_copied = !sync.tables.is_empty();
    for t in &sync.tables {
        let record = state.steps.get(&t.copy_step);
        let parts: Vec<_> = t.parts.iter().filter_map(|p| state.steps.get(p)).collect();
        let done =
            |r: Option<&crate::state::StepState>| r.is_some_and(|r| r.status == StepStatus::Done);
        let copied = done(record) && t.parts.iter().all(|p| done(state.steps.get(p)));
        let copying = record.is_some() || !parts.is_empty();
        all_copied &= copied;
        let name = crate::sql::qualified(&t.schema, &t.table);
        let (rows, bytes) = if parts.is_empty() {
            (record.and_then(|r| r.rows), record.and_then(|r| r.bytes))
        } else {
            (
                Some(parts.iter().filter_map(|r| r.rows).sum()),
                Some(parts.iter().filter_map(|r| r.bytes).sum()),
            )
        };
        st.tables.push(TableStatus {
            state: match (copied, copying, streaming) {
                (true, _, true) => "streaming",
                (true, _, false) => "copied",
                (false, true, _) => "copying",
                (false, false, _) => "pending",
            },
            rows,
            bytes,
            applied: sync.per_table.get(&name).copied().unwrap_or_default(),
            proven: state.verification.as_ref().and_then(|p| proven(p, &name, rows)),
            name,
        });
    }
    if streaming {
        st.phase = "streaming";
        st.lag_bytes = sync.lag_bytes;
        st.lag_seconds = sync.lag_seconds;
        st.source_lsn = st.source_lsn.clone().or(sync.source_lsn.clone());
    } else {
        st.phase = if running.is_some() {
            "applying"
        } else if st.error.is_some() {
            "failed"
        } else if all_copied {
            "stopped"
        } else if state.steps.is_empty() {
            "not_started"
        } else {
            "stopped"
        };
        // Not applying: the lag grows from where the target was last caught up.
        let applied = sync.applied_lsn.as_deref().and_then(crate::stream::parse_lsn);
        st.lag_bytes = match (live.source_lsn, applied) {
            (Some(now_at), Some(a)) => Some(now_at.saturating_sub(a)),
            _ => sync.lag_bytes,
        };
        st.lag_seconds = sync.caught_up_at.map(|t| (now - t).max(0.0));
    }
    if cutover_said(&mut st) {
        return st;
    }
    st.ready_for_cutover =
        streaming && all_copied && st.lag_seconds.is_some_and(|l| l <= sync.max_lag_seconds);
    // The slot: gone, at risk, or keeping much WAL.
    if live.reachable {
        match &live.slot {
            None if all_copied || !state.steps.is_empty() => st.warnings.push(format!(
                "the replication slot {} does not exist on the source: changes since the copies \
                 are lost to this migration. Run `pgtransit plan` (it copies every table again)",
                sync.slot
            )),
            None => {}
            Some(slot) => {
                let limit = i64::try_from(wal_warning).unwrap_or(i64::MAX);
                if let Some(r) = slot.retained_bytes.filter(|r| *r > limit) {
                    st.warnings.push(format!(
                        "the slot keeps {} of WAL on the source's disk (more than \
                         sync.slot_wal_warning, {}): keep `apply` streaming, or `pgtransit abort` \
                         to release it",
                        crate::preflight::human_bytes(r),
                        crate::preflight::human_bytes(limit)
                    ));
                }
                match slot.wal_status.as_deref() {
                    Some("unreserved") => st.warnings.push(
                        "the slot is about to be invalidated (max_slot_wal_keep_size): the \
                         source will remove WAL it still needs at the next checkpoint"
                            .into(),
                    ),
                    Some("lost") => st.warnings.push(
                        "the slot was invalidated (max_slot_wal_keep_size): run `pgtransit \
                         abort`, then apply again (every table is copied again)"
                            .into(),
                    ),
                    _ => {}
                }
                // With max_slot_wal_keep_size set, the slot may keep retained + safe bytes:
                // warn when less than a quarter of that is left.
                if let (Some(safe), Some(kept)) = (slot.safe_wal_size, slot.retained_bytes)
                    && safe < (safe.max(0) + kept.max(0)) / 4
                {
                    st.warnings.push(format!(
                        "only {} of WAL left before max_slot_wal_keep_size invalidates the slot \
                         (it keeps {}): keep `apply` streaming, or raise max_slot_wal_keep_size",
                        crate::preflight::human_bytes(safe.max(0)),
                        crate::preflight::human_bytes(kept.max(0))
                    ));
                }
            }
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution_plan::StreamTable;
    use crate::state::SyncState;

    fn state(done: bool) -> State {
        let mut s = State::new("m");
        s.start("load:table:public.t");
        if done {
            s.finish("load:table:public.t", Some(10));
        }
        s.sync = Some(SyncState {
            slot: "pgtransit_m".into(),
            tables: vec![StreamTable {
                schema: "public".into(),
                table: "t".into(),
                copy_step: "load:table:public.t".into(),
                parts: vec![],
            }],
            streaming: true,
            pid: Some(1),
            lag_seconds: Some(0.4),
            lag_bytes: Some(100),
            max_lag_seconds: 5.0,
            reported_at: 1000.0,
            ..Default::default()
        });
        s
    }

    fn live() -> Live {
        Live { source_lsn: Some(5000), slot: Some(slot(None)), reachable: true }
    }

    fn slot(wal_status: Option<&str>) -> SlotHealth {
        SlotHealth {
            active: true,
            active_pid: Some(1),
            wal_status: wal_status.map(String::from),
            retained_bytes: Some(10),
            safe_wal_size: None,
            confirmed_flush_lsn: None,
        }
    }

    #[test]
    fn ready_for_cutover_once_every_table_streams_under_the_lag_threshold() {
        let s = compute(
            "m",
            Some(&state(true)),
            Some("pid 1 on h".into()),
            &live(),
            1001.0,
            RETAINED_WAL_WARNING,
        );
        assert_eq!(s.phase, "streaming");
        assert_eq!(s.tables[0].state, "streaming");
        assert!(s.ready_for_cutover);
        let copying = compute(
            "m",
            Some(&state(false)),
            Some("pid 1 on h".into()),
            &live(),
            1001.0,
            RETAINED_WAL_WARNING,
        );
        assert_eq!(copying.tables[0].state, "copying");
        assert!(!copying.ready_for_cutover);
    }

    #[test]
    fn a_stopped_apply_is_not_ready_and_its_lag_grows() {
        let mut st = state(true);
        st.sync.as_mut().unwrap().caught_up_at = Some(900.0);
        st.sync.as_mut().unwrap().applied_lsn = Some("0/1000".into());
        let s = compute("m", Some(&st), None, &live(), 1001.0, RETAINED_WAL_WARNING);
        assert_eq!(s.phase, "stopped");
        assert!(!s.ready_for_cutover);
        assert_eq!(s.lag_seconds, Some(101.0));
        assert_eq!(s.lag_bytes, Some(5000 - 0x1000));
        // A stale report from a process that holds the lock but stopped reporting is not
        // streaming either.
        let s = compute(
            "m",
            Some(&state(true)),
            Some("pid 1 on h".into()),
            &live(),
            2000.0,
            RETAINED_WAL_WARNING,
        );
        assert_eq!(s.phase, "applying");
        assert!(!s.ready_for_cutover);
    }

    #[test]
    fn a_killed_streamers_state_does_not_make_the_next_apply_look_streaming() {
        // pid 1 streamed and was killed; pid 2 holds the lock now and is still planning.
        let s = compute(
            "m",
            Some(&state(true)),
            Some("pid 2 on h".into()),
            &live(),
            1001.0,
            RETAINED_WAL_WARNING,
        );
        assert_eq!(s.phase, "applying");
        assert!(!s.ready_for_cutover);
    }

    #[test]
    fn an_interrupted_cutover_is_a_warning_that_says_whether_it_was_verified() {
        let interrupted = |status| {
            let mut st = state(true);
            st.cutover = Some(crate::state::CutoverState { status, ..Default::default() });
            compute("m", Some(&st), None, &live(), 1001.0, RETAINED_WAL_WARNING).warnings
        };
        let fenced = interrupted(CutoverStatus::Verifying);
        assert!(fenced.iter().any(|w| w.contains("before verification passed")), "{fenced:?}");
        let verified = interrupted(CutoverStatus::CleaningUp);
        assert!(verified.iter().any(|w| w.contains("was verified")), "{verified:?}");
        assert!(!verified.iter().any(|w| w.contains("before verification")), "{verified:?}");
    }

    #[test]
    fn a_missing_or_invalidated_slot_is_a_warning() {
        let gone = Live { slot: None, ..live() };
        let s = compute("m", Some(&state(true)), None, &gone, 1001.0, RETAINED_WAL_WARNING);
        assert!(s.warnings[0].contains("does not exist"), "{:?}", s.warnings);
        let lost = Live { slot: Some(slot(Some("lost"))), ..live() };
        let s = compute("m", Some(&state(true)), None, &lost, 1001.0, RETAINED_WAL_WARNING);
        assert!(s.warnings.iter().any(|w| w.contains("invalidated")), "{:?}", s.warnings);
    }

    #[test]
    fn retained_wal_past_the_threshold_or_near_invalidation_is_a_warning() {
        let keeping = |retained, safe| Live {
            slot: Some(SlotHealth {
                retained_bytes: Some(retained),
                safe_wal_size: safe,
                ..slot(Some("reserved"))
            }),
            ..live()
        };
        let warnings =
            |l: &Live, limit| compute("m", Some(&state(true)), None, l, 1001.0, limit).warnings;
        // 2 GB kept: above the default 1 GB, below a threshold of 5 GB.
        let two_gb = keeping(2 << 30, None);
        let w = warnings(&two_gb, RETAINED_WAL_WARNING);
        assert!(w.iter().any(|w| w.contains("keeps 2.1 GB")), "{w:?}");
        assert!(warnings(&two_gb, 5 << 30).is_empty());
        // max_slot_wal_keep_size 10 GB: 9 GB kept, 1 GB left (less than a quarter) warns.
        let w = warnings(&keeping(9 << 30, Some(1 << 30)), 20 << 30);
        assert!(w.iter().any(|w| w.contains("before max_slot_wal_keep_size")), "{w:?}");
        assert!(warnings(&keeping(5 << 30, Some(5 << 30)), 20 << 30).is_empty());
    }
}
