//! `pgtransit demo`: two throwaway local servers, a sample shop database on one, a migration
//! plan for moving it to the other, and pgtransit run on it, narrated. Each capability shows up
//! here as it lands.

use std::io::Write;
use std::time::Duration;

use miette::{IntoDiagnostic, WrapErr};

use crate::cli::{ApplyArgs, ConnectArgs, DemoArgs, Outcome, io_err};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::conn::Env;
use crate::report::{self, Format};

const SAMPLE_SQL: &str = include_str!("demo_sample.sql");
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

    report::say(
        out,
        "demo",
        "filling the source's `shop` database: an enum, a sequence, identity columns, foreign \
         keys, triggers, 1,000 customers, 5,000 orders, 400,000 order events",
    )
    .map_err(io_err)?;
    for c in [&source, &target] {
        c.create_database(DATABASE).into_diagnostic()?;
    }
    source.psql(DATABASE, SAMPLE_SQL).into_diagnostic().wrap_err("loading the sample failed")?;

    let plan_path = dir.join("plans").join("shop.yaml");
    let plan_text = migration_plan(&source, &target);
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

    report::say(out, "demo", &format!("pgtransit apply {} --auto-approve", plan_path.display()))
        .map_err(io_err)?;
    let apply_args = ApplyArgs {
        file: plan_path.clone(),
        auto_approve: true,
        jobs: None,
        connect: ConnectArgs { retry_for: Duration::from_secs(15) },
    };
    let (state_dir, _lock) = super::apply::lock(&loaded, "demo")?;
    super::apply::apply_plan(&loaded, &plan, &state_dir, &env, &apply_args, out, false).await?;
    drop(_lock);

    report::say(out, "demo", "planning again: the target now matches the source")
        .map_err(io_err)?;
    let again = super::plan::compute(&loaded, &env, Duration::from_secs(15)).await;
    let summary = again.report.plan_summary.as_ref().map(report::summary_line).unwrap_or_default();
    report::say(out, "demo", &format!("second plan: {summary}")).map_err(io_err)?;
    let result = again;

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
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(if result.outcome() == Outcome::Failed { Outcome::Failed } else { Outcome::Done })
}

fn start_clusters() -> miette::Result<(LocalCluster, LocalCluster)> {
    let source = std::thread::spawn(|| {
        LocalCluster::start(ClusterOptions {
            name: "demo-source".into(),
            settings: vec![("wal_level".into(), "logical".into())],
            ..Default::default()
        })
    });
    let target =
        LocalCluster::start(ClusterOptions { name: "demo-target".into(), ..Default::default() })
            .into_diagnostic()?;
    let source = source.join().map_err(|_| miette::miette!("starting the source panicked"))?;
    Ok((source.into_diagnostic()?, target))
}

fn migration_plan(source: &LocalCluster, target: &LocalCluster) -> String {
    format!(
        "# A pgtransit migration plan, written by `pgtransit demo`.\n\
         # It holds no secrets: the demo's servers trust local connections.\n\
         version: 1\n\
         name: shop\n\
         mode: offline\n\
         source:\n  url: {}\n\
         target:\n  url: {}\n",
        source.url(DATABASE),
        target.url(DATABASE)
    )
}
