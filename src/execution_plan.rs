//! The execution plan: what `pgtransit plan` computes and `pgtransit apply` runs. Plain,
//! serialisable data with no I/O: the planner builds it, `report` renders it, `execute` runs
//! it, and a saved plan (`plan --out`) is this type as JSON.
//!
//! A plan must always be applied against the servers it was computed from: its fingerprint
//! records what it was computed from (the migration plan, both servers' identities, the catalog
//! objects in scope), and `apply` refuses a plan whose fingerprint no longer matches.

use serde::{Deserialize, Serialize};

use crate::check::Check;

/// Version of the saved-plan format.
pub const PLAN_FORMAT: u32 = 1;

/// The phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pre-data: roles, schemas, extensions, types, functions, sequences, tables, views.
    Schema,
    /// Table data.
    Load,
    /// After the data: indexes, primary keys, constraints, foreign keys, triggers, materialized
    /// view refresh, sequence values, statistics.
    PostLoad,
    /// Online mode: change streaming until cutover.
    Sync,
    /// Online mode: fence, drain, sequences, verification, clean-up.
    Cutover,
}

impl Phase {
    /// Lowercase name, as in step ids and reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Schema => "schema",
            Phase::Load => "load",
            Phase::PostLoad => "post_load",
            Phase::Sync => "sync",
            Phase::Cutover => "cutover",
        }
    }

    /// Heading for reports.
    pub fn title(self) -> &'static str {
        match self {
            Phase::Schema => "Schema (before the data)",
            Phase::Load => "Load (table data)",
            Phase::PostLoad => "Post-load (after the data)",
            Phase::Sync => "Sync (change streaming)",
            Phase::Cutover => "Cutover",
        }
    }
}

/// What a step does to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Create it on the target.
    Create,
    /// Align an existing target object's owner, grants or comment (never its definition).
    Update,
    /// Copy rows.
    Copy,
    /// Run something that changes no definition (set a sequence, refresh, analyze).
    Run,
    /// Already there and equal: nothing to do (shown for the record).
    Unchanged,
    /// There but different: pgtransit will not touch it; the plan cannot be applied.
    Conflict,
}

impl Action {
    /// The symbol reports print, Terraform-style.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Copy => ">",
            Action::Run => "*",
            Action::Unchanged => "=",
            Action::Conflict => "!",
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Copy => "copy",
            Action::Run => "run",
            Action::Unchanged => "unchanged",
            Action::Conflict => "conflict",
        }
    }

    /// Whether `apply` has work to do for it.
    pub fn is_work(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Copy | Action::Run)
    }
}

/// Size estimate of a step (from the source's statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    /// Rows.
    pub rows: i64,
    /// Bytes on disk.
    pub bytes: i64,
}

