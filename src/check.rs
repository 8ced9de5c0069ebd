//! A finding about a migration (`Check`): a stable code, a severity, the object, a message and
//! the fix. `preflight` produces most of them and the planner a few; the execution plan carries
//! them and the report prints them.

use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The migration cannot work until this is fixed: `plan` exits 1.
    Error,
    /// It will work, but something needs attention or will behave differently.
    Warning,
    /// What the migration will do about something notable.
    Info,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable identifier, e.g. `wal_level_not_logical`.
    pub code: String,
    /// Error, warning or info.
    pub severity: Severity,
    /// What it is about, e.g. `source`, `table public.film`, `role app_owner`.
    pub object: String,
    /// What was found, and what pgtransit will do about it.
    pub message: String,
    /// The exact fix (SQL, or the setting and whether it needs a restart), when there is one.
    pub fix: Option<String>,
}

/// Whether any finding is an error.
pub fn has_errors(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.severity == Severity::Error)
}
