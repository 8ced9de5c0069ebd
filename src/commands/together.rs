//! An online migration of several databases: `apply` runs each database's pipeline on a thread
//! of its own (the one-database pipeline as it is), each started once the one before has
//! created its schema (and the roles it carries), their copies sharing one pool of `jobs`
//! (earliest database first), each streaming as soon as it is loaded; `cutover` asks every database at once, and their cutovers
//! meet before the fence and between verification and clean-up
//! (`crate::execute::together`): one write gap for all, all cut over or none. `abort` removes
//! every database's slot, publication and origin.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::Env;
use crate::execute::Cancel;
use crate::execute::together::{self, Decision, Together};
use crate::execution_plan::Work;
use crate::migration_plan::LoadedMigrationPlan;
use crate::report;
use crate::state::{CutoverState, CutoverStatus, StateDir, now_f64};

use super::apply::{ApplyArgs, How, MemberRun};
use super::cutover::CutoverArgs;
use super::several::Several;
use super::{Outcome, io_err};

/// Before the databases are planned (or aborted), under the migration's lock: what an
/// interrupted cutover decided. Every database verified ("go" recorded): those still waiting
/// are the primaries, and finish their clean-up. Otherwise a database verified and waiting
/// lifts its fence as any cutover interrupted before it was verified. Either way the decision
/// is then forgotten, once what it decided is in every database's state: a later cutover
/// decides again.
pub async fn settle(
    loaded: &LoadedMigrationPlan,
    env: &Env,
    retry_for: Duration,
) -> miette::Result<()> {
    let dir = loaded.state_dir();
    if together::recorded(&dir) == Some(Decision::Go) {
        for member in super::several::members_of(loaded, env, retry_for).await? {
            let state_dir = StateDir::new(member.plan.state_dir());
            let _lock = state_dir.lock("apply (settling the databases' cutover)")?;
            let Some(mut state) = state_dir.load()? else { continue };
            if let Some(cut) =
                state.cutover.as_mut().filter(|c| c.status == CutoverStatus::Verified)
            {
                cut.status = CutoverStatus::CleaningUp;
                state_dir.save(&mut state)?;
            }
        }
    }
    together::clear(&dir)
        .map_err(|e| miette::miette!("cannot remove a file of {}: {e}", dir.display()))
}

/// What a database's thread tells the migration's.
enum Msg {
    /// A line of its output (already prefixed with the database).
    Line(String),
    /// Its schema phase is done (the roles it carries are there): the next database may start.
    PastSchema(usize),
    /// It ended.
    Ended(usize, Result<(), String>),
}

/// Output of one database's thread, line by line, prefixed with its database.
struct Lines {
    prefix: String,
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
}

impl Lines {
    fn new(database: &str, tx: tokio::sync::mpsc::UnboundedSender<Msg>) -> Lines {
        Lines { prefix: format!("[{database}] "), buf: vec![], tx }
    }
}

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            let _ = self.tx.send(Msg::Line(format!("{}{text}", self.prefix)));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.write(b"\n");
        }
    }
}

/// One database's apply, on a thread of its own (its stream blocks a thread, as for one
/// database): returns once it ends, having said so.
struct Run {
    i: usize,
    database: String,
    loaded: LoadedMigrationPlan,
    plan: crate::execution_plan::Plan,
    state_dir: StateDir,
    lock: crate::state::Lock,
    streams: bool,
}

/// What every database's thread shares.
struct Shared {
    together: Arc<Together>,
    cancel: Cancel,
    pool: Arc<crate::execute::together::Pool>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
}

fn spawn(
    run: Run,
    env: &Env,
    args: &ApplyArgs,
    cutover_now: bool,
    shared: &Shared,
) -> miette::Result<()> {
    let (env, args) = (env.clone(), args.clone());
    let (together, cancel, pool, tx) =
        (shared.together.clone(), shared.cancel.clone(), shared.pool.clone(), shared.tx.clone());
    let body = move || {
        let Run { i, database, loaded, plan, state_dir, lock, streams } = run;
        let name = loaded.spec.name.value.clone();
        let mut out = Lines::new(&database, tx.clone());
        // (A panic is an end too: the others must not wait for this one.)
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
            {
                Ok(rt) => rt.block_on(async {
                    let past_schema = || {
                        let _ = tx.send(Msg::PastSchema(i));
                    };
                    let member = MemberRun {
                        name: &name,
                        together: &together,
                        cancel: &cancel,
                        view: Box::new(Lines::new(&database, tx.clone())),
                        past_schema: &past_schema,
                        pool: (&pool, i),
                    };
                    let how = How { check_stale: false, cutover_now, member: Some(member) };
                    super::apply::apply_plan(&loaded, &plan, &state_dir, &env, &args, &mut out, how)
                        .await
                }),
                Err(e) => {
                    Err(miette::miette!("cannot start the runtime of database {database}: {e}"))
                }
            }
        }))
        .unwrap_or_else(|_| Err(miette::miette!("the apply of database {database} panicked")));
        let ended = match result {
            Ok(Outcome::Failed) => Err("its apply failed (above)".to_string()),
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = writeln!(out, "{e:?}");
                Err(e.to_string())
            }
        };
        // One that ends before it was cut over stops the others' cutover.
        let cut = state_dir.load().ok().flatten().and_then(|s| s.cutover).is_some_and(|c| c.done());
        if streams && !cut {
            together.failed(
                &name,
                ended.as_ref().err().map_or("it stopped before it was cut over", |e| e.as_str()),
            );
        }
        drop(lock);
        drop(out);
        let _ = tx.send(Msg::Ended(i, ended));
    };
    std::thread::Builder::new()
        .name("pgtransit-database".into())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| miette::miette!("cannot start a thread: {e}"))
}