/// What `apply` needs to execute a step beyond its SQL text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// Run `Step::sql` on the target in one transaction.
    TargetSql,
    /// Create a role: `Step::sql` on the target in one transaction, with the role's password
    /// verifier, read from the source as it runs, in place of `globals::VERIFIER` (so that no
    /// plan, state or log holds it).
    CreateRole {
        /// The role, on the source.
        role: String,
    },
    /// Copy a table: `COPY ... TO STDOUT` on the source under the load snapshot, streamed into
    /// `TRUNCATE` + `COPY ... FROM STDIN` on the target in one transaction.
    CopyTable {
        /// Schema.
        schema: String,
        /// Table.
        table: String,
        /// Columns copied (generated columns are computed by the target).
        columns: Vec<String>,
        /// Binary COPY (same major version, built-in types only) or text.
        #[serde(default)]
        binary: bool,
        /// For one part of a split table: the rows it copies (`WHERE` condition). A part is
        /// appended to the table (its `empty` step emptied it); a whole table is truncated and
        /// copied with `FREEZE` in one transaction.
        #[serde(default)]
        part: Option<String>,
    },
    /// Empty a split table before its parts are copied, and forget those parts in the state.
    EmptyForParts {
        /// Schema.
        schema: String,
        /// Table.
        table: String,
        /// The ids of its part steps.
        parts: Vec<String>,
    },
    /// Copy every large object (offline mode): data in chunks, owner and grants, with roles
    /// mapped by `roles` (source role → target role; a role missing here keeps the target's
    /// default owner, and its grants are left out).
    CopyLargeObjects {
        /// Source role → target role, for owners and grantees.
        #[serde(alias = "owners")]
        roles: std::collections::BTreeMap<String, String>,
    },
    /// Set a target sequence to the source's current value (plus `margin`).
    SetSequence {
        /// Schema.
        schema: String,
        /// Sequence.
        sequence: String,
        /// Added to the source's value (`cutover.sequence_margin`; 0 after the load).
        #[serde(default)]
        margin: u64,
    },
    /// Cutover: stop writes on the source for every session but the cutover's own, and record
    /// when.
    /// What it shows and runs is `planner::FenceSql`; the stream puts it up.
    Fence {
        /// The source database.
        database: String,
        /// `read_only` or `lock_tables`.
        mode: String,
    },
    /// Cutover: a barrier on the source after the fence; the stream applies everything up to it.
    Drain,
    /// Online mode: source and target compared chunk by chunk at consistent points while the
    /// stream runs (`execute::proof`, which runs with the stream), so that the cutover compares
    /// only rows changed since.
    ContinuousVerify {
        /// The tables, with their single integer key when they have one (chunked by it).
        tables: Vec<VerifyTable>,
        /// Rows read per second on each server, at most (0: no limit).
        rows_per_second: u64,
        /// Rows found different are copied again from the source, at a consistent point
        /// (`verify.repair`).
        #[serde(default)]
        repair: bool,
    },
    /// Cutover: row counts and checksums of every table, source (fenced) against target.
    Verify {
        /// The tables, with their single-column key when they have one (for chunked
        /// checksums that say where rows differ).
        tables: Vec<VerifyTable>,
    },
    /// Cutover: drop the slot and the publication on the source, the origin on the target
    /// (`planner::Leftover`: what it shows, runs, and what `abort` removes too).
    Cleanup {
        /// The slot.
        slot: String,
        /// The publication.
        publication: String,
        /// The replication origin.
        origin: String,
    },
    /// Run `Step::sql` on the source in one transaction (online mode: the publication, replica
    /// identities).
    SourceSql,
    /// Cutover with `cutover.rollback_window`, once verified: on the target, the window's
    /// publication (the tables streamed) and its slot, which starts at the cutover point; then
    /// the window's migration plan, written to `plan_path`.
    OpenWindow {
        /// The window's slot, on the target.
        slot: String,
        /// The window's publication, on the target: `CREATE PUBLICATION ... FOR TABLE` these
        /// (quoted).
        publication: String,
        /// The tables, quoted.
        tables: Vec<String>,
        /// Where the window's migration plan goes.
        plan_path: String,
        /// Its text.
        plan_text: String,
    },
    /// The rollback (a cutover of a rollback window's migration), once verified: the target,
    /// the old source, takes writes again (its cutover's read-only default reset).
    LiftTargetFence {
        /// The target's database.
        database: String,
    },
    /// Online mode (`sync.tables_without_key: replica_identity_full`): `ALTER TABLE ...
    /// REPLICA IDENTITY FULL` on the source for these tables (quoted names).
    ReplicaIdentityFull {
        /// The tables, `schema.table` quoted.
        tables: Vec<String>,
    },
    /// Online mode: create the logical replication slot on the source, on a replication session
    /// whose exported snapshot the load then copies under (a slot that exists is reused).
    CreateSlot {
        /// The slot.
        slot: String,
        /// The replication command that creates it, as the plan shows it (its syntax depends on
        /// the source's version).
        #[serde(default)]
        command: String,
    },
    /// Online mode: stream the slot's changes into the target until cutover (or Ctrl-C).
    Stream {
        /// The slot on the source.
        slot: String,
        /// The publication on the source.
        publication: String,
        /// The replication origin on the target (applied position, committed with the changes).
        origin: String,
        /// Every published table (`schema.table`, display form) and its copy step.
        tables: Vec<StreamTable>,
    },
    /// Nothing to execute (unchanged, conflict).
    None,
}

/// A table verification compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyTable {
    /// Schema.
    pub schema: String,
    /// Name.
    pub table: String,
    /// Its primary key when that is one integer column.
    #[serde(default)]
    pub key: Option<String>,
}

/// A table the stream applies changes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTable {
    /// Schema.
    pub schema: String,
    /// Name.
    pub table: String,
    /// Its copy step (a split table's `empty` step).
    pub copy_step: String,
    /// Its part steps, for a split table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
}

/// One step of the execution plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Stable identifier: the same inputs give the same id (`schema:table:public.film`).
    pub id: String,
    /// When it runs.
    pub phase: Phase,
    /// What it does.
    pub action: Action,
    /// What it is about (`table public.film`).
    pub object: String,
    /// The exact SQL it runs (statements end with `;`), or for copies the two ends of the pipe.
    pub sql: String,
    /// Size, where it matters.
    pub estimate: Option<Estimate>,
    /// Why it is done this way, for reviewers (e.g. "added after the data").
    pub note: Option<String>,
    /// For conflicts: a unified diff of the target's definition against the source's.
    pub diff: Option<String>,
    /// How apply executes it.
    pub work: Work,
    /// Ids of steps of the same phase that must finish first. Steps of a phase whose `after`
    /// steps are done may run at the same time (post-load index builds run `jobs` at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// The table a post-load build belongs to (`schema.table`, quoted where needed): its index
    /// and constraint builds start as soon as that table's copy is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// Who a server is, as recorded in the plan (never with a password).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    /// Redacted connection URL.
    pub endpoint: String,
    /// `server_version_num`.
    pub version_num: i32,
    /// `pg_control_system().system_identifier`, when readable.
    pub system_identifier: Option<String>,
    /// Database name.
    pub database: String,
}

/// What the plan was computed from, as hashes (hex SHA-256).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The migration plan text.
    pub spec: String,
    /// The source server's identity and its catalog objects in scope.
    pub source: String,
    /// The target server's identity, its catalog objects in scope, and which tables hold rows.
    pub target: String,
}

