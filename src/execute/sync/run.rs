//! One run of the stream: the target session and its origin, the replication stream, the
//! applier's loop, progress reports, and the cutover's fence and drain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::execute::context::{ApplyError, Ctx, Event, Session, pg, sync_error};
use crate::execute::cutover::{CutoverRequest, Fenced, fence, triggered};
use crate::execute::proof::{PauseAt, Proving, hold, pause};
use crate::execute::session::{Progress, end_previous, stall, stuck, stuck_target};
use crate::execute::sync::applier::{Applier, Pipeline, XidSnapshot};
use crate::execute::sync::watch::{Heartbeats, schema_of, watch};
use crate::execute::sync::{DRAIN_LIMIT, IDLE, Stopped, drift_error};
use crate::execution_plan::StreamTable;
use crate::sql::literal;
use crate::state::{Counters, State, now_f64};
use crate::stream::{Change, ChangeSource, PgoutputStream, StreamSettings};

/// Streams changes until Ctrl-C (or an error). `r.tables` are the published tables and their
/// copy steps; `state` has their copy snapshots and receives the progress.
pub async fn stream(
    ctx: &Ctx<'_>,
    r: &StreamRequest<'_>,
    state: &mut State,
) -> Result<Stopped, ApplyError> {
    let text = &ctx.sessions.text_values;
    if state.sync.as_ref().is_some_and(|s| s.text_values) {
        text.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    loop {
        let was_text = text.load(std::sync::atomic::Ordering::SeqCst);
        let result = stream_once(ctx, r, state).await;
        // A stream in binary that met a column it was not chosen for starts again at once, in
        // text, from the target's applied position (the state records it, so that later runs
        // stream in text too): not a lost connection, no wait. Unless the source is fenced and
        // not drained: then the fence is lifted, as for any failure there.
        let fenced = state.cutover.as_ref().is_some_and(|c| c.fenced_undrained());
        match result {
            Err(ApplyError::ConnectionLost(_))
                if !was_text && text.load(std::sync::atomic::Ordering::SeqCst) && !fenced =>
            {
                tracing::warn!("streaming again, in text");
            }
            other => return other,
        }
    }
}

/// What a stream applies, and how (see [`stream`]).
#[derive(Clone, Copy)]
pub struct StreamRequest<'a> {
    /// The slot on the source.
    pub slot: &'a str,
    /// The publication.
    pub publication: &'a str,
    /// The replication origin on the target.
    pub origin: &'a str,
    /// The streamed tables.
    pub tables: &'a [StreamTable],
    /// Ready for cutover below this lag.
    pub max_lag: Duration,
    /// How often the source's schema is compared with the baseline.
    pub drift_every: Duration,
    /// The migration's scope.
    pub scope: &'a crate::scope::Scope,
    /// A cutover to run from the stream.
    pub cutover: Option<&'a CutoverRequest<'a>>,
    /// Continuous verification.
    pub proving: &'a Proving,
}

