//! `pgtransit demo --databases N`: a whole server moved in one migration plan. The source holds
//! N shop databases (and one the plan leaves behind) with the roles that use them; the target
//! has none of them at first, which preflight names with the statement that creates each; then
//! one plan with a section per database, one apply, and a verification of every database.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use miette::IntoDiagnostic;

use crate::report::{self, Format};

use super::apply::ApplyArgs;
use super::demo::{DemoArgs, SAMPLE_SQL};
use super::{ConnectArgs, Outcome, io_err};

/// The demo's databases: `shop`, then `shop_2`, `shop_3`...
fn names(count: usize) -> Vec<String> {
    (1..=count).map(|i| if i == 1 { "shop".into() } else { format!("shop_{i}") }).collect()
}

/// Runs the demo of a whole-server migration.
pub async fn run(
    args: &DemoArgs,
    count: usize,
    dir: &Path,
    out: &mut dyn Write,
) -> miette::Result<Outcome> {
    let (source, target) = super::demo::start(out).await?;
    let databases = names(count.max(1));
    report::say(
        out,
        "demo",
        &format!(
            "filling the source: {} (each the shop: tables, triggers, 400,000 order events, its \
             roles and settings), and `scratch`, which the plan leaves behind",
            databases.join(", ")
        ),
    )
    .map_err(io_err)?;
    source.create_database(&databases[0]).into_diagnostic()?;
    source.psql(&databases[0], SAMPLE_SQL).into_diagnostic()?;
    for db in &databases[1..] {
        let copy = format!("CREATE DATABASE \"{db}\" TEMPLATE \"{}\"", databases[0]);
        source.psql("postgres", &copy).into_diagnostic()?;
        source
            .psql("postgres", &format!("ALTER DATABASE \"{db}\" SET work_mem = '8MB'"))
            .into_diagnostic()?;
    }
    source.create_database("scratch").into_diagnostic()?;

    let plan_path = dir.join("plans").join("server.yaml");
    let plan_text = format!(
        "# A whole-server migration plan, written by `pgtransit demo --databases {count}`.\n\
         version: 1\n\
         name: server\n\
         mode: {}\n\
         source:\n  url: {}\n\
         target:\n  url: {}\n\
         # Every shop database; each moves to the database of the same name on the target.\n\
         databases:\n  include: [\"shop*\"]\n\
         # Every role that uses them, as on the source.\n\
         roles:\n  missing: create\n",
        if args.online { "online" } else { "offline" },
        source.url("postgres"),
        target.url("postgres")
    );
    std::fs::write(&plan_path, &plan_text).into_diagnostic()?;
    report::wrote(out, "migration plan", &plan_path).map_err(io_err)?;
    report::block(out, &plan_text).map_err(io_err)?;

    report::say(out, "demo", "pgtransit plan (the target has none of the databases yet)")
        .map_err(io_err)?;
    let plan_args = super::plan::PlanArgs {
        file: plan_path.clone(),
        format: Format::Text,
        detailed_exitcode: false,
        out: None,
        connect: ConnectArgs { retry_for: Duration::from_secs(15) },
    };
    super::plan::run(&plan_args, out).await?;
    report::say(out, "demo", "creating them on the target, as preflight says").map_err(io_err)?;
    for db in &databases {
        target.create_database(db).into_diagnostic()?;
    }

    let applied = if args.online {
        online(out, &plan_path, &source, &databases).await?
    } else {
        report::say(out, "demo", "pgtransit apply --auto-approve").map_err(io_err)?;
        let apply = ApplyArgs {
            file: plan_path.clone(),
            auto_approve: true,
            jobs: None,
            connect: ConnectArgs { retry_for: Duration::from_secs(15) },
        };
        super::apply::run(&apply, out).await?
    };
    report::say(out, "demo", "pgtransit verify").map_err(io_err)?;
    let verify = super::verify::VerifyArgs {
        file: plan_path.clone(),
        format: Format::Text,
        connect: ConnectArgs { retry_for: Duration::from_secs(15) },
    };
    let verified = super::verify::run(&verify, out).await?;
    let roles = super::demo::compare_roles(out, &source, &target)?;
    let ok = applied == Outcome::Done && verified == Outcome::Done && roles;
    super::demo::clean_up(out, args, dir, source, target)?;
    Ok(if ok { Outcome::Done } else { Outcome::Failed })
}

/// Online: `pgtransit apply` in the background (its own process, as an operator runs it) until
/// every database streams, writers on the first two, then `pgtransit cutover`: every database
/// fenced, drained, verified and cleaned up together, one write gap.
async fn online(
    out: &mut dyn Write,
    plan_path: &Path,
    source: &crate::cluster::LocalCluster,
    databases: &[String],
) -> miette::Result<Outcome> {
    report::say(
        out,
        "demo",
        &format!("pgtransit apply {} --auto-approve   (in the background)", plan_path.display()),
    )
    .map_err(io_err)?;
    out.flush().map_err(io_err)?;
    let exe = std::env::current_exe().into_diagnostic()?;
    let plan = plan_path.to_string_lossy().to_string();
    let mut apply = tokio::process::Command::new(&exe)
        .args(["apply", &plan, "--auto-approve"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .into_diagnostic()?;
    let loaded = super::plan::load_spec(plan_path)?;
    let env = crate::conn::Env::from_process();
    let members = super::several::members_of(&loaded, &env, Duration::from_secs(15)).await?;
    let streaming = || {
        members.iter().all(|m| {
            crate::state::StateDir::new(m.plan.state_dir())
                .load()
                .ok()
                .flatten()
                .and_then(|s| s.sync)
                .is_some_and(|s| s.streaming)
        })
    };
    if !super::demo::wait_until(&mut apply, Duration::from_secs(600), streaming).await? {
        return Ok(Outcome::Failed);
    }
    let writing: Vec<&String> = databases.iter().take(2).collect();
    report::say(
        out,
        "demo",
        &format!(
            "every database streams; writers on {} (orders, items, events, deletes) for 5 \
             seconds",
            writing.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" and ")
        ),
    )
    .map_err(io_err)?;
    let mut writers = vec![];
    for db in writing {
        let conn = crate::conn::ConnInfo::parse(&source.conninfo(db))
            .and_then(|c| c.resolve(&env))
            .into_diagnostic()?;
        let client =
            crate::conn::connect_with(&conn, "pgtransit/demo-writer", &Default::default()).await?;
        writers.push(tokio::spawn(async move {
            super::demo::write_for(&client, Duration::from_secs(5)).await
        }));
    }
    let mut written = 0;
    for w in writers {
        written += w.await.into_diagnostic()?.into_diagnostic()?;
    }
    report::say(
        out,
        "demo",
        &format!(
            "{written} transactions written; pgtransit cutover {plan} --auto-approve   (every \
             database fenced, drained, verified, then cleaned up: all or none)"
        ),
    )
    .map_err(io_err)?;
    out.flush().map_err(io_err)?;
    let cutover = tokio::process::Command::new(&exe)
        .args(["cutover", &plan, "--auto-approve"])
        .status()
        .await
        .into_diagnostic()?;
    let applied = apply.wait().await.into_diagnostic()?;
    Ok(if cutover.success() && applied.success() { Outcome::Done } else { Outcome::Failed })
}
