//! pgtransit moves a live PostgreSQL database from one server to another, from a migration plan
//! (YAML) that can be reviewed, through an execution plan that shows every step's SQL, with a
//! state that makes every run resumable.
//!
//! Data flows one way, and no module imports one that imports it back:
//! `migration_plan` (the user's YAML) → `catalog`, `objects` and `dump` (read-only
//! introspection of each server) → `preflight` (pure checks, `check` findings) → `planner`
//! (pure diff → ordered steps) → `execution_plan` (plain data) → `execute` (runs the steps,
//! writes the `state`) → `report` (text, markdown and JSON). `commands` run the subcommands
//! and `cli` parses the arguments and dispatches to them; `conn` makes libpq-compatible
//! connections and `stream` the replication session; `cluster` starts throwaway local servers
//! for the demo, the tests and the benchmarks.

pub mod catalog;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod conn;
pub mod databases;
pub mod dump;
pub mod estimate;
pub mod execute;
pub mod execution_plan;
pub mod globals;
pub mod hash;
pub mod migration_plan;
pub mod naming;
pub mod objects;
pub mod pattern;
pub mod planner;
pub mod preflight;
pub mod report;
pub mod rollback;
pub mod scope;
pub mod sql;
pub mod state;
pub mod status;
pub mod stream;
pub mod verify;