/// One stream, from the target's applied position until it stops (see [`stream`]).
async fn stream_once(
    ctx: &Ctx<'_>,
    r: &StreamRequest<'_>,
    state: &mut State,
) -> Result<Stopped, ApplyError> {
    let StreamRequest {
        slot,
        publication,
        origin,
        tables,
        max_lag,
        drift_every,
        scope,
        cutover,
        proving,
    } = *r;
    let servers = ctx.servers;
    let mut tables_by_name = HashMap::new();
    for t in tables {
        let record = t.parts.first().unwrap_or(&t.copy_step);
        let snapshot = state.steps.get(record).and_then(|r| {
            let snapshot = XidSnapshot::parse(r.source_snapshot.as_deref()?)?;
            let at = crate::stream::parse_lsn(r.source_lsn.as_deref()?)?;
            Some((snapshot, at))
        });
        tables_by_name.insert((t.schema.clone(), t.table.clone()), snapshot);
    }
    let mut sync = state.sync.clone().unwrap_or_default();
    sync.streaming = true;
    sync.pid = Some(std::process::id());
    sync.error = None;
    sync.max_lag_seconds = max_lag.as_secs_f64();

    // Target: one session, its origin set up; the position it has applied.
    let target = crate::execute::context::connect_target(servers, "pgtransit/sync").await?;
    let pinned = crate::conn::PINNED_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", literal(v)))
        .collect::<String>();
    target
        .batch_execute(&format!("{} {pinned}", crate::planner::APPLY_SESSION))
        .await
        .map_err(pg)?;
    // The target session of a stream this process lost may still hold the origin, or be about
    // to commit a batch: it ends before the applied position is read.
    let previous = ctx.sessions.stream_target.lock().expect("sessions lock").clone();
    if let Some(session) = previous {
        end_previous(&target, &session, "target session").await?;
    }
    let me = Session::of(&target).await.map_err(pg)?;
    *ctx.sessions.stream_target.lock().expect("sessions lock") = Some(me.clone());
    target
        .query_one("SELECT pg_replication_origin_session_setup($1)", &[&origin])
        .await
        .map_err(pg)?;
    let start: Option<String> = target
        .query_one("SELECT pg_replication_origin_progress($1, true)::text", &[&origin])
        .await
        .map_err(pg)?
        .get(0);
    let start = start.as_deref().and_then(crate::stream::parse_lsn).unwrap_or(0);
    // Rows changed are recorded from here on (for the whole process: a reconnect goes on).
    proving.touched.lock().expect("touched lock").since.get_or_insert(start);

    // Source: heartbeat and schema watch on their own connection.
    let live = Arc::new(std::sync::Mutex::new(Heartbeats {
        nonce: format!("{}.{}", std::process::id(), now_f64()),
        ..Heartbeats::default()
    }));
    let prefix = crate::naming::message_prefix(slot);
    let (heartbeat, heartbeat_session, slot_flushed, (binary, values)) = {
        let source =
            crate::conn::connect_with(&servers.source, "pgtransit/heartbeat", &servers.policy)
                .await?;
        // Who it is on the source: the fence leaves it alone.
        let session = Session::of(&source).await.map_err(pg)?;
        let slot_flushed = if start == 0 { slot_confirmed(&source, slot).await } else { 0 };
        let version: i32 = source
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(pg)?
            .get(0);
        // (Failing to read it right after connecting is most likely the server going away.)
        let baseline =
            schema_of(&source, version, scope).await.map_err(ApplyError::ConnectionLost)?;
        let text_only = ctx.sessions.text_values.load(std::sync::atomic::Ordering::SeqCst);
        let values =
            values_format(&source, version, &target, publication, tables, text_only).await?;
        // The walsender of a stream this process lost still holds the slot: ended first.
        // (Kept until this stream's own replaces it: a failure here tries again next time.)
        let previous = ctx.sessions.walsender.lock().expect("sessions lock").clone();
        if let Some(session) = previous {
            end_previous(&source, &session, "walsender").await?;
        }
        let (live, prefix, scope) = (live.clone(), prefix.clone(), scope.clone());
        let walsender = ctx.sessions.walsender.clone();
        let slot = slot.to_string();
        let task = tokio::spawn(async move {
            watch(source, slot, version, baseline, scope, live, prefix, drift_every, walsender)
                .await
        });
        (task, session, slot_flushed, values)
    };
    sync.values = Some(values);
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _heartbeat = AbortOnDrop(heartbeat);
    let _verifier = proving.settings.as_ref().map(|settings| {
        let task = crate::execute::proof::verify_continuously(
            servers.clone(),
            slot.to_string(),
            settings.clone(),
            proving.clone(),
        );
        AbortOnDrop(tokio::spawn(task))
    });

    let mut stream = PgoutputStream::start(StreamSettings {
        source: &servers.source,
        slot,
        publication,
        start,
        application_name: "pgtransit/sync",
        binary: binary.is_some(),
    })
    .await
    .map_err(|e| {
        let message = format!("cannot start streaming from slot {slot}: {e}");
        // A slot still held by the session of a stream that just ended (killed, or lost)
        // is released in a moment: worth another try.
        if e.transient || e.message.contains("is active for PID") {
            ApplyError::ConnectionLost(message)
        } else {
            sync_error(message)
        }
    })?;
    tracing::info!(slot, from = %crate::stream::lsn_text(start), "streaming changes");

    let target = Arc::new(target);
    let beat = Progress::default();
    beat.now();
    let mut a = Applier {
        ctx,
        tables_by_name,
        tables: HashMap::new(),
        pipe: Pipeline::new(target.clone(), beat.clone()),
        open: false,
        in_source_tx: None,
        replayed: false,
        final_lsn: 0,
        buffer: Default::default(),
        batch_started: Instant::now(),
        batch_changes: 0,
        last_commit: None,
        origin_sent: None,
        batch_counts: BTreeMap::new(),
        batch_total: Counters::default(),
        applied_lsn: start,
        confirmed: start.max(slot_flushed),
        sync,
        prefix,
        barrier: crate::naming::barrier_prefix(slot),
        touched: proving.settings.is_some().then(|| proving.touched.clone()),
        caught_up: proving.caught_up.clone(),
        rate_sample: None,
        ignore_origin: ctx.spec.rollback_of.as_deref().map(crate::naming::origin_name),
        from_ignored_origin: false,
        binary: binary.map(Arc::new),
    };
    // The watchdog: a server that stops answering on a connection still open would hold the
    // applier forever.
    let result = tokio::select! {
        r = run_stream(&mut a, &mut stream, &live, cutover, &heartbeat_session, proving, state) => r,
        () = stuck_target(&beat, servers, &me) => Err(ApplyError::ConnectionLost(format!(
            "nothing moved for {} s: a server stopped answering on a connection that is still \
             open (the target, or the source during the cutover)",
            stuck().as_secs()
        ))),
    };
    if result.is_err() {
        // (A server that stopped answering does not answer this either: its session is ended
        // by the next stream, before that one reads its position.)
        let _ = tokio::time::timeout(Duration::from_secs(5), a.rollback()).await;
    }
    a.sync.streaming = false;
    a.sync.text_values |= ctx.sessions.text_values.load(std::sync::atomic::Ordering::SeqCst);
    if let Err(e) = &result {
        a.sync.error = Some(e.to_string());
    }
    report(&mut a, &live, state);
    state.verification = Some(proving.proofs());
    ctx.state_dir.save(state)?;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.stop()).await;
    result
}