/// `pgtransit apply` of an online migration of several databases, once shown and approved:
/// each database starts once the one before is past its schema phase, their copies share one
/// pool of `jobs`, and every one streams until stopped or cut over. One that fails stops the
/// others (each saves its state; the next apply resumes them all).
pub async fn apply(
    args: &ApplyArgs,
    loaded: &LoadedMigrationPlan,
    several: &Several,
    out: &mut dyn Write,
    cutover_now: bool,
) -> miette::Result<Outcome> {
    let env = Env::from_process();
    let command = format!("apply {}", args.file.display());
    let streams = |p: &crate::execution_plan::Plan| {
        p.steps.iter().any(|s| matches!(s.work, Work::Stream { .. }) && s.action.is_work())
    };
    let names: Vec<String> = several
        .members
        .iter()
        .filter(|(_, c)| c.plan.as_ref().is_some_and(streams))
        .map(|(m, _)| m.plan.spec.name.value.clone())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let jobs = args
        .jobs
        .or(loaded.spec.load.jobs.map(|j| j as usize))
        .unwrap_or(crate::execution_plan::DEFAULT_JOBS);
    let shared = Shared {
        together: Arc::new(Together::new(names, &loaded.state_dir())),
        cancel: Cancel::on_signals(),
        pool: Arc::new(crate::execute::together::Pool::new(jobs)),
        tx,
    };
    let cancel = &shared.cancel;
    let count = several.members.len();
    let began = now_f64();
    let mut running = 0;
    let mut failed: Vec<String> = vec![];
    let mut databases = vec![];
    for (i, (member, computed)) in several.members.iter().enumerate() {
        let Some(shown) = computed.plan.as_ref().filter(|p| p.has_work()) else { continue };
        if !failed.is_empty() || cancel.requested() {
            break;
        }
        let _ =
            report::say(out, "database", &format!("{} ({} of {count})", member.database, i + 1));
        let started = async {
            let (state_dir, lock) = super::apply::lock(&member.plan, &command)?;
            let plan = super::several::replan(several, i, shown, &env, args, out).await?;
            Ok::<_, miette::Report>(plan.map(|plan| Run {
                i,
                database: member.database.clone(),
                loaded: member.plan.clone(),
                streams: streams(&plan),
                plan,
                state_dir,
                lock,
            }))
        }
        .await;
        let run = match started {
            // (A stop asked for while this database was planned: it does not start.)
            Ok(Some(_)) if cancel.requested() => break,
            Ok(Some(run)) => run,
            Ok(None) => {
                failed.push(format!("{}: could not be planned (above)", member.database));
                break;
            }
            Err(e) => {
                failed.push(format!("{}: {e}", member.database));
                break;
            }
        };
        databases.push((member.database.clone(), run.state_dir.clone()));
        if let Err(e) = spawn(run, &env, args, cutover_now, &shared) {
            failed.push(format!("{}: {e}", member.database));
            break;
        }
        running += 1;
        // The next database starts once this one is past its schema (or ended). One that
        // fails stops the others, loading or streaming.
        while let Some(msg) = rx.recv().await {
            let (this, ended) = handle(msg, several, out, &mut failed);
            if ended {
                running -= 1;
            }
            if !failed.is_empty() {
                cancel.request();
            }
            if this == Some(i) {
                break;
            }
        }
    }
    drop(shared.tx);
    while running > 0 {
        if !failed.is_empty() {
            // One database failed: the others stop (their state saved), or abandon the cutover.
            cancel.request();
        }
        let Some(msg) = rx.recv().await else { break };
        if handle(msg, several, out, &mut failed).1 {
            running -= 1;
        }
    }
    if !failed.is_empty() {
        cancel.request();
        miette::bail!(
            help = "every other database stopped with its state saved: fix the cause and run \
                    `pgtransit apply` again, which resumes them all",
            "{}",
            failed.join("; ")
        );
    }
    let cut: Vec<(String, CutoverState)> = databases
        .iter()
        .filter_map(|(db, dir)| Some((db.clone(), dir.load().ok()??.cutover?)))
        .filter(|(_, c)| c.done() && c.finished_at.is_some_and(|f| f >= began))
        .collect();
    if !cut.is_empty() && cut.len() == databases.len() {
        report::together_done(out, &cut).map_err(io_err)?;
    } else {
        report::say(
            out,
            "stopped",
            "every database's state is saved; `pgtransit apply` resumes streaming them all",
        )
        .map_err(io_err)?;
    }
    Ok(Outcome::Done)
}

