//! `pgtransit demo`: two throwaway local servers, a sample shop database on one, a migration
//! plan for moving it to the other, and pgtransit run on it, narrated. Each capability shows up
//! here as it lands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use miette::{IntoDiagnostic, WrapErr};
use tokio::process::Child;
use tokio_postgres::Client;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::conn::{Env, Resolved, RetryPolicy};
use crate::execution_plan::Plan;
use crate::report::{self, Format};
use crate::state::StateDir;

use super::{Outcome, io_err};

/// `pgtransit demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's migration plan and state (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave both servers running at the end (the demo prints how to stop them).
    #[arg(long)]
    pub keep: bool,
    /// Show a whole-server migration instead: this many databases and their roles in one
    /// migration plan (offline, unless --online).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub databases: Option<u8>,
    /// With --databases: online, the databases streamed under writes and cut over together.
    #[arg(long, requires = "databases")]
    pub online: bool,
    /// Cut over with a rollback window, write to the target, then roll back.
    #[arg(long, conflicts_with = "databases")]
    pub rollback: bool,
}

pub(super) const SAMPLE_SQL: &str = include_str!("demo_sample.sql");
const DATABASE: &str = "shop";

/// Runs the demo.
pub async fn run(args: &DemoArgs, out: &mut dyn Write) -> miette::Result<Outcome> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("pgtransit-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("plans"))
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create the demo directory {}", dir.display()))?;

    if let Some(count) = args.databases {
        return super::demo_server::run(args, count.into(), &dir, out).await;
    }
    let (source, mut target) = start_and_fill(out).await?;

    let plan_path = dir.join("plans").join("shop.yaml");
    let plan_text = migration_plan(&source, &target, args.rollback);
    std::fs::write(&plan_path, &plan_text).into_diagnostic()?;
    report::wrote(out, "migration plan", &plan_path).map_err(io_err)?;
    report::block(out, &plan_text).map_err(io_err)?;

    report::say(out, "demo", &format!("pgtransit plan {}", plan_path.display())).map_err(io_err)?;
    let loaded = super::plan::load_spec(&plan_path)?;
    let env = Env::from_process();
    let computed = super::plan::compute(&loaded, &env, Duration::from_secs(15)).await;
    report::plan(out, &computed.report, Format::Text).map_err(io_err)?;
    let Some(plan) = computed.plan.filter(|p| p.is_applicable()) else {
        return Ok(Outcome::Failed);
    };

    // Online: `pgtransit apply` runs as its own process (as an operator would run it), while
    // the demo writes to the source and watches the lag; `pgtransit cutover` ends it.
    report::say(
        out,
        "demo",
        &format!("pgtransit apply {} --auto-approve   (in the background)", plan_path.display()),
    )
    .map_err(io_err)?;
    let exe = std::env::current_exe().into_diagnostic()?;
    let start_apply = || {
        tokio::process::Command::new(&exe)
            .args(["apply", &plan_path.to_string_lossy(), "--auto-approve"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .into_diagnostic()
            .wrap_err("cannot start `pgtransit apply`")
    };
    let mut apply = start_apply()?;
    let state_dir = crate::state::StateDir::new(loaded.state_dir());
    let streaming = wait_until(&mut apply, Duration::from_secs(300), || {
        state_dir.load().ok().flatten().and_then(|s| s.sync).is_some_and(|s| s.streaming)
    })
    .await?;
    if !streaming {
        return Ok(Outcome::Failed);
    }

    report::say(
        out,
        "demo",
        "a writer on the source: new orders and items, payments (a trigger numbers the invoice, \
         another touches updated_at), events, deletes - for 8 seconds",
    )
    .map_err(io_err)?;
    let policy = crate::conn::RetryPolicy::default();
    let src_conn = crate::conn::ConnInfo::parse(&source.conninfo(DATABASE))
        .and_then(|c| c.resolve(&env))
        .into_diagnostic()?;
    write_through_faults(
        out,
        &src_conn,
        &policy,
        &mut target,
        &mut apply,
        &start_apply,
        &state_dir,
    )
    .await?;
    let (probe, check) = time_one_row(out, &src_conn, &policy, &env, &target).await?;
    let rows_identical = compare_rows(out, &plan, &probe, &check).await?;

    // Continuous verification proves the tables while the stream runs: two passes after the
    // restart above (the first may hold chunks the killed apply proved), and the cutover
    // compares only the rows changed since.
    report::say(
        out,
        "demo",
        "continuous verification: waiting for two complete passes over every table while the \
         stream runs (the cutover will compare only rows changed since)",
    )
    .map_err(io_err)?;
    let passes = || state_dir.load().ok().flatten().and_then(|s| s.verification).map(|v| v.passes);
    let before = passes().unwrap_or(0);
    wait_until(&mut apply, Duration::from_secs(120), || passes().unwrap_or(0) >= before + 2)
        .await?;

    report::say(out, "demo", "pgtransit status").map_err(io_err)?;
    let st = crate::status::compute(
        &loaded.spec.name.value,
        state_dir.load()?.as_ref(),
        state_dir.holder(),
        &crate::status::Live::default(),
        crate::state::now_f64(),
        crate::status::RETAINED_WAL_WARNING,
    );
    report::status(out, &st, Format::Text).map_err(io_err)?;

    // The fence ends every session but the cutover's own: the demo's end here first.
    drop((probe, check));
    let cutover_done = if args.rollback {
        let target_conn = crate::conn::ConnInfo::parse(&target.conninfo(DATABASE))
            .and_then(|c| c.resolve(&env))
            .into_diagnostic()?;
        super::demo_rollback::run(out, &exe, &plan_path, apply, &target_conn).await?
    } else {
        cut_over(out, &exe, &plan_path, apply, &state_dir).await?
    };
    let roles_identical = compare_roles(out, &source, &target)?;
    let ok = rows_identical && cutover_done && roles_identical;
    let result = if ok { Outcome::Done } else { Outcome::Failed };

    clean_up(out, args, &dir, source, target)?;
    Ok(result)
}

/// Starts the two servers, and says where they are.
pub(super) async fn start(out: &mut dyn Write) -> miette::Result<(LocalCluster, LocalCluster)> {
    report::say(out, "demo", "starting two throwaway PostgreSQL servers (source and target)")
        .map_err(io_err)?;
    let (source, target) = tokio::task::spawn_blocking(start_clusters)
        .await
        .into_diagnostic()?
        .wrap_err("the demo could not start its PostgreSQL servers")?;
    report::say(
        out,
        "demo",
        &format!(
            "source on 127.0.0.1:{} (wal_level=logical), target on 127.0.0.1:{}",
            source.port(),
            target.port()
        ),
    )
    .map_err(io_err)?;
    Ok((source, target))
}

/// Starts the two servers and fills the source with the sample.
async fn start_and_fill(out: &mut dyn Write) -> miette::Result<(LocalCluster, LocalCluster)> {
    let (source, target) = start(out).await?;
    report::say(
        out,
        "demo",
        "filling the source's `shop` database: an enum, a sequence, identity columns, foreign \
         keys, triggers, a text search configuration (created from pg_dump's DDL), notes with \
         an inheriting archive, 1,000 customers, 5,000 orders, 400,000 order events; roles \
         that read and write it (a login role with a SCRAM password), database settings",
    )
    .map_err(io_err)?;
    for c in [&source, &target] {
        c.create_database(DATABASE).into_diagnostic()?;
    }
    source.psql(DATABASE, SAMPLE_SQL).into_diagnostic().wrap_err("loading the sample failed")?;
    Ok((source, target))
}

/// The shop's roles and the database's properties on both servers, compared (but for the
/// source's read-only default: the fence, the one database setting not carried).
pub(super) fn compare_roles(
    out: &mut dyn Write,
    source: &LocalCluster,
    target: &LocalCluster,
) -> miette::Result<bool> {
    const ROLES: &str = "SELECT r.rolname, r.rolcanlogin, r.rolconnlimit, a.rolpassword, \
        (SELECT setconfig FROM pg_db_role_setting WHERE setrole = r.oid AND setdatabase = 0), \
        (SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m \
          JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), \
        (SELECT array(SELECT c FROM unnest(setconfig) c \
                       WHERE c NOT LIKE 'default\\_transaction\\_read\\_only=%') \
          FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
          WHERE d.datname = 'shop' AND s.setrole = 0), \
        (SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'shop') \
        FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid \
        WHERE r.rolname LIKE 'shop\\_%' ORDER BY 1";
    let read = |c: &LocalCluster| c.psql(DATABASE, ROLES).into_diagnostic();
    let (theirs, ours) = (read(source)?, read(target)?);
    let same = theirs == ours && theirs.lines().count() == 3;
    let message = if same {
        "roles shop_app, shop_readers and shop_writers are the same on both servers: \
         attributes, SCRAM verifier (the same password logs in), settings, memberships; and \
         the database's settings and comment"
    } else {
        "the shop's roles differ between the servers"
    };
    report::say(out, "demo", message).map_err(io_err)?;
    Ok(same)
}

/// A writer on the source for 8 seconds while, on the way, the target crashes and comes back and
/// `pgtransit apply` is killed and started again; the stream's status every 2 seconds.
async fn write_through_faults(
    out: &mut dyn Write,
    src_conn: &Resolved,
    policy: &RetryPolicy,
    target: &mut LocalCluster,
    apply: &mut Child,
    start_apply: &dyn Fn() -> miette::Result<Child>,
    state_dir: &StateDir,
) -> miette::Result<()> {
    let writer_client = crate::conn::connect_with(src_conn, "demo/writer", policy).await?;
    let writer =
        tokio::spawn(async move { write_for(&writer_client, Duration::from_secs(8)).await });
    let mut watch = tokio::time::interval(Duration::from_secs(2));
    watch.tick().await;
    let mut ticks = 0;
    while !writer.is_finished() {
        watch.tick().await;
        ticks += 1;
        // Faults, while the writer writes: nothing may be lost or applied twice (the rows
        // are compared below, and verified by the cutover).
        if ticks == 1 {
            report::say(
                out,
                "demo",
                "the target crashes (pg_ctl stop -m immediate) and is started again a second \
                 later: apply waits for it and resumes from the position the target committed",
            )
            .map_err(io_err)?;
            tokio::task::block_in_place(|| -> miette::Result<()> {
                target.crash().into_diagnostic()?;
                std::thread::sleep(Duration::from_secs(1));
                target.start_again().into_diagnostic()
            })?;
        }
        if ticks == 2 {
            report::say(
                out,
                "demo",
                &format!(
                    "kill -9 of pgtransit apply (pid {}) while it streams; started again: it \
                     takes over the dead run's lock and resumes where the target stands",
                    apply.id().unwrap_or_default()
                ),
            )
            .map_err(io_err)?;
            apply.kill().await.into_diagnostic()?;
            *apply = start_apply()?;
        }
        if let Some(sync) = state_dir.load().ok().flatten().and_then(|s| s.sync) {
            let line = report::streaming_line(
                sync.lag_bytes.unwrap_or(0),
                sync.lag_seconds.unwrap_or(0.0),
                &sync.applied,
                false,
            );
            report::say(out, "status", &line).map_err(io_err)?;
        }
    }
    let transactions = writer.await.into_diagnostic()?.into_diagnostic()?;
    report::say(
        out,
        "demo",
        &format!("the writer committed {transactions} transactions and stopped"),
    )
    .map_err(io_err)?;
    Ok(())
}

/// One more row, timed from its commit on the source until the target has it; returns the
/// connections to both (kept open until the cutover).
async fn time_one_row(
    out: &mut dyn Write,
    src_conn: &Resolved,
    policy: &RetryPolicy,
    env: &Env,
    target: &LocalCluster,
) -> miette::Result<(Client, Client)> {
    let started = std::time::Instant::now();
    let probe = crate::conn::connect_with(src_conn, "demo/probe", policy).await?;
    probe
        .batch_execute(
            "INSERT INTO products (sku, title, price) VALUES ('SKU-LAST', 'Last one', 1)",
        )
        .await
        .into_diagnostic()?;
    let tgt_conn = crate::conn::ConnInfo::parse(&target.conninfo(DATABASE))
        .and_then(|c| c.resolve(env))
        .into_diagnostic()?;
    let check = crate::conn::connect_with(&tgt_conn, "demo/check", policy).await?;
    loop {
        let n: i64 = check
            .query_one("SELECT count(*) FROM products WHERE sku = 'SKU-LAST'", &[])
            .await
            .into_diagnostic()?
            .get(0);
        if n == 1 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report::say(
        out,
        "demo",
        &format!(
            "a row inserted on the source now reached the target in {} ms",
            started.elapsed().as_millis()
        ),
    )
    .map_err(io_err)?;
    Ok((probe, check))
}

/// Whether every streamed table has the same rows on both sides (count and md5 of each table's
/// own rows), given up to 10 seconds to converge.
async fn compare_rows(
    out: &mut dyn Write,
    plan: &Plan,
    probe: &Client,
    check: &Client,
) -> miette::Result<bool> {
    let tables: Vec<(String, String)> = plan
        .steps
        .iter()
        .find_map(|s| match &s.work {
            crate::execution_plan::Work::Stream { tables, .. } => {
                Some(tables.iter().map(|t| (t.schema.clone(), t.table.clone())).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    let mut same = 0;
    for _ in 0..50 {
        same = 0;
        for (schema, table) in &tables {
            let q = format!(
                "SELECT count(*)::text || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) \
                 FROM ONLY {} x",
                crate::sql::qualified_ident(schema, table)
            );
            let a: String = probe.query_one(&q, &[]).await.into_diagnostic()?.get(0);
            let b: String = check.query_one(&q, &[]).await.into_diagnostic()?.get(0);
            same += usize::from(a == b);
        }
        if same == tables.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report::say(
        out,
        "demo",
        &format!(
            "rows identical on both sides in {same} of {} tables (count and md5 of each table's own rows)",
            tables.len()
        ),
    )
    .map_err(io_err)?;
    Ok(same == tables.len())
}

/// Runs `pgtransit cutover` and waits for the apply to end; whether the cutover is done and both
/// processes succeeded.
async fn cut_over(
    out: &mut dyn Write,
    exe: &Path,
    plan_path: &Path,
    mut apply: Child,
    state_dir: &StateDir,
) -> miette::Result<bool> {
    report::say(
        out,
        "demo",
        &format!(
            "pgtransit cutover {} --auto-approve   (fence the source, drain, sequences, verify, \
             clean up)",
            plan_path.display()
        ),
    )
    .map_err(io_err)?;
    out.flush().map_err(io_err)?;
    let cutover = tokio::process::Command::new(exe)
        .args(["cutover", &plan_path.to_string_lossy(), "--auto-approve"])
        .status()
        .await
        .into_diagnostic()?;
    let applied = apply.wait().await.into_diagnostic()?;
    let ended = state_dir.load()?.and_then(|s| s.cutover).filter(|c| c.done());
    if let Some(c) = &ended {
        report::say(
            out,
            "demo",
            &format!(
                "cut over: the source is read-only, the target has every row; write gap {:.2} s",
                c.write_gap_seconds.unwrap_or_default()
            ),
        )
        .map_err(io_err)?;
    }
    Ok(cutover.success() && applied.success() && ended.is_some())
}

/// Leaves the servers running (`--keep`) or removes them, and the demo's directory unless it
/// was given.
pub(super) fn clean_up(
    out: &mut dyn Write,
    args: &DemoArgs,
    dir: &Path,
    source: LocalCluster,
    target: LocalCluster,
) -> miette::Result<()> {
    if args.keep {
        report::say(out, "demo", "--keep: the servers keep running; stop them with:")
            .map_err(io_err)?;
        for c in [&source, &target] {
            report::block(out, &c.stop_command()).map_err(io_err)?;
        }
        std::mem::forget(source);
        std::mem::forget(target);
    } else {
        report::say(out, "demo", "stopping and removing both servers").map_err(io_err)?;
        if args.dir.is_none() {
            // Nothing of the demo outlives it unless asked (--dir or --keep).
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// Waits until `ready` holds (checked every 200 ms), or the process ends (false).
pub(super) async fn wait_until(
    child: &mut tokio::process::Child,
    limit: Duration,
    ready: impl Fn() -> bool,
) -> miette::Result<bool> {
    let started = std::time::Instant::now();
    while !ready() {
        if child.try_wait().into_diagnostic()?.is_some() || started.elapsed() > limit {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(true)
}

/// The demo's writer: small shop transactions for `how_long`. Returns how many committed.
pub(super) async fn write_for(
    client: &tokio_postgres::Client,
    how_long: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < how_long {
        let i = n as i64;
        client
            .batch_execute(&format!(
                "BEGIN;
                 WITH o AS (INSERT INTO orders (customer_id) VALUES ({c}) RETURNING id)
                 INSERT INTO order_items (order_id, product_id, quantity, unit_price)
                 SELECT id, {p}, 1 + {i} % 5, 9.99 FROM o;
                 UPDATE orders SET status = 'paid' WHERE id = (SELECT max(id) FROM orders) - 7;
                 INSERT INTO order_events (order_id, kind, payload)
                 VALUES ({c}, 'viewed', '{{\"writer\": {i}}}');
                 DELETE FROM order_events WHERE id = {d};
                 COMMIT;",
                c = 1 + (i * 31) % 1000,
                p = 1 + (i * 7) % 200,
                d = 1 + i * 13,
            ))
            .await?;
        n += 1;
    }
    Ok(n)
}

fn start_clusters() -> miette::Result<(LocalCluster, LocalCluster)> {
    let source = std::thread::spawn(|| {
        LocalCluster::start(ClusterOptions {
            name: "demo-source".into(),
            settings: vec![("wal_level".into(), "logical".into())],
            ..Default::default()
        })
    });
    // (Logical WAL on the target too: a rollback window streams it back.)
    let target = LocalCluster::start(ClusterOptions {
        name: "demo-target".into(),
        settings: vec![("wal_level".into(), "logical".into())],
        ..Default::default()
    })
    .into_diagnostic()?;
    let source = source.join().map_err(|_| miette::miette!("starting the source panicked"))?;
    Ok((source.into_diagnostic()?, target))
}

fn migration_plan(source: &LocalCluster, target: &LocalCluster, rollback: bool) -> String {
    let window = if rollback {
        "# After the cutover, the old source follows the target until `pgtransit finish`.\n\
         cutover:\n  rollback_window: true\n"
    } else {
        ""
    };
    format!(
        "# A pgtransit migration plan, written by `pgtransit demo`.\n\
         # It holds no secrets: the demo's servers trust local connections.\n\
         version: 1\n\
         name: shop\n\
         mode: online\n\
         source:\n  url: {}\n\
         target:\n  url: {}\n\
         # The roles that read and write the shop, created as they are on the source.\n\
         roles:\n  missing: create\n{window}",
        source.url(DATABASE),
        target.url(DATABASE)
    )
}