/// Whether the stream's values come in binary: both servers PostgreSQL 14 or later, the target
/// of the source's major or a later one, and every published column of a type whose binary form
/// both read the same (`catalog::binary_types`). `Some`: the types, for the applier. Recorded
/// in the state (`status` shows it) and logged, with why not.
async fn values_format(
    source: &tokio_postgres::Client,
    version: i32,
    target: &tokio_postgres::Client,
    publication: &str,
    tables: &[StreamTable],
    text_only: bool,
) -> Result<(Option<HashMap<u32, u32>>, String), ApplyError> {
    let target_version: i32 = target
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(pg)?
        .get(0);
    // A server gone is waited for; any other failure to read the types streams in text.
    let lost = |e: crate::catalog::CatalogError| {
        if crate::execute::context::is_lost(e.postgres()) {
            Err(ApplyError::ConnectionLost(e.to_string()))
        } else {
            Ok(format!("the column types could not be read: {e}"))
        }
    };
    let decided = if text_only {
        Err("an earlier stream of this migration met a column it was not chosen for".to_string())
    } else if version < 140000 {
        Err("the source is older than PostgreSQL 14".to_string())
    } else if target_version / 10000 < version / 10000 {
        Err("the target is of an older major version".to_string())
    } else {
        let names: Vec<(String, String)> =
            tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect();
        match (
            crate::catalog::read_stream_columns(source, publication).await,
            crate::catalog::read_column_types(target, &names).await,
        ) {
            (Ok(columns), Ok(on_target)) => crate::catalog::binary_types(&columns, &on_target),
            (Err(e), _) | (_, Err(e)) => Err(lost(e)?),
        }
    };
    Ok(match decided {
        Ok(types) => {
            tracing::info!("values streamed in binary");
            (Some(types), "binary".to_string())
        }
        Err(why) => {
            tracing::info!(why = why.as_str(), "values streamed in text");
            (None, format!("text ({why})"))
        }
    })
}

/// Where the slot's stream begins (its confirmed position; 0 when it cannot be read): before
/// the first batch commits, nothing is applied (0/0), and the lag counts from there, not from
/// the start of the source's WAL.
async fn slot_confirmed(source: &tokio_postgres::Client, slot: &str) -> u64 {
    crate::catalog::read_slot(source, slot)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.confirmed_flush_lsn)
        .and_then(|l| crate::stream::parse_lsn(&l))
        .unwrap_or(0)
}

