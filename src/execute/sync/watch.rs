//! The source side of streaming: a heartbeat every second (the lag), the source's WAL
//! position, and the schema compared with what it was when streaming began (drift).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::execute::context::Session;
use crate::execute::session::stall;
use crate::execute::sync::HEARTBEAT;
use crate::state::now_f64;

/// A heartbeat emitted on the source and not yet seen in the stream.
pub(crate) struct Beat {
    pub(crate) seq: u64,
    /// When it was emitted (Unix time).
    pub(crate) at: f64,
    /// Its WAL position.
    pub(crate) lsn: u64,
    /// When the source was first seen to have sent it (its walsender's `sent_lsn` past it).
    pub(crate) sent_at: Option<f64>,
}

/// What the heartbeat task shares with the applier.
#[derive(Default)]
pub(crate) struct Heartbeats {
    /// Heartbeats emitted and not yet seen in the stream.
    pub(crate) pending: VecDeque<Beat>,
    /// The source's current WAL position at the last heartbeat.
    pub(crate) source_lsn: u64,
    /// A schema change found on the source.
    pub(crate) drift: Option<String>,
    /// This run's heartbeats say so in their content (older ones may come through the stream
    /// after a restart, and measure nothing).
    pub(crate) nonce: String,
    /// One of this run's heartbeats came through: the lag is measured.
    pub(crate) own_seen: bool,
    /// The heartbeat connection failed: why, and whether the connection went away.
    pub(crate) failed: Option<(String, bool)>,
    /// When the heartbeat being emitted now was sent off (a source that does not answer it
    /// makes the lag grow, not vanish).
    pub(crate) inflight: Option<f64>,
}

/// The definitions of the source's objects in scope, by name.
pub(crate) async fn schema_of(
    client: &Client,
    version: i32,
    scope: &crate::scope::Scope,
) -> Result<BTreeMap<String, String>, String> {
    let objects = crate::objects::read(client, version).await.map_err(|e| e.to_string())?;
    let identity = |r: &str| Some(r.to_string());
    Ok(objects
        .iter()
        .filter(|o| crate::planner::in_scope(o, scope))
        .map(|o| (o.key.to_string(), o.definition(&identity)))
        .collect())
}

/// The heartbeat task: emits a heartbeat every second, reads the source's WAL position, and
/// compares the source's schema with `baseline` every `drift_every`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch(
    source: Client,
    slot: String,
    version: i32,
    baseline: BTreeMap<String, String>,
    scope: crate::scope::Scope,
    live: Arc<std::sync::Mutex<Heartbeats>>,
    prefix: String,
    drift_every: Duration,
    walsender: Arc<std::sync::Mutex<Option<Session>>>,
) {
    let mut seq = 0u64;
    let mut last_check = Instant::now();
    let nonce = live.lock().expect("live lock").nonce.clone();
    loop {
        seq += 1;
        let emitted = now_f64();
        live.lock().expect("live lock").inflight = Some(emitted);
        let answer = tokio::time::timeout(
            stall(),
            source.query_one(
                "SELECT pg_logical_emit_message(false, $1::text, $2::text)::text, \
                        pg_current_wal_lsn()::text, r.sent_lsn::text, r.pid, \
                        r.backend_start::text \
                 FROM (SELECT) one LEFT JOIN pg_replication_slots s ON s.slot_name = $3 \
                      LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
                &[&prefix, &format!("{nonce}:{seq}"), &slot],
            ),
        )
        .await;
        live.lock().expect("live lock").inflight = None;
        let Ok(answer) = answer else {
            live.lock().expect("live lock").failed = Some((
                format!("the source did not answer a heartbeat for {} s", stall().as_secs()),
                true,
            ));
            return;
        };
        match answer {
            Ok(row) => {
                let pos = |s: Option<String>| s.and_then(|s| crate::stream::parse_lsn(&s));
                let (at, current) = (pos(row.get(0)).unwrap_or(0), pos(row.get(1)).unwrap_or(0));
                let sent = pos(row.get(2));
                if let (Some(pid), Some(started)) = (row.get(3), row.get(4)) {
                    // This stream's walsender (the slot is held by it while it streams).
                    *walsender.lock().expect("sessions lock") = Some(Session { pid, started });
                }
                let now = now_f64();
                let mut l = live.lock().expect("live lock");
                if let Some(sent) = sent {
                    for b in l.pending.iter_mut().filter(|b| b.sent_at.is_none() && b.lsn <= sent) {
                        b.sent_at = Some(now);
                    }
                }
                l.pending.push_back(Beat { seq, at: emitted, lsn: at, sent_at: None });
                l.source_lsn = l.source_lsn.max(at).max(current);
            }
            Err(e) => {
                live.lock().expect("live lock").failed = Some((
                    crate::execute::context::db_message(&e),
                    crate::execute::context::is_lost(&e),
                ));
                return;
            }
        }
        if last_check.elapsed() >= drift_every {
            last_check = Instant::now();
            let schema = tokio::time::timeout(stall(), schema_of(&source, version, &scope)).await;
            let Ok(schema) = schema else {
                live.lock().expect("live lock").failed =
                    Some((format!("the source did not answer for {} s", stall().as_secs()), true));
                return;
            };
            match schema {
                Ok(now) if now != baseline => {
                    let mut what = vec![];
                    for (k, v) in &now {
                        match baseline.get(k) {
                            None => what.push(format!("{k} was created")),
                            Some(b) if b != v => what.push(format!("{k} was altered")),
                            _ => {}
                        }
                    }
                    for k in baseline.keys().filter(|k| !now.contains_key(*k)) {
                        what.push(format!("{k} was dropped"));
                    }
                    live.lock().expect("live lock").drift = Some(what.join(", "));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    live.lock().expect("live lock").failed = Some((e, false));
                    return;
                }
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}
