//! The load: the source's snapshot (exported, or the slot's), and the copies under it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::conn;
use crate::execution_plan::{Step, Work};
use crate::sql::{ident, literal};
use crate::state::{State, StateDir};

use crate::execute::context::Session;
use crate::execute::context::{
    ApplyError, Ctx, Event, again_after_deadlock, connect_target, db_message, failed, failpoint,
    step_done, step_error,
};
use crate::execute::session::{Progress, end_previous, stuck};
use crate::execute::steps::{run_phase, run_step, schedule};

/// The load phase: copies run `jobs` at a time, all under one exported snapshot.
pub(crate) async fn load(
    steps: &[&Step],
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<(), ApplyError> {
    let Ctx { servers, state_dir, jobs, events, .. } = *ctx;
    let earlier = ctx.sessions.load.lock().expect("sessions lock").clone();
    if !earlier.is_empty() {
        let target = connect_target(servers, "pgtransit/apply").await?;
        for session in &earlier {
            end_previous(&target, session, "load session").await?;
        }
        ctx.sessions.load.lock().expect("sessions lock").retain(|s| !earlier.contains(s));
    }
    // Several databases: this one's turn first (its slot keeps WAL from when it is created).
    if let Some((pool, rank)) = ctx.pool {
        drop(pool.acquire(rank).await);
    }
    // Online mode: the source's replica identities and publication, then the slot, before any
    // copy: the copies read the snapshot the slot exports.
    let (setup, steps): (Vec<&Step>, Vec<&Step>) = steps.iter().partition(|s| {
        matches!(
            s.work,
            Work::SourceSql | Work::ReplicaIdentityFull { .. } | Work::CreateSlot { .. }
        )
    });
    let mut slot_session = None;
    for step in setup.into_iter().filter(|s| s.action.is_work()) {
        match &step.work {
            Work::CreateSlot { slot, command } => {
                slot_session = create_slot(step, slot, command, ctx, state).await?
            }
            _ => run_phase(&[step], 1, ctx, state).await?,
        }
    }
    let steps = &steps[..];
    // A split table is redone whole (its `empty` step, then every part) unless the state says
    // all of it was done under this plan: the planner's rule, applied to the state as it is now.
    let mut redo: std::collections::HashSet<&str> = Default::default();
    let mut complete: std::collections::HashSet<&str> = Default::default();
    for s in steps.iter().filter(|s| s.action.is_work()) {
        if let Work::EmptyForParts { parts, .. } = &s.work {
            let done = |id: &str| state.is_done_in_this_plan(id);
            if crate::planner::split_table_complete(&s.id, parts, &done) {
                complete.insert(s.id.as_str());
                complete.extend(parts.iter().map(String::as_str));
            } else {
                redo.insert(s.id.as_str());
                redo.extend(parts.iter().map(String::as_str));
            }
        }
    }
    let is_pending = |s: &Step| {
        s.action.is_work()
            && !complete.contains(s.id.as_str())
            && (redo.contains(s.id.as_str()) || !state.is_done_in_this_plan(&s.id))
    };
    let pending: Vec<&Step> = steps.iter().copied().filter(|s| is_pending(s)).collect();
    for s in steps.iter().filter(|s| s.action.is_work() && !is_pending(s)) {
        events(Event::Skipped { object: s.object.clone(), reason: "copied by an earlier apply" });
    }
    if pending.is_empty() {
        return Ok(());
    }
    // The exporting transaction (or the slot's replication session) stays open, and so the
    // snapshot valid, until every copy ends.
    let exporter =
        conn::connect_with(&servers.source, "pgtransit/snapshot", &servers.policy).await?;
    let (snapshot, snapshot_lsn, durable): (String, String, bool) = async {
        if let Some(session) = &slot_session {
            let s: &crate::stream::SlotSession = session;
            return Ok((s.snapshot.clone(), crate::stream::lsn_text(s.consistent_point), true));
        }
        exporter.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        // The insert position, not the write position: a transaction committed asynchronously
        // is visible before its commit record is written, and its commit must come before
        // the position the stream compares with.
        let row = exporter
            .query_one(
                "SELECT pg_export_snapshot(), CASE WHEN pg_is_in_recovery() \
                 THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text",
                &[],
            )
            .await?;
        let (snapshot, lsn): (String, String) = (row.get(0), row.get(1));
        let mut durable = wait_durable(&exporter, &lsn, Duration::from_millis(300)).await?;
        if !durable {
            // An idle server need not flush WAL that no commit waits for (the background
            // writer's running-transactions record, say), so the wait could last until the
            // next checkpoint. A commit of our own, flushed locally, flushes everything before
            // it. Best effort: the wait below is the proof.
            if let Ok(flusher) =
                conn::connect_with(&servers.source, "pgtransit/snapshot", &servers.policy).await
            {
                let flush = flusher.batch_execute(FLUSH_WAL);
                let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
            }
            durable = wait_durable(&exporter, &lsn, Duration::from_secs(60)).await?;
        }
        Ok::<_, tokio_postgres::Error>((snapshot, lsn, durable))
    }
    .await
    .map_err(|e| step_error("load:snapshot", "source snapshot", &e))?;
    if !durable {
        return Err(ApplyError::StepFailed {
            id: "load:snapshot".into(),
            object: "source snapshot".into(),
            message: format!(
                "the source has not flushed its WAL up to {snapshot_lsn} within 60 s (its WAL \
                 writer flushes within a second normally: is its disk stalled?); the copies \
                 wait for it, so that a crash cannot take back rows they hold"
            ),
        });
    }

    let shared = Mutex::new(std::mem::replace(state, State::new(&state.migration)));
    let (snapshot, snapshot_lsn) = (&snapshot, &snapshot_lsn);
    let result = schedule(
        &pending,
        jobs,
        async |n| {
            let app = format!("pgtransit/load-{}", n + 1);
            let src = conn::connect_with(&servers.source, &app, &servers.policy).await?;
            let tgt = connect_target(servers, &app).await?;
            let me =
                Session::of(&tgt).await.map_err(|e| step_error("connect", "target session", &e))?;
            ctx.sessions.load.lock().expect("sessions lock").push(me.clone());
            src.batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                literal(snapshot)
            ))
            .await
            .map_err(|e| {
                // The session that exports the snapshot went away (with the source): the load
                // starts again under a new one.
                if exporter.is_closed() {
                    ApplyError::ConnectionLost(format!("source snapshot: {}", db_message(&e)))
                } else {
                    step_error("load:snapshot", "source snapshot", &e)
                }
            })?;
            Ok((src, tgt, me))
        },
        async |step, (src, tgt, me)| {
            // (Several databases loading at once share one pool of jobs.)
            let _permit = match ctx.pool {
                Some((pool, rank)) => Some(pool.acquire(rank).await),
                None => None,
            };
            match step.work {
                // A table's index and constraint builds, once its copy is done.
                Work::TargetSql => run_step(step, src, (tgt, me), ctx, &shared).await,
                _ => copy_one(step, src, tgt, ctx, &shared, snapshot_lsn).await,
            }
        },
    )
    .await;
    *state = shared.into_inner();
    drop(exporter);
    drop(slot_session);
    state_dir.save(state)?;
    result
}