/// Writes the progress into the state and tells the report. Returns the lag in seconds.
/// Whether the cutover's fence goes up now (`due`: none asked for, or whether this database is
/// ready). With several databases cut over together: only once every one is ready (or one's
/// fence is up); a cutover another database abandoned stops this stream too.
async fn together_due(
    a: &mut Applier<'_>,
    stream: &mut PgoutputStream,
    due: Option<bool>,
) -> Result<bool, ApplyError> {
    let (Some(ready), Some((together, member))) = (due, a.ctx.together) else {
        return Ok(due.unwrap_or(false));
    };
    if let Some(crate::execute::together::Decision::Abort(why)) = together.decided()
        && !a.ctx.cancel.requested()
    {
        if a.in_source_tx.is_none() {
            a.commit_all(stream).await?;
        }
        return Err(ApplyError::Abandoned(why));
    }
    Ok(together.may_fence(member, ready))
}

fn report(
    a: &mut Applier<'_>,
    live: &std::sync::Mutex<Heartbeats>,
    state: &mut State,
) -> Option<f64> {
    let now = now_f64();
    let l = live.lock().expect("live lock");
    let measured = l.pending.front().map(|b| (now - b.at).max(0.0)).unwrap_or(0.0);
    // A heartbeat the source has not even answered yet counts from when it was sent off.
    let measured = measured.max(l.inflight.map_or(0.0, |t| (now - t - 1.0).max(0.0)));
    // Until one of this run's heartbeats came through, the stream may still be replaying a
    // backlog of unknown size: the lag is unknown (and the migration not ready).
    let known = l.own_seen;
    let lag_seconds = if known { measured } else { measured.max(a.sync.max_lag_seconds + 1.0) };
    let lag_bytes = l.source_lsn.saturating_sub(a.confirmed);
    a.sync.source_lsn = (l.source_lsn > 0).then(|| crate::stream::lsn_text(l.source_lsn));
    drop(l);
    // Before the first batch commits, what is applied is where the slot's stream began (or
    // what the source's keepalives said had nothing to apply): never 0/0, whose lag would be
    // the source's whole WAL once apply stops.
    a.sync.applied_lsn = Some(crate::stream::lsn_text(a.applied_lsn.max(a.confirmed)));
    a.sync.lag_bytes = Some(lag_bytes);
    a.sync.lag_seconds = known.then_some(lag_seconds);
    if known && lag_seconds == 0.0 {
        a.sync.caught_up_at = Some(now);
    }
    a.sync.reported_at = now;
    // The rate of changes, a moving average over about ten reports.
    let c = &a.sync.applied;
    let rows = c.inserts + c.updates + c.deletes;
    if let Some((at, before)) = a.rate_sample
        && now - at >= 0.5
    {
        let rate = rows.saturating_sub(before) as f64 / (now - at);
        let avg = a.sync.changes_per_second.map_or(rate, |r| r * 0.9 + rate * 0.1);
        a.sync.changes_per_second = Some(avg);
        a.rate_sample = Some((now, rows));
    } else if a.rate_sample.is_none() {
        a.rate_sample = Some((now, rows));
    }
    state.sync = Some(a.sync.clone());
    let ready = known && lag_seconds <= a.sync.max_lag_seconds;
    a.caught_up.store(ready && a.sync.streaming, std::sync::atomic::Ordering::SeqCst);
    (a.ctx.events)(Event::Streaming { lag_bytes, lag_seconds, applied: a.sync.applied, ready });
    known.then_some(lag_seconds)
}

/// A heartbeat came through the stream: this run's (its content says so) is no longer
/// pending, nor any before it.
fn heartbeat_seen(live: &std::sync::Mutex<Heartbeats>, content: &[u8]) {
    let text = std::str::from_utf8(content).unwrap_or_default();
    let mut l = live.lock().expect("live lock");
    if let Some((nonce, seq)) = text.rsplit_once(':')
        && nonce == l.nonce
        && let Ok(seq) = seq.parse::<u64>()
    {
        l.own_seen = true;
        l.pending.retain(|b| b.seq > seq);
    }
}

/// Waited `waited` in vain, though the source says it sent a heartbeat as long ago: what it
/// sends does not arrive.
fn stalled(waited: Duration, live: &std::sync::Mutex<Heartbeats>) -> Result<(), ApplyError> {
    if waited > stall() {
        let sent = live.lock().expect("live lock").pending.front().and_then(|b| b.sent_at);
        if let Some(t) = sent.filter(|t| now_f64() - t > stall().as_secs_f64()) {
            return Err(ApplyError::ConnectionLost(format!(
                "the replication stream is stalled: nothing arrived for {:.0} s of waiting, \
                 though the source sent a heartbeat {:.0} s ago",
                waited.as_secs_f64(),
                now_f64() - t
            )));
        }
    }
    Ok(())
}

