//! The integration suite: one binary. Tests start their own throwaway PostgreSQL clusters (see
//! `pgtransit::cluster`) and run the real `pgtransit` binary against them.

// Shared helpers: clusters, the binary, migration plan files.
mod support;

// `plans/` examples, the committed JSON Schema, `validate`, located YAML errors, secrets.
mod plan_files;
// `pgtransit plan` preflight checks against real servers.
mod preflight;
// `pgtransit demo` end to end.
mod demo;
// libpq-compatible connections: passwords, pgpass, TLS modes, retries, application_name.
mod connections;
// Offline migrations: execution plans, saved plans, apply, state, resume, conflicts, lock.
mod offline;
// Golden renderings of execution plans (text, markdown, JSON): a hand-built one (no server),
// and what `pgtransit plan` produces for a fixed schema on two real servers.
mod golden;
// Online migrations: slot and snapshot, change streaming, status, abort, resume, drift.
mod online;
// The rollback window after a cutover: the old source follows, rollback, finish.
mod rollback;
// Whole-server migrations: several databases and every role in one migration plan.
mod server;
// Roles (attributes, memberships, settings, SCRAM verifiers) and database properties.
mod globals;
// Chaos: kills, crashes and network faults at seeded moments of an online migration under
// writes.
mod chaos;
// The version matrix: PostgreSQL 13 to 18 (installed from the package registries), offline to
// the same major and online under writes to a newer one.
mod versions;
// PostgreSQL's own regression database migrated offline, against pg_dump | pg_restore (opt-in
// locally: PGTRANSIT_REGRESS=1; always under CI).
mod regression;