/// Prints a line, or records an end (a failure in `failed`). Returns which database the
/// message was about when it streams or ended, and whether it ended.
fn handle(
    msg: Msg,
    several: &Several,
    out: &mut dyn Write,
    failed: &mut Vec<String>,
) -> (Option<usize>, bool) {
    match msg {
        Msg::Line(line) => {
            // (Output that cannot be written does not stop the databases' applies.)
            let _ = writeln!(out, "{line}");
            (None, false)
        }
        Msg::PastSchema(i) => (Some(i), false),
        Msg::Ended(i, result) => {
            if let Err(e) = result {
                failed.push(format!("{}: {e}", several.members[i].0.database));
            }
            (Some(i), true)
        }
    }
}

/// `pgtransit cutover` of an online migration of several databases: asks the running apply to
/// cut every database over (or, with none running, applies and cuts over once every database
/// is ready), and waits until all are cut over or the cutover was abandoned.
pub async fn cutover(
    args: &CutoverArgs,
    loaded: &LoadedMigrationPlan,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    let dir = StateDir::new(loaded.state_dir());
    let apply = ApplyArgs {
        file: args.file.clone(),
        auto_approve: true,
        jobs: None,
        connect: args.connect.clone(),
    };
    let holder = match dir.holder() {
        Some(holder) => holder,
        None => {
            report::say(out, "cutover", "no apply is running: resuming the streams to cut over")
                .map_err(io_err)?;
            let result = super::several::apply(&apply, loaded, out, true).await;
            match super::cutover::started_meanwhile(result, &dir) {
                Ok(holder) => holder,
                Err(result) => return result,
            }
        }
    };
    let env = Env::from_process();
    // (Not a database excluded since, which the running apply does not run.)
    let members = super::several::members_now(loaded, &env, args.connect.retry_for).await?;
    let asked = now_f64();
    for m in &members {
        let request = m.plan.state_dir().join(crate::execute::CUTOVER_REQUEST);
        std::fs::write(&request, format!("{asked} {}\n", std::process::id()))
            .map_err(|e| miette::miette!("cannot write {}: {e}", request.display()))?;
    }
    report::say(
        out,
        "cutover",
        &format!(
            "asked the running apply ({holder}) to cut over its {} databases together once all \
             are ready; waiting",
            members.len()
        ),
    )
    .map_err(io_err)?;
    let result = wait_for_cutover(&dir, &members, asked, out).await;
    for m in &members {
        // (Those not yet read by the apply, in databases cut over earlier, or left by a failure.)
        let _ = std::fs::remove_file(m.plan.state_dir().join(crate::execute::CUTOVER_REQUEST));
    }
    result
}

/// Waits until every database is cut over (those cut over before `asked` too: the write gap is
/// the others'), or the apply ended without.
async fn wait_for_cutover(
    dir: &StateDir,
    members: &[crate::databases::Member],
    asked: f64,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // (Whether the apply still runs is read before the states: one that ends meanwhile has
        // saved them.)
        let ended = dir.holder().is_none();
        let mut now = vec![];
        let mut earlier = vec![];
        let mut failed = vec![];
        for m in members {
            let state = StateDir::new(m.plan.state_dir()).load()?;
            match state.and_then(|s| s.cutover) {
                Some(c) if c.done() && c.finished_at.is_some_and(|f| f >= asked) => {
                    now.push((m.database.clone(), c))
                }
                Some(c) if c.done() => earlier.push(m.database.clone()),
                Some(c) if c.finished_at.is_some_and(|f| f >= asked) => {
                    failed.push(format!("{}: {}", m.database, c.error.unwrap_or_default()))
                }
                _ => {}
            }
        }
        if now.len() + earlier.len() == members.len() {
            if !earlier.is_empty() {
                report::say(out, "cutover", &format!("cut over earlier: {}", earlier.join(", ")))
                    .map_err(io_err)?;
            }
            if !now.is_empty() {
                report::together_done(out, &now).map_err(io_err)?;
            }
            return Ok(Outcome::Done);
        }
        if !ended {
            continue;
        }
        if !failed.is_empty() {
            miette::bail!(
                help = "every database's fence was lifted (see `pgtransit status`): fix the \
                        cause, run `pgtransit apply` again, then `pgtransit cutover`",
                "the cutover failed: {}",
                failed.join("; ")
            );
        }
        miette::bail!(
            help = "run `pgtransit status` to see where it stopped, then `pgtransit cutover` again",
            "the apply stopped before every database was cut over"
        );
    }
}