/// A verification round's consistent point, reached by `change`: everything that commits
/// before it is applied and committed, nothing after; the stream stands still there until the
/// round's target snapshot is taken.
async fn at_consistent_point(
    a: &mut Applier<'_>,
    stream: &PgoutputStream,
    change: &Change,
    pause_at: &mut Option<PauseAt>,
) -> Result<(), ApplyError> {
    let reached = match change {
        Change::Begin { final_lsn, .. } => Some(*final_lsn),
        Change::Message { lsn, transactional: false, .. } if a.in_source_tx.is_none() => Some(*lsn),
        _ => None,
    };
    if let Some(at) = reached
        && pause_at.as_ref().is_some_and(|p| at >= p.lsn)
        && let Some(p) = pause_at.take()
    {
        a.commit_all(stream).await?;
        pause(p).await;
    }
    Ok(())
}

async fn run_stream(
    a: &mut Applier<'_>,
    stream: &mut PgoutputStream,
    live: &std::sync::Mutex<Heartbeats>,
    cutover: Option<&CutoverRequest<'_>>,
    heartbeat: &Session,
    proving: &Proving,
    state: &mut State,
) -> Result<Stopped, ApplyError> {
    let mut fenced: Option<Fenced> = None;
    // A verification round's consistent point, once the applier knows it.
    let mut pause_at: Option<PauseAt> = None;
    let barrier = a.barrier.clone();
    let mut last_report = Instant::now();
    let mut last_event = Instant::now();
    // How long the applier has waited on the stream, in vain, since the last change came (time
    // spent on the target, the fence or the reports does not count).
    let mut waited = Duration::ZERO;
    // One timer for the whole stream, moved when the loop waits, where a timer per message
    // registered and removed itself each time. (The select is not skipped when the stream has
    // something ready: its `next()` must not be dropped while pending, as the replication
    // client's end of stream is not cancel-safe.)
    let sleep = tokio::time::sleep(Duration::from_millis(50));
    tokio::pin!(sleep);
    loop {
        // (The clock is read three times a message rather than five: on some machines a read
        // costs a twentieth of what pgtransit spends on a change.)
        let now = Instant::now();
        a.pipe.beat.at(now);
        // Between source transactions with a batch open (or its commit in flight), a quiet
        // stream (nothing for IDLE) commits it at once and waits for it; otherwise wake up now
        // and then for the reports and Ctrl-C.
        let idle = (a.open || a.pipe.commits > 0) && a.in_source_tx.is_none();
        let wake: tokio::time::Instant =
            if idle { last_event + IDLE } else { now + Duration::from_millis(50) }.into();
        let next = tokio::select! {
            // The target's results first: they move statements in flight on (a COPY's data
            // goes once the server is ready for it). Then what the stream has ready (a
            // deadline already past must not win).
            biased;
            r = a.pipe.progress() => {
                r.map_err(pg)?;
                continue;
            }
            c = stream.next() => Some(c),
            // (The timer is moved only when it is waited on: not while the stream has more.)
            _ = async {
                if sleep.deadline() != wake {
                    sleep.as_mut().reset(wake);
                }
                sleep.as_mut().await
            } => None,
        };
        if next.is_none() {
            waited += now.elapsed();
        }
        if let Some(Ok(Some(_))) = &next {
            waited = Duration::ZERO;
        }
        match next {
            None => {
                stalled(waited, live)?;
                if (a.open || a.pipe.commits > 0) && a.in_source_tx.is_none() {
                    a.commit_all(stream).await?;
                }
            }
            Some(Err(e)) if e.transient => {
                return Err(ApplyError::ConnectionLost(format!("the replication stream: {e}")));
            }
            Some(Err(e)) => {
                return Err(sync_error(format!("the replication stream ended: {e}")));
            }
            Some(Ok(None)) => {
                return Err(ApplyError::ConnectionLost(
                    "the source ended the replication stream".into(),
                ));
            }
            Some(Ok(Some(change))) => {
                last_event = Instant::now();
                at_consistent_point(a, stream, &change, &mut pause_at).await?;
                match change {
                    Change::Begin { xid, final_lsn, .. } => a.begin(xid, final_lsn),
                    Change::Origin { name } => a.origin(&name),
                    Change::Commit { end_lsn, commit_time } => {
                        a.commit(end_lsn, commit_time, stream).await?;
                    }
                    Change::Message { prefix, lsn, .. }
                        if prefix == barrier
                            && fenced.as_ref().is_some_and(|f| lsn >= f.barrier_lsn) =>
                    {
                        // Everything committed before the fence is applied: drained. (The
                        // barrier comes in a transaction of its own, which has nothing else.)
                        a.commit_all(stream).await?;
                        report(a, live, state);
                        if let Some(f) = fenced.take() {
                            return Ok(Stopped::Drained(Box::new(f)));
                        }
                    }
                    Change::Message { prefix, content, transactional: false, .. }
                        if prefix == a.prefix =>
                    {
                        // A heartbeat: everything before it was received. Commit what is open, so
                        // what was received is applied.
                        if a.in_source_tx.is_none() {
                            a.commit_all(stream).await?;
                        }
                        heartbeat_seen(live, &content);
                    }
                    Change::KeepAlive { wal_end } => {
                        if !a.open
                            && a.pipe.commits == 0
                            && a.in_source_tx.is_none()
                            && wal_end > a.confirmed
                        {
                            a.confirmed = wal_end;
                            stream.ack(wal_end);
                        }
                    }
                    other => a.change(other).await?,
                }
            }
        }
        // A verification round asks to hold between source transactions, its batch committed,
        // while it takes its consistent point (never during the cutover).
        if a.in_source_tx.is_none()
            && pause_at.is_none()
            && fenced.is_none()
            && let Some(r) = proving.take_request()
        {
            a.commit_all(stream).await?;
            pause_at = hold(r).await;
        }
        // (When another database's fence is up, this one follows within 50 ms, not at its next
        // report: the databases' write gap is one.)
        let follow = fenced.is_none() && a.ctx.together.is_some_and(|(t, _)| t.fencing());
        let every = if follow { Duration::from_millis(50) } else { Duration::from_secs(1) };
        if last_report.elapsed() >= every {
            last_report = Instant::now();
            let (drift, failed) = {
                let l = live.lock().expect("live lock");
                (l.drift.clone(), l.failed.clone())
            };
            if let Some(what) = drift {
                if a.in_source_tx.is_none() {
                    a.commit_all(stream).await?;
                }
                return Err(drift_error(format!("since streaming began on the source: {what}")));
            }
            if let Some((e, gone)) = failed {
                let message = format!("the heartbeat connection to the source: {e}");
                return Err(if gone {
                    ApplyError::ConnectionLost(message)
                } else {
                    sync_error(message)
                });
            }
            a.settle(stream);
            let lag = report(a, live, state);
            state.verification = Some(proving.proofs());
            a.ctx.state_dir.save(state)?;
            // An idle stream sends the target nothing: make sure it is still there.
            if !a.open && a.pipe.is_idle() {
                a.pipe.client.batch_execute("").await.map_err(pg)?;
            }
            let due = cutover
                .filter(|_| fenced.is_none())
                .map(|c| lag.is_some_and(|l| l <= a.sync.max_lag_seconds) && triggered(&c.trigger));
            let due = together_due(a, stream, due).await?;
            if let Some(c) = cutover
                && due
            {
                // (A round waiting for its consistent point is abandoned, and none starts.)
                pause_at = None;
                proving.halt();
                // Nothing in flight while the fence goes up (a COPY waits for its data until
                // the pipeline is polled): the statements sent are done, the batch still open.
                a.pipe.drain().await.map_err(pg)?;
                a.settle(stream);
                fenced = Some(fence(a.ctx, c, &barrier, &[heartbeat], state).await?);
            }
        }
        if let Some(f) = &fenced
            && f.at.elapsed() > DRAIN_LIMIT
        {
            return Err(sync_error(format!(
                "the barrier emitted after the fence did not come through the stream within {} s",
                DRAIN_LIMIT.as_secs()
            )));
        }
        if a.ctx.cancel.requested() && fenced.is_none() {
            if a.in_source_tx.is_none() {
                a.commit_all(stream).await?;
            } else {
                a.rollback().await;
            }
            return Ok(Stopped::OnRequest);
        }
    }
}