/// The cutover's expected write gap, in seconds, from the last measurements of the stream and
/// of continuous verification (`estimate::cutover`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CutoverEstimate {
    /// The fence going up.
    pub fence: f64,
    /// The drain: the stream's latency, plus its lag when last measured.
    pub drain: f64,
    /// Sequences (and refreshes).
    pub sequences: f64,
    /// Verification: rows changed since each table was proven, by key; tables never proven
    /// in full.
    pub verification: f64,
    /// The clean-up.
    pub clean_up: f64,
    /// All of it.
    pub total: f64,
    /// What it is based on.
    pub basis: Vec<String>,
}

/// What the load will move, from the source's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadEstimate {
    /// Tables to copy.
    pub tables: usize,
    /// Estimated rows.
    pub rows: i64,
    /// Bytes on disk.
    pub bytes: i64,
    /// Copies at once.
    pub jobs: usize,
    /// A rough duration: bytes at [`ASSUMED_BYTES_PER_SECOND`] per job.
    pub seconds: f64,
}

/// The copy rate per job the estimate assumes (a conservative figure for streaming COPY between
/// two servers; the benchmark measures the real one).
pub const ASSUMED_BYTES_PER_SECOND: f64 = 50e6;

/// Tables larger than this are split into parts copied in parallel, unless the migration plan
/// says otherwise (`load.split_larger_than`).
pub const DEFAULT_SPLIT_LARGER_THAN: u64 = 10_000_000_000;

/// The most parts a table is split into.
pub const MAX_PARTS: u64 = 64;

/// Default number of tables copied (and indexes built) at once.
pub const DEFAULT_JOBS: usize = 4;

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Objects to create.
    pub create: usize,
    /// Objects to align (owner, grants, comment).
    pub update: usize,
    /// Tables to copy.
    pub copy: usize,
    /// Other actions (sequences, refreshes, statistics).
    pub run: usize,
    /// Objects already there and equal.
    pub unchanged: usize,
    /// Objects that differ and block the plan.
    pub conflicts: usize,
}

/// The execution plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// [`PLAN_FORMAT`].
    pub format: u32,
    /// The migration's name.
    pub migration: String,
    /// `online` or `offline`.
    pub mode: String,
    /// The migration plan file it was computed from (for the state directory).
    pub spec_path: String,
    /// The migration plan's text (it holds no secrets; `${VAR}` references are resolved at
    /// apply time).
    pub spec_text: String,
    /// What it was computed from.
    pub fingerprint: Fingerprint,
    /// The source.
    pub source: ServerIdentity,
    /// The target.
    pub target: ServerIdentity,
    /// Preflight findings.
    pub checks: Vec<Check>,
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// Counts.
    pub summary: PlanSummary,
    /// What the load will move, when it copies anything.
    #[serde(default)]
    pub load_estimate: Option<LoadEstimate>,
    /// Every table in scope (what `verify` compares).
    #[serde(default)]
    pub tables: Vec<VerifyTable>,
    /// Online mode, once it streamed: the cutover's write gap as the last measurements predict
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover_estimate: Option<CutoverEstimate>,
    /// SHA-256 of the steps as computed: a saved plan whose steps were edited is refused.
    #[serde(default)]
    pub steps_hash: String,
    /// The role memberships its steps grant, (role, member): in a migration of several
    /// databases, the next database's plan takes them as there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships_granted: Vec<(String, String)>,
    /// The roles it carries (creates, or finds there): in a migration of several databases, the
    /// next database's plan carries them too (their settings in that database).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles_carried: Vec<String>,
}

impl Plan {
    /// Whether any step has work left (`--detailed-exitcode` 2).
    pub fn has_work(&self) -> bool {
        self.steps.iter().any(|s| s.action.is_work())
    }

    /// Whether the plan can be applied: no error check and no conflict.
    pub fn is_applicable(&self) -> bool {
        !crate::check::has_errors(&self.checks) && self.summary.conflicts == 0
    }

    /// Counts the steps by action.
    pub fn summarize(steps: &[Step]) -> PlanSummary {
        let n = |a: Action| steps.iter().filter(|s| s.action == a).count();
        PlanSummary {
            create: n(Action::Create),
            update: n(Action::Update),
            copy: n(Action::Copy),
            run: n(Action::Run),
            unchanged: n(Action::Unchanged),
            conflicts: n(Action::Conflict),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_run_in_declared_order() {
        let mut phases =
            vec![Phase::Cutover, Phase::Load, Phase::Schema, Phase::Sync, Phase::PostLoad];
        phases.sort();
        assert_eq!(
            phases,
            vec![Phase::Schema, Phase::Load, Phase::PostLoad, Phase::Sync, Phase::Cutover]
        );
    }

    #[test]
    fn only_real_actions_count_as_work() {
        assert!(Action::Create.is_work() && Action::Copy.is_work() && Action::Run.is_work());
        assert!(!Action::Unchanged.is_work() && !Action::Conflict.is_work());
    }
}