/// Flushes the server's WAL up to now: a commit of a transaction with an id, flushed locally
/// (`synchronous_commit = local`: a synchronous standby that is down must not hold it).
const FLUSH_WAL: &str =
    "BEGIN; SET LOCAL synchronous_commit = local; SELECT txid_current(); COMMIT;";

/// Waits until the source has flushed its WAL up to `lsn`: until then, what a snapshot taken
/// there sees may be lost in a crash of the source (a transaction committed with
/// `synchronous_commit = off` is visible before it is durable), and its ids and positions
/// reused after the restart by other transactions, which the copy must not be taken to hold.
/// The WAL writer flushes such commits within a few `wal_writer_delay`s. (A snapshot a slot
/// exports needs no wait: logical decoding reads only flushed WAL.)
/// Returns whether it did within `limit`.
async fn wait_durable(
    probe: &Client,
    lsn: &str,
    limit: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let started = Instant::now();
    loop {
        let flushed: bool = probe
            .query_one(
                "SELECT pg_is_in_recovery() OR pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await?
            .get(0);
        if flushed {
            return Ok(true);
        }
        if started.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The slot step: creates the slot on a replication session and returns that session (its
/// snapshot is the one the copies read). A slot already there (an earlier run created it and
/// stopped before recording so) is reused: the copies then read a snapshot of their own.
async fn create_slot(
    step: &Step,
    slot: &str,
    command: &str,
    ctx: &Ctx<'_>,
    state: &mut State,
) -> Result<Option<crate::stream::SlotSession>, ApplyError> {
    let Ctx { servers, state_dir, events, .. } = *ctx;
    if state.is_done_in_this_plan(&step.id) {
        events(Event::Skipped { object: step.object.clone(), reason: "done by an earlier apply" });
        return Ok(None);
    }
    let fail = |message: String| ApplyError::StepFailed {
        id: step.id.clone(),
        object: step.object.clone(),
        message,
    };
    state.start(&step.id);
    state_dir.save(state)?;
    events(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let started = Instant::now();
    let source = conn::connect_with(&servers.source, "pgtransit/apply", &servers.policy).await?;
    let existing =
        crate::catalog::read_slot(&source, slot).await.map_err(|e| fail(e.to_string()))?;
    let session = match existing {
        Some(_) => None,
        None => Some(
            crate::stream::create_slot(&servers.source, slot, command, "pgtransit/slot")
                .await
                .map_err(|e| {
                    state.fail(&step.id, e.message.clone());
                    let _ = state_dir.save(state);
                    if e.transient {
                        ApplyError::ConnectionLost(format!("{}: {}", step.object, e.message))
                    } else {
                        fail(e.message)
                    }
                })?,
        ),
    };
    failpoint("after", &step.id);
    state.finish(&step.id, None);
    state_dir.save(state)?;
    step_done(events, step, started);
    Ok(session)
}

async fn copy_one(
    step: &Step,
    src: &Client,
    tgt: &Client,
    ctx: &Ctx<'_>,
    state: &Mutex<State>,
    snapshot_lsn: &str,
) -> Result<(), ApplyError> {
    let Ctx { state_dir, cancel, events, .. } = *ctx;
    if !matches!(
        step.work,
        Work::CopyTable { .. } | Work::CopyLargeObjects { .. } | Work::EmptyForParts { .. }
    ) {
        return Ok(());
    }
    if cancel.requested() {
        return Err(ApplyError::Interrupted);
    }
    failpoint("before", &step.id);
    {
        let mut s = state.lock().await;
        s.start(&step.id);
        state_dir.save(&mut s)?;
    }
    events(Event::Started {
        id: step.id.clone(),
        object: step.object.clone(),
        action: step.action,
    });
    let started = Instant::now();
    // The snapshot this copy reads: change streaming skips, for this table, exactly the
    // transactions it sees.
    // (txid_current_snapshot: pg_current_snapshot's older name, in every supported version.)
    let snapshot = match src.query_one("SELECT txid_current_snapshot()::text", &[]).await {
        Ok(row) => Some(row.get::<_, String>(0)),
        Err(e) => return Err(failed(step, &e, &mut *state.lock().await, state_dir)),
    };
    let binary = matches!(step.work, Work::CopyTable { binary: true, .. });
    // The watchdog of a whole table's copy, once data flows (until then the source may be
    // scanning; a part's rows may lie far apart in the table): a copy whose data stops for
    // good is on a connection that stopped answering.
    let watchdog = Progress::default();
    watchdog.now();
    let flowing = AtomicBool::new(false);
    let stalled = async {
        loop {
            watchdog.stuck().await;
            if flowing.load(Ordering::Relaxed) {
                return;
            }
            watchdog.now();
        }
    };
    let whole = matches!(&step.work, Work::CopyTable { part: None, .. });
    let progress = |bytes, rows| {
        watchdog.now();
        flowing.store(true, Ordering::Relaxed);
        events(Event::Copying {
            id: step.id.clone(),
            object: step.object.clone(),
            bytes,
            rows: (!binary).then_some(rows),
            estimate: step.estimate,
        })
    };
    // A copy a build of a table above it deadlocked with is copied again.
    let work = again_after_deadlock(async || {
        let result = copy_work(step, src, tgt, state, state_dir, &progress).await;
        if result.is_err() {
            let _ = tgt.batch_execute("ROLLBACK").await;
        }
        result
    });
    let outcome = tokio::select! {
        r = work => Some(Some(r)),
        _ = cancel.wait() => None,
        // A server that stopped answering on a connection still open.
        () = stalled, if whole => Some(None),
    };
    let (rows, bytes) = match outcome {
        None => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(ApplyError::Interrupted);
        }
        Some(None) => {
            let message = format!(
                "no data moved for {} s: a server stopped answering on a connection that is \
                 still open",
                stuck().as_secs()
            );
            let mut s = state.lock().await;
            s.fail(&step.id, message.clone());
            state_dir.save(&mut s)?;
            return Err(ApplyError::ConnectionLost(format!("{}: {message}", step.object)));
        }
        Some(Some(Ok(done))) => done,
        Some(Some(Err(e))) => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(failed(step, &e, &mut *state.lock().await, state_dir));
        }
    };
    failpoint("after", &step.id);
    {
        let mut s = state.lock().await;
        s.finish(&step.id, Some(rows));
        if let Some(record) = s.steps.get_mut(&step.id) {
            record.bytes = Some(bytes);
            record.source_lsn = Some(snapshot_lsn.to_string());
            record.source_snapshot = snapshot;
        }
        state_dir.save(&mut s)?;
    }
    events(Event::Done {
        id: step.id.clone(),
        object: step.object.clone(),
        rows: Some(rows),
        bytes: Some(bytes),
        elapsed: started.elapsed(),
    });
    Ok(())
}

/// What one copy step does on its sessions (see [`copy_one`]).
async fn copy_work(
    step: &Step,
    src: &Client,
    tgt: &Client,
    state: &Mutex<State>,
    state_dir: &StateDir,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64), tokio_postgres::Error> {
    match &step.work {
        Work::CopyTable { schema, table, columns, binary, part } => {
            let part = part.as_deref();
            copy_table(src, tgt, schema, table, columns, *binary, part, &progress).await
        }
        Work::EmptyForParts { schema, table, parts } => {
            tgt.batch_execute(&crate::planner::empty_for_parts_sql(schema, table)).await?;
            // The parts' rows are gone: so are their records.
            let mut s = state.lock().await;
            for p in parts {
                s.steps.remove(p);
            }
            // Saved again when the step finishes; if the process dies first, this step is
            // found `running` and the plan empties the table again.
            let _ = state_dir.save(&mut s);
            Ok((0, 0))
        }
        Work::CopyLargeObjects { roles } => copy_large_objects(src, tgt, roles).await,
        _ => Ok((0, 0)),
    }
}

/// Size of the pieces large objects are copied in.
const LO_CHUNK: i32 = 1 << 20;

/// Copies every large object with its id, owner and grants, 1 MB at a time (memory stays
/// bounded whatever their size), in one target transaction. An object with the same id already
/// on the target is one an interrupted run of this step copied (the planner made sure): it is
/// replaced. Returns (objects, bytes).
async fn copy_large_objects(
    src: &Client,
    tgt: &Client,
    roles: &std::collections::BTreeMap<String, String>,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let objects = src
        .query(
            "SELECT l.oid, pg_get_userbyid(l.lomowner)::text, \
                    COALESCE(array_agg(CASE WHEN x.grantee = 0 THEN '' \
                                            ELSE pg_get_userbyid(x.grantee)::text END) \
                             FILTER (WHERE x.grantee IS NOT NULL AND x.grantee <> l.lomowner), '{}'), \
                    COALESCE(array_agg(x.privilege_type::text) \
                             FILTER (WHERE x.grantee IS NOT NULL AND x.grantee <> l.lomowner), '{}'), \
                    obj_description(l.oid, 'pg_largeobject') \
             FROM pg_largeobject_metadata l LEFT JOIN LATERAL aclexplode(l.lomacl) x ON true \
             GROUP BY l.oid, l.lomowner ORDER BY l.oid",
            &[],
        )
        .await?;
    tgt.batch_execute("BEGIN").await?;
    let mut bytes = 0u64;
    for o in &objects {
        let oid: u32 = o.get(0);
        let owner: String = o.get(1);
        let grantees: Vec<String> = o.get(2);
        let privileges: Vec<String> = o.get(3);
        let comment: Option<String> = o.get(4);
        tgt.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1", &[&oid])
            .await?;
        tgt.execute("SELECT lo_create($1)", &[&oid]).await?;
        let mut offset = 0i64;
        loop {
            let row = src
                .query_one("SELECT lo_get($1, $2, $3::int)", &[&oid, &offset, &LO_CHUNK])
                .await?;
            let chunk: Vec<u8> = row.get(0);
            if chunk.is_empty() {
                break;
            }
            tgt.execute("SELECT lo_put($1, $2, $3)", &[&oid, &offset, &chunk]).await?;
            offset += chunk.len() as i64;
            bytes += chunk.len() as u64;
        }
        if let Some(to) = roles.get(&owner) {
            tgt.batch_execute(&format!("ALTER LARGE OBJECT {oid} OWNER TO {}", ident(to))).await?;
        }
        if let Some(text) = &comment {
            tgt.batch_execute(&format!("COMMENT ON LARGE OBJECT {oid} IS {}", literal(text)))
                .await?;
        }
        for (grantee, privilege) in grantees.iter().zip(&privileges) {
            // PUBLIC keeps its name; a role the target lacks (roles.missing: skip) is left out.
            let to = match grantee.as_str() {
                "" => "PUBLIC".to_string(),
                g => match roles.get(g) {
                    Some(t) => ident(t),
                    None => continue,
                },
            };
            if matches!(privilege.as_str(), "SELECT" | "UPDATE") {
                tgt.batch_execute(&format!("GRANT {privilege} ON LARGE OBJECT {oid} TO {to}"))
                    .await?;
            }
        }
    }
    tgt.batch_execute("COMMIT").await?;
    Ok((objects.len() as u64, bytes))
}

/// Size of the buffers a copy hands to the target.
const COPY_BATCH: usize = 256 * 1024;

/// Streams one table: source `COPY TO STDOUT` into target `COPY FROM STDIN`, chunk by chunk
/// (memory stays bounded whatever the table's size), inside a target transaction that first
/// empties the table. `progress(bytes, rows)` is called about every 200 ms. Returns the rows and
/// bytes copied.
#[allow(clippy::too_many_arguments)]
async fn copy_table(
    src: &Client,
    tgt: &Client,
    schema: &str,
    table: &str,
    columns: &[String],
    binary: bool,
    part: Option<&str>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64), tokio_postgres::Error> {
    // A whole table is emptied and frozen in one transaction; a part is appended (its table's
    // `empty` step emptied it).
    let copy = crate::planner::CopySql::new(schema, table, columns, binary, part);
    tgt.batch_execute("BEGIN").await?;
    if let Some(empty) = &copy.empty {
        tgt.batch_execute(empty).await?;
    }
    let out = src.copy_out(&copy.source).await?;
    let sink = tgt.copy_in::<_, bytes::Bytes>(&copy.target).await?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut last = Instant::now();
    // The source sends one CopyData message per row: batch them into buffers of COPY_BATCH
    // bytes (COPY data need not align with rows) and hand them to the sink without flushing,
    // so the target gets few large messages. Memory stays bounded by one buffer per copy.
    let mut buffer = bytes::BytesMut::with_capacity(COPY_BATCH);
    while let Some(chunk) = out.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        if !binary {
            // Text COPY ends every row with a newline (newlines in values are escaped).
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= COPY_BATCH {
            sink.feed(buffer.split().freeze()).await?;
            buffer.reserve(COPY_BATCH);
        }
        if last.elapsed() >= Duration::from_millis(200) {
            progress(bytes, lines);
            last = Instant::now();
        }
    }
    if !buffer.is_empty() {
        sink.feed(buffer.freeze()).await?;
    }
    let rows = sink.as_mut().finish().await?;
    tgt.batch_execute("COMMIT").await?;
    Ok((rows, bytes))
}
