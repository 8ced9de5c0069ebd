//! Change streaming (online mode): the slot's changes applied to the target, exactly once.
//!
//! - **Exactly once.** Every target transaction ends with
//!   `pg_replication_origin_xact_setup(<source commit end>, ...)`: the applied source position is
//!   committed with the changes. A restart reads it back and streams from there; only then is
//!   the slot told (standby status update) that the position is durable.
//! - **Consistent with the copies.** Each table was copied under a snapshot whose visible
//!   transactions the stream skips for that table (`XidSnapshot::sees`), and applies the rest.
//! - **Fast.** Source transactions are batched into target transactions (up to
//!   [`BATCH_CHANGES`] changes or [`BATCH_AGE`]), statements are prepared once per table and
//!   shape, and pipelined (up to [`PIPELINE`] in flight). Memory stays bounded whatever the size
//!   of a source transaction.
//! - **Faithful.** Values travel in their text form under pinned session settings, or in binary
//!   where both servers read it the same (`catalog::binary_types`; keys read back into text by
//!   `text_form` for verification); `INSERT`
//!   says `OVERRIDING SYSTEM VALUE` (identity columns); unchanged TOAST values are left out of
//!   `UPDATE`; a key change moves the row; `session_replication_role = replica` keeps target
//!   triggers and foreign-key checks from firing for replicated rows.
//! - **Watched.** A heartbeat (`pg_logical_emit_message`) every second measures the lag; the
//!   source's schema is compared every few seconds with what it was when streaming began, and a
//!   change stops the stream with what changed (DDL is not replicated).

mod applier;
mod coalesce;
mod run;
#[cfg(test)]
mod server_tests;
mod text_form;
mod watch;

use std::time::Duration;

pub use run::{StreamRequest, stream};

use crate::execute::context::ApplyError;
use crate::execute::cutover::Fenced;

/// A target transaction is committed after this many changes...
pub const BATCH_CHANGES: usize = 20_000;

/// ... or when it is this old, at the next source commit.
pub const BATCH_AGE: Duration = Duration::from_millis(100);

/// Statements sent ahead of their results...
pub const PIPELINE: usize = 1024;

/// ... and the most their parameters may take (a set-based statement carries many rows).
pub const PIPELINE_BYTES: usize = 4 << 20;

/// The changes of a batch are buffered (coalesced per row) up to about this much memory, then
/// sent as set-based statements; the batch goes on.
pub const BUFFER_BYTES: usize = 2 << 20;

/// A batch open between source transactions is committed once the stream has been quiet this
/// long (so a lone transaction is applied at once, and a busy stream fills batches).
pub const IDLE: Duration = Duration::from_millis(5);

/// The longest the drain may take after the fence (the lag was under `sync.max_lag`).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// How often the heartbeat is emitted on the source.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Why streaming stopped without an error.
pub enum Stopped {
    /// Ctrl-C or SIGTERM: the next `apply` resumes.
    OnRequest,
    /// The cutover fenced the source and the stream applied everything up to the barrier.
    Drained(Box<Fenced>),
}

/// Schema changes on the source since streaming began.
pub(crate) fn drift_error(what: String) -> ApplyError {
    ApplyError::Drift(what)
}
