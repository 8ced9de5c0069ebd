//! pgtransit moves a live PostgreSQL database from one server to another, from a migration plan
//! (YAML) that can be reviewed, through an execution plan that shows every step's SQL, with a
//! state that makes every run resumable.
//!
//! Data flows one way:
//! `spec` (the migration plan) → `catalog` (read-only introspection of each server) →
//! `preflight` (pure checks) → planner (pure diff → ordered steps) → apply (runs steps, writes
//! state) → `report` (text and JSON). `cli` is the composition root that wires them together;
//! `conn` makes libpq-compatible connections; `cluster` starts throwaway local servers for the
//! demo, the tests and the benchmark.

pub mod catalog;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod conn;
pub mod dump;
pub mod execute;
pub mod hash;
pub mod naming;
pub mod objects;
pub mod pattern;
pub mod plan;
pub mod planner;
pub mod preflight;
pub mod report;
pub mod scope;
pub mod spec;
pub mod sql;
pub mod state;
pub mod status;
pub mod stream;
pub mod verify;
