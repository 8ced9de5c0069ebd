//! The rollback window (`cutover.rollback_window`): opened on the target by the cutover, once
//! verified (its publication, and its slot, which starts at the cutover point; then the
//! window's migration plan written), and, at the end of a rollback, the old source's read-only
//! default lifted. Both idempotent (a crash between verification and clean-up does them again).
//! The statements are the planner's: what the plan shows is what runs.

use std::io::Write;
use std::path::Path;

use tokio_postgres::Client;

use crate::planner::{FenceSql, window_publication_sql, window_slot_sql};

/// Opens the window on `target`: its publication, then its slot, starting where the target is
/// now (a slot an earlier cutover attempt left is dropped first: the window starts at this
/// attempt's cutover point). The slot's creation waits for the target's running transactions,
/// at most a minute (a prepared transaction would hold it forever).
pub async fn open(
    target: &Client,
    slot: &str,
    publication: &str,
    tables: &[String],
) -> Result<(), tokio_postgres::Error> {
    let published = exists(target, PUBLICATION_EXISTS, publication).await?;
    let sql = window_publication_sql(publication, tables, published);
    if !sql.is_empty() {
        target.batch_execute(&sql).await?;
    }
    if exists(target, SLOT_EXISTS, slot).await? {
        target.query_one("SELECT pg_drop_replication_slot($1)", &[&slot]).await?;
    }
    target.batch_execute("SET statement_timeout = '60s'").await?;
    let created = target.batch_execute(&window_slot_sql(slot)).await;
    target.batch_execute("SET statement_timeout = 0").await?;
    created
}

/// Closes a window that a failed cutover opened (before verification passed): its slot and
/// publication dropped, if there.
pub(crate) async fn close(
    target: &Client,
    slot: &str,
    publication: &str,
) -> Result<(), tokio_postgres::Error> {
    if exists(target, SLOT_EXISTS, slot).await? {
        target.query_one("SELECT pg_drop_replication_slot($1)", &[&slot]).await?;
    }
    if exists(target, PUBLICATION_EXISTS, publication).await? {
        target
            .batch_execute(&format!("DROP PUBLICATION {}", crate::sql::ident(publication)))
            .await?;
    }
    Ok(())
}

const PUBLICATION_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)";
const SLOT_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)";

async fn exists(target: &Client, sql: &str, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(target.query_one(sql, &[&name]).await?.get(0))
}

/// The window's migration plan, written whole or not at all (a file of its own, synced, then
/// renamed).
pub fn write_plan(path: &str, text: &str) -> Result<(), String> {
    let path = Path::new(path);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("yaml.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write the rollback window's plan {}: {e}", path.display()))
}

/// The old source, at the end of a rollback, takes writes again.
pub async fn lift_target_fence(
    target: &Client,
    database: &str,
) -> Result<(), tokio_postgres::Error> {
    target.batch_execute(&FenceSql::lift(database)).await
}
