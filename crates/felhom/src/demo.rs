//! `felhom demo`: the whole product end to end on an embedded simulator. It builds a real
//! golden archive with the same code `felhom golden` uses, inspects it, starts the simulator
//! with that archive on its backup storage, brings up three customer guests in parallel
//! through the real client over real HTTPS, prints their IPs and SSH host-key fingerprints,
//! and tears them down again.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use felhom_core::config::Config;
use felhom_core::job::Outcome;
use felhom_core::ops::Felhom;
use felhom_core::spec::GuestSpec;

use crate::cmd_sim::{seed_golden, sim_config};
use crate::output::{self, CliProgress, OutputFormat};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many guests to bring up in parallel.
    #[arg(long, default_value_t = 3)]
    pub guests: usize,
    /// Simulator time scale (1.0 = PVE-like task durations).
    #[arg(long, default_value_t = 0.2)]
    pub time_scale: f64,
    /// Keep the guests (and print the state dir) instead of tearing them down.
    #[arg(long)]
    pub keep: bool,
}

const CUSTOMERS: &[&str] = &[
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wonka", "stark",
];

pub async fn run(args: DemoArgs, format: OutputFormat) -> anyhow::Result<i32> {
    let started = Instant::now();
    if args.guests == 0 || args.guests > 100 {
        anyhow::bail!("--guests must be 1–100; got {}", args.guests);
    }
    let dir = tempfile::Builder::new()
        .prefix("felhom-demo-")
        .tempdir()
        .context("create a temp dir")?;
    let state = dir.path().join("sim");
    std::fs::create_dir_all(&state)?;
    let human = format == OutputFormat::Human;

    let golden = seed_golden(&state)?;
    let golden_path = pve_sim::dump_dir(&state, "local").join(crate::cmd_sim::SEED_GOLDEN);
    let report =
        felhom_core::golden::inspect_path(&golden_path).context("inspect the golden archive")?;
    if human {
        println!(
            "golden {golden}: {} finding(s) with errors, {} warning(s)",
            report.error_count(),
            report.warning_count()
        );
    }
    if report.error_count() > 0 {
        anyhow::bail!("the demo's golden archive has inspection errors: {report:?}");
    }

    let sim = pve_sim::start(pve_sim::SimConfig {
        listen: "127.0.0.1:0".parse()?,
        state_dir: state.clone(),
        node: "pve".into(),
        faults: pve_sim::FaultSpec::default(),
        time_scale: args.time_scale,
        guests: Default::default(),
    })
    .await
    .context("start the embedded simulator")?;
    if human {
        println!("simulator at {} (certificate {})", sim.url, sim.fingerprint);
    }
    let cfg_path = dir.path().join("felhom.toml");
    felhom_core::config::write_config_file(
        &cfg_path,
        &sim_config(&sim, &state, dir.path().join("journal.db")),
    )?;
    let config = Config::load(Some(&cfg_path)).context("load the demo config")?;
    let felhom = Arc::new(Felhom::open(config)?);

    let specs: Vec<GuestSpec> = (0..args.guests)
        .map(|i| {
            let customer = CUSTOMERS.get(i).map(|c| c.to_string()).unwrap_or_else(|| format!("customer{i}"));
            let text = format!(
                "customer = \"{customer}\"\nhostname = \"{customer}-app\"\nvmid = \"auto\"\ngolden = \"{golden}\"\nnode = \"pve\"\nstorage = \"local-lvm\"\nrootfs_size = \"12G\"\nbridge = \"vmbr0\"\ntags = [\"demo\"]\n\n[[mount]]\nstorage = \"local-lvm\"\nsize = \"4G\"\npath = \"/srv/data\"\n"
            );
            GuestSpec::parse_many(&text).map(|mut v| v.remove(0)).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let errors = felhom.validate(&specs).await;
    if !errors.is_empty() {
        anyhow::bail!("demo specs rejected: {errors:?}");
    }
    let t_up = Instant::now();
    let reports = felhom
        .provision(specs, Arc::new(CliProgress::new(format)))
        .await?;
    let up_secs = t_up.elapsed().as_secs_f64();
    output::print_reports(&reports, format);
    let mut code = output::batch_exit_code(&reports);

    let vmids: Vec<pve_api::Vmid> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .filter_map(|r| r.vmid.and_then(|v| pve_api::Vmid::try_from(v).ok()))
        .collect();
    let mut down_secs = 0.0;
    if args.keep {
        let kept = dir.keep();
        println!("kept: state and config in {}", kept.display());
        println!("the simulator stops when this process exits; restart it with: felhom sim serve --state-dir {} --listen 127.0.0.1:0", kept.join("sim").display());
    } else if !vmids.is_empty() {
        let t_down = Instant::now();
        let down = felhom
            .teardown(vmids, Arc::new(CliProgress::new(format)))
            .await?;
        down_secs = t_down.elapsed().as_secs_f64();
        if human {
            println!("teardown:");
        }
        output::print_reports(&down, format);
        code = code.max(output::batch_exit_code(&down));
    }
    sim.shutdown().await;
    if human {
        println!(
            "demo: {} guest(s) up in {up_secs:.2}s, torn down in {down_secs:.2}s, {:.2}s in all (time scale {})",
            args.guests,
            started.elapsed().as_secs_f64(),
            args.time_scale
        );
    }
    Ok(code)
}
