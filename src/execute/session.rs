//! Watchdogs and leftover sessions: when work last got somewhere, whether a silent target
//! session is still at work, cancelling a statement, and ending the sessions a lost attempt may
//! have left behind (who a session is, `Session`, is in `context`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::conn;

use crate::execute::context::{ApplyError, Servers, Session, pg};

/// The stream counts as stalled when nothing has arrived for this long although the source
/// says it sent a heartbeat this long ago (a connection a middlebox keeps open but passes
/// nothing through): it is then dropped and started again, as when lost.
pub const STALL: Duration = Duration::from_secs(30);

/// The applier counts as stuck when neither a statement result nor a change came for this
/// long (a server, mostly the target, that stopped answering on a connection still open), and
/// the target does not say its session is at work: the stream is dropped and started again, as
/// when lost. Longer than the fence's `lock_timeout`.
pub const STUCK: Duration = Duration::from_secs(90);

/// [`STALL`], or in debug builds `PGTRANSIT_WATCHDOG_SECS` (for the tests; [`stuck`] is three
/// times that).
pub(crate) fn stall() -> Duration {
    let secs = cfg!(debug_assertions)
        .then(|| std::env::var("PGTRANSIT_WATCHDOG_SECS").ok()?.parse::<u64>().ok())
        .flatten();
    secs.map_or(STALL, Duration::from_secs)
}

/// [`STUCK`] (see [`stall`]).
pub(crate) fn stuck() -> Duration {
    if stall() == STALL { STUCK } else { stall() * 3 }
}

/// When the applier (or a copy) last got somewhere (a change taken, a statement's result, a
/// chunk of data), for the watchdogs: a [`monotonic_ms`] time.
#[derive(Clone, Default)]
pub(crate) struct Progress(Arc<std::sync::atomic::AtomicU64>);

/// Milliseconds since a fixed moment of this process (monotonic: a clock stepped by NTP does
/// not fool the watchdog).
fn monotonic_ms() -> u64 {
    monotonic_ms_at(Instant::now())
}

/// [`monotonic_ms`] at `t`.
fn monotonic_ms_at(t: Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*ORIGIN.get_or_init(Instant::now)).as_millis() as u64
}

impl Progress {
    pub(crate) fn now(&self) {
        self.at(Instant::now());
    }

    /// Got somewhere at `t` (a time just read: the clock is read once).
    pub(crate) fn at(&self, t: Instant) {
        self.0.store(monotonic_ms_at(t), std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(monotonic_ms().saturating_sub(last))
    }

    /// Returns once nothing has happened for [`STUCK`].
    pub(crate) async fn stuck(&self) {
        loop {
            let idle = self.idle_for();
            if idle >= stuck() {
                return;
            }
            tokio::time::sleep(stuck() - idle + Duration::from_millis(100)).await;
        }
    }
}

/// Returns once the applier has made no progress for [`stuck`] and the target does not say
/// that its session is at work: a long statement or a lock wait is not a stuck connection,
/// but a session idle on the target while the applier waits for it is (or a target that does
/// not even answer a new connection).
pub(crate) async fn stuck_target(
    beat: &Progress,
    servers: &crate::execute::context::Servers,
    session: &Session,
) {
    loop {
        beat.stuck().await;
        let probe = async {
            let c = crate::conn::connect_with(&servers.target, "pgtransit/probe", &servers.policy)
                .await
                .ok()?;
            let row = c
                .query_opt(
                    "SELECT state = 'active', coalesce(wait_event_type || ': ' || wait_event, \
                            'running') FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start::text = $2",
                    &[&session.pid, &session.started],
                )
                .await
                .ok()??;
            Some((row.get::<_, bool>(0), row.get::<_, String>(1)))
        };
        match tokio::time::timeout(stall(), probe).await {
            Ok(Some((true, what))) => {
                tracing::info!(pid = session.pid, "the target's session is still at work ({what})");
                beat.now();
            }
            _ => return,
        }
    }
}

/// Ends `session` if it still runs (the caller's own role may), and waits until it is gone.
pub(crate) async fn end_previous(
    client: &Client,
    session: &Session,
    what: &str,
) -> Result<(), ApplyError> {
    let started = Instant::now();
    loop {
        let alive: bool = client
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[&session.pid, &session.started],
            )
            .await
            .map_err(pg)?
            .get(0);
        if !alive {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(ApplyError::ConnectionLost(format!(
                "the {what} of the stream before (pid {}) does not end",
                session.pid
            )));
        }
        tracing::warn!(pid = session.pid, "ending the {what} of the lost stream");
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start::text = $2",
                &[&session.pid, &session.started],
            )
            .await
            .map_err(pg)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cancels the statement `session` runs (from a connection of its own: the session's own is
/// busy with it).
pub(crate) async fn cancel_session(servers: &Servers, session: &Session) {
    let Ok(c) = conn::connect_with(&servers.target, "pgtransit/cancel", &servers.policy).await
    else {
        return;
    };
    let _ = c
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE pid = $1 AND backend_start::text = $2",
            &[&session.pid(), &session.started()],
        )
        .await;
}
