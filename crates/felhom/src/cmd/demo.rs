//! `felhom demo`: the whole product end to end on an embedded simulator. It builds a real
//! golden archive with the same code `felhom golden` uses, inspects it, starts the simulator
//! with that archive on its backup storage, brings up three customer guests in parallel
//! through the real client over real HTTPS, prints their IPs and SSH host-key fingerprints,
//! and tears them down again.
//!
//! `felhom demo --real` does the same with real guests: a real Debian golden (built with
//! `felhom golden build` once and cached, or `--golden ARCHIVE`) and the simulator's lxc
//! runtime, so each guest boots as an unprivileged LXC container with systemd as PID 1,
//! leases its address from the simulator's DHCP server and proves its own SSH host key.
//! The demo then shows what each guest says about itself from the inside.
//!
//! `--strategy restore,linked-clone` (any of `restore`, `restore-resize`, `linked-clone`)
//! runs the bring-up once per strategy, one after the other on the same simulator (each with
//! its own journal, its guests torn down before the next), and reports their times side by
//! side: publishing the template (linked-clone only, once), each step's mean time per guest,
//! and the bring-up's wall time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use felhom_core::config::{Config, Strategy};
use felhom_core::job::{Outcome, Progress, ProgressEvent};
use felhom_core::ops::Felhom;
use felhom_core::spec::GuestSpec;

use super::sim::{place_golden, seed_golden, sim_config};
use super::Ctx;
use crate::error::CliError;
use crate::output::{self, errln, outln, CliProgress, OutputFormat};

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
    /// Real guests: boot each as an LXC container from a real golden (root; lxc, uidmap,
    /// dnsmasq-base, mmdebstrap). The golden is built once and cached (about 30 s).
    #[arg(long)]
    pub real: bool,
    /// With --real: this golden archive instead of the cached build.
    #[arg(long, value_name = "ARCHIVE", requires = "real")]
    pub golden: Option<PathBuf>,
    /// How guests are built (restore, restore-resize, linked-clone); several, comma
    /// separated, run one after the other and are reported side by side.
    #[arg(long, value_delimiter = ',', default_value = "restore", value_parser = parse_strategy)]
    pub strategy: Vec<Strategy>,
    /// A simulated cluster of this many nodes (pve1…pveN): the guests get `node = "auto"`
    /// and the demo shows where placement put each one (modelled guests, restore strategies).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    [
        Strategy::Restore,
        Strategy::RestoreResize,
        Strategy::LinkedClone,
    ]
    .into_iter()
    .find(|k| k.name() == s)
    .ok_or_else(|| format!("one of restore, restore-resize, linked-clone; got '{s}'"))
}

const CUSTOMERS: &[&str] = &[
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wonka", "stark",
];

pub async fn run(args: DemoArgs, ctx: &Ctx) -> Result<(), CliError> {
    let started = Instant::now();
    if args.guests == 0 || args.guests > 100 {
        return Err(CliError::bad_input(format!(
            "--guests must be 1–100; got {}",
            args.guests
        )));
    }
    if !(args.time_scale > 0.0 && args.time_scale <= 100.0) {
        return Err(CliError::bad_input(format!(
            "--time-scale must be > 0 and ≤ 100; got {}",
            args.time_scale
        )));
    }
    if args.nodes == 0 || args.nodes > 10 {
        return Err(CliError::bad_input(format!(
            "--nodes must be 1–10; got {}",
            args.nodes
        )));
    }
    if args.nodes > 1 && args.real {
        return Err(CliError::bad_input(
            "--nodes with --real: the lxc runtime's nodes share one network and are not booted as a cluster by the demo; use modelled guests",
        ));
    }
    if args.nodes > 1 && args.strategy.contains(&Strategy::LinkedClone) {
        return Err(CliError::bad_input(
            "--nodes with --strategy linked-clone: the demo publishes one template, on one node; use restore or restore-resize",
        ));
    }
    let mut strategies = args.strategy.clone();
    strategies.dedup();
    if strategies.len() > 1 && args.keep {
        return Err(CliError::bad_input(
            "--keep keeps one strategy's guests: give one --strategy",
        ));
    }
    let format = ctx.format;
    let human = format == OutputFormat::Human;
    let dir = tempfile::Builder::new()
        .prefix("felhom-demo-")
        .tempdir()
        .context("create a temp dir")?;
    let state = dir.path().join("sim");
    std::fs::create_dir_all(&state).context("create the simulator's state dir")?;

    let (golden, golden_path) = if args.real {
        pve_sim::runtime::lxc::preflight().map_err(|e| {
            CliError::bad_input(format!(
                "felhom demo --real: {e} (or run the demo without --real)"
            ))
        })?;
        let archive = match &args.golden {
            Some(p) => p.clone(),
            None => cached_golden(human)?,
        };
        let volid =
            place_golden(&state, &archive).map_err(|e| CliError::bad_input(format!("{e:#}")))?;
        let name = volid.trim_start_matches("local:backup/");
        (volid.clone(), pve_sim::dump_dir(&state, "local").join(name))
    } else {
        let golden = seed_golden(&state)?;
        let path = pve_sim::dump_dir(&state, "local").join(super::sim::SEED_GOLDEN);
        (golden, path)
    };
    let report =
        felhom_core::golden::inspect_path(&golden_path).context("inspect the golden archive")?;
    if human {
        outln!(
            "golden {golden}: {} finding(s) with errors, {} warning(s)",
            report.error_count(),
            report.warning_count()
        );
    }
    if report.error_count() > 0 {
        return Err(CliError::failed(format!(
            "the demo's golden archive has inspection errors: {report:?}"
        )));
    }

    let sim = pve_sim::start(pve_sim::SimConfig {
        listen: "127.0.0.1:0".parse().context("loopback address")?,
        state_dir: state.clone(),
        node: "pve".into(),
        nodes: if args.nodes > 1 {
            pve_sim::cluster_node_names(&args.nodes.to_string()).map_err(CliError::bad_input)?
        } else {
            Vec::new()
        },
        faults: pve_sim::FaultSpec::default(),
        time_scale: args.time_scale,
        guests: if args.real {
            pve_sim::RuntimeKind::Lxc
        } else {
            pve_sim::RuntimeKind::Modelled
        },
    })
    .await
    .context("start the embedded simulator")?;
    if human {
        outln!("simulator at {} (certificate {})", sim.url, sim.fingerprint);
    }
    // One node: the node by name; a cluster: placement chooses.
    let node = if args.nodes > 1 { "auto" } else { "pve" };
    let specs: Vec<GuestSpec> = (0..args.guests)
        .map(|i| {
            let customer = CUSTOMERS.get(i).map(|c| c.to_string()).unwrap_or_else(|| format!("customer{i}"));
            let text = format!(
                "customer = \"{customer}\"\nhostname = \"{customer}-app\"\nvmid = \"auto\"\ngolden = \"{golden}\"\nnode = \"{node}\"\nstorage = \"local-lvm\"\nrootfs_size = \"12G\"\nbridge = \"vmbr0\"\ntags = [\"demo\"]\n\n[[mount]]\nstorage = \"local-lvm\"\nsize = \"4G\"\npath = \"/srv/data\"\n"
            );
            GuestSpec::parse_many(&text).map(|mut v| v.remove(0)).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut runs = Vec::new();
    for strategy in &strategies {
        let run = run_strategy(&sim, &state, dir.path(), *strategy, &specs, &args, format).await;
        match run {
            Ok(run) => runs.push(run),
            Err(e) => {
                sim.shutdown().await;
                return Err(e);
            }
        }
    }
    let mut exit = runs
        .iter()
        .map(|r| r.exit)
        .max()
        .unwrap_or(crate::error::Exit::Ok);
    let mut kept = None;
    if args.keep {
        let path = dir.keep();
        if human {
            outln!("kept: state and config in {}", path.display());
            outln!("the simulator stops when this process exits; restart it with: felhom sim serve --state-dir {} --listen 127.0.0.1:0", path.join("sim").display());
        }
        kept = Some(path);
    }
    let (sim_url, sim_fingerprint) = (sim.url.to_string(), sim.fingerprint.clone());
    sim.shutdown().await;
    let total_secs = started.elapsed().as_secs_f64();
    let guests_word = format!(
        "{} {}guest(s)",
        args.guests,
        if args.real { "real " } else { "" }
    );
    if human && runs.len() > 1 {
        print_comparison(&runs, &guests_word, args.time_scale);
    }
    let Some(first) = runs.first() else {
        exit = exit.max(crate::error::Exit::Failed);
        return exit.into_result();
    };
    match format {
        // The top-level fields are the first strategy's run (what one strategy reports);
        // `strategies` has every run's.
        OutputFormat::Json => output::json(&serde_json::json!({
            "guests": args.guests,
            "nodes": args.nodes,
            "real": args.real,
            "time_scale": args.time_scale,
            "golden": {
                "volid": golden,
                "errors": report.error_count(),
                "warnings": report.warning_count(),
            },
            "simulator": { "url": sim_url, "fingerprint": sim_fingerprint },
            "strategy": first.strategy.name(),
            "placement": first.placement,
            "provision": first.reports,
            "apply_again": { "jobs": first.again, "writes": first.again_writes },
            "real_guests": first.real_guests,
            "teardown": first.down,
            "kept": kept,
            "up_s": first.up_secs,
            "down_s": first.down_secs,
            "total_s": total_secs,
            "strategies": runs.iter().map(StrategyRun::figures).collect::<Vec<_>>(),
        })),
        OutputFormat::Human => {
            let ups: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}s ({})", r.up_secs, r.strategy.name()))
                .collect();
            let down: f64 = runs.iter().map(|r| r.down_secs).sum();
            outln!(
                "demo: {guests_word} up in {}, torn down in {down:.2}s, {total_secs:.2}s in all (time scale {})",
                ups.join(", "),
                args.time_scale
            )
        }
    }
    exit.into_result()
}

/// One strategy's bring-up, reconcile, look and teardown, with its times.
struct StrategyRun {
    strategy: Strategy,
    /// With `--nodes`: where each guest was placed (`label`, `vmid`, `node`).
    placement: Vec<serde_json::Value>,
    /// `golden publish` before the bring-up (linked-clone only).
    publish_secs: Option<f64>,
    up_secs: f64,
    down_secs: f64,
    /// Each step's mean time per guest, in the order the steps first ran.
    steps: Vec<(&'static str, f64)>,
    reports: Vec<felhom_core::ops::JobReport>,
    again: Vec<felhom_core::ops::JobReport>,
    again_writes: u64,
    real_guests: Vec<serde_json::Value>,
    down: Vec<felhom_core::ops::JobReport>,
    exit: crate::error::Exit,
}

impl StrategyRun {
    fn figures(&self) -> serde_json::Value {
        serde_json::json!({
            "strategy": self.strategy.name(),
            "publish_s": self.publish_secs,
            "up_s": self.up_secs,
            "down_s": self.down_secs,
            "steps_s": self.steps.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "succeeded": self.reports.iter().filter(|r| r.outcome == Outcome::Succeeded).count(),
            "placement": self.placement,
        })
    }
}

async fn run_strategy(
    sim: &pve_sim::SimHandle,
    state: &Path,
    dir: &Path,
    strategy: Strategy,
    specs: &[GuestSpec],
    args: &DemoArgs,
    format: OutputFormat,
) -> Result<StrategyRun, CliError> {
    let human = format == OutputFormat::Human;
    let name = strategy.name();
    if human && args.strategy.len() > 1 {
        outln!("strategy {name}:");
    }
    let cfg_path = dir.join(format!("felhom-{name}.toml"));
    let mut file = sim_config(sim, state, dir.join(format!("journal-{name}.db")));
    file.felhom.strategy = strategy;
    felhom_core::config::write_config_file(&cfg_path, &file).context("write the demo config")?;
    let config = Config::load(Some(&cfg_path)).context("load the demo config")?;
    let felhom = Arc::new(Felhom::open(config).context("open felhom")?);

    let mut publish_secs = None;
    if strategy == Strategy::LinkedClone {
        // Once per golden, node and storage, at the guests' rootfs size.
        let s0 = &specs[0];
        let t = Instant::now();
        let published = felhom
            .publish(
                s0.node.as_str(),
                s0.storage.as_str(),
                s0.golden.as_str(),
                Some(s0.rootfs_size),
                Arc::new(CliProgress::new(format)),
            )
            .await?;
        if let felhom_core::publish::PublishReport::Ran { report, .. } = &published {
            if report.outcome != Outcome::Succeeded {
                return Err(CliError::failed(format!(
                    "golden publish for the linked clones failed: {:?}",
                    report.outcome
                )));
            }
        }
        publish_secs = Some(t.elapsed().as_secs_f64());
        if human {
            outln!("golden publish: {:.2}s", t.elapsed().as_secs_f64());
        }
    }
    // After the publish: a linked clone's spec needs its template.
    let errors = felhom.validate(specs).await;
    if !errors.is_empty() {
        return Err(CliError::failed(format!("demo specs rejected: {errors:?}")));
    }
    let clock = Arc::new(StepClock::new(Arc::new(CliProgress::new(format))));
    let t_up = Instant::now();
    let reports = felhom.apply(specs.to_vec(), false, clock.clone()).await?;
    let up_secs = t_up.elapsed().as_secs_f64();
    let steps = clock.means();
    if human {
        output::print_reports(&reports, format);
    }
    let placement = if args.nodes > 1 {
        placement_of(&felhom, &reports).await
    } else {
        Vec::new()
    };
    if human && !placement.is_empty() {
        outln!("placement (node = \"auto\"):");
        for p in &placement {
            outln!(
                "  {} → {} (vmid {})",
                p["label"].as_str().unwrap_or_default(),
                p["node"].as_str().unwrap_or_default(),
                p["vmid"]
            );
        }
    }
    let mut exit = output::batch_exit(&reports);
    // felhom reconciles: the same specs again find every guest as specified, and write nothing.
    let before = felhom.client.stats();
    let again = felhom
        .apply(specs.to_vec(), false, Arc::new(CliProgress::new(format)))
        .await?;
    let again_writes = felhom.client.stats().since(&before).writes;
    if human {
        outln!("apply again (the same specs):");
        output::print_reports(&again, format);
        outln!("({again_writes} write requests)");
    }
    exit = exit.max(output::batch_exit(&again));

    let vmids: Vec<pve_api::Vmid> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Succeeded)
        .filter_map(|r| r.vmid.and_then(|v| pve_api::Vmid::try_from(v).ok()))
        .collect();
    let real_guests = if args.real && !vmids.is_empty() {
        let guests = look_at_real_guests(sim, &vmids).await;
        if human {
            print_real_guests(&vmids, &guests);
        }
        guests
    } else {
        Vec::new()
    };
    let mut down_secs = 0.0;
    let mut down = Vec::new();
    if !args.keep && !vmids.is_empty() {
        let t_down = Instant::now();
        down = felhom
            .teardown(vmids, Arc::new(CliProgress::new(format)))
            .await?;
        down_secs = t_down.elapsed().as_secs_f64();
        if human {
            outln!("teardown:");
            output::print_reports(&down, format);
        }
        exit = exit.max(output::batch_exit(&down));
    }
    Ok(StrategyRun {
        strategy,
        placement,
        publish_secs,
        up_secs,
        down_secs,
        steps,
        reports,
        again,
        again_writes,
        real_guests,
        down,
        exit,
    })
}

/// Where PVE says each succeeded guest lives (one `/cluster/resources` read).
async fn placement_of(
    felhom: &Felhom,
    reports: &[felhom_core::ops::JobReport],
) -> Vec<serde_json::Value> {
    let Ok(resources) = felhom
        .client
        .cluster_resources(Some(pve_api::ResourceType::Vm))
        .await
    else {
        return Vec::new();
    };
    reports
        .iter()
        .filter_map(|r| {
            let vmid = r.vmid?;
            let node = resources
                .iter()
                .find(|x| x.vmid == Some(vmid))
                .and_then(|x| x.node.clone())?;
            Some(serde_json::json!({ "label": r.label, "vmid": vmid, "node": node }))
        })
        .collect()
}

/// The strategies side by side: publish, each step's mean per guest, the bring-up's wall.
fn print_comparison(runs: &[StrategyRun], guests: &str, time_scale: f64) {
    outln!("strategies side by side ({guests}, time scale {time_scale}; a step's mean time per guest):");
    let mut names: Vec<&'static str> = Vec::new();
    for r in runs {
        for (k, _) in &r.steps {
            if !names.contains(k) {
                names.push(k);
            }
        }
    }
    let head: Vec<String> = runs
        .iter()
        .map(|r| format!("{:>14}", r.strategy.name()))
        .collect();
    outln!("  {:<16}{}", "", head.join(""));
    let secs =
        |v: Option<f64>| v.map_or_else(|| format!("{:>14}", "-"), |v| format!("{:>13.2}s", v));
    let row = |label: &str, cells: Vec<String>| outln!("  {label:<16}{}", cells.join(""));
    row(
        "publish (once)",
        runs.iter().map(|r| secs(r.publish_secs)).collect(),
    );
    for n in names {
        row(
            n,
            runs.iter()
                .map(|r| secs(r.steps.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)))
                .collect(),
        );
    }
    row(
        "bring-up (wall)",
        runs.iter().map(|r| secs(Some(r.up_secs))).collect(),
    );
}

/// A progress sink that passes every event on and times each job's steps (from a step's
/// first start to its end, retries included).
struct StepClock {
    inner: Arc<dyn Progress>,
    open: std::sync::Mutex<std::collections::HashMap<(String, &'static str), Instant>>,
    done: std::sync::Mutex<Vec<(&'static str, f64)>>,
}

impl StepClock {
    fn new(inner: Arc<dyn Progress>) -> StepClock {
        StepClock {
            inner,
            open: Default::default(),
            done: Default::default(),
        }
    }

    /// Each step's mean over the jobs that ran it, in the order the steps first ended.
    fn means(&self) -> Vec<(&'static str, f64)> {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(&'static str, f64, usize)> = Vec::new();
        for (step, secs) in done.iter() {
            match out.iter_mut().find(|(k, _, _)| k == step) {
                Some((_, sum, n)) => {
                    *sum += secs;
                    *n += 1;
                }
                None => out.push((step, *secs, 1)),
            }
        }
        out.into_iter()
            .map(|(k, sum, n)| (k, sum / n as f64))
            .collect()
    }
}

impl Progress for StepClock {
    fn event(&self, job: &str, label: &str, event: ProgressEvent<'_>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            ProgressEvent::Step(step) => {
                open.entry((job.to_string(), step))
                    .or_insert_with(Instant::now);
            }
            ProgressEvent::StepDone(step) => {
                if let Some(t) = open.remove(&(job.to_string(), step)) {
                    self.done
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((step, t.elapsed().as_secs_f64()));
                }
            }
            _ => {}
        }
        drop(open);
        self.inner.event(job, label, event);
    }
}

/// The golden `--real` boots: built with the product's own builder (Docker from Debian, the
/// first-boot key unit) into the user's cache, keyed by the build's input hash so a changed
/// recipe is rebuilt and an unchanged one is reused.
fn cached_golden(human: bool) -> Result<PathBuf, CliError> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("felhom");
    std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let probe = felhom_core::golden_build::BuildOptions::new("golden.tar.zst");
    let hash = probe.input_hash();
    let out = cache.join(format!("golden-{}.tar.zst", &hash[..16]));
    if out.is_file() {
        if human {
            outln!("golden: reusing {}", out.display());
        }
        return Ok(out);
    }
    if human {
        outln!(
            "golden: building {} (once; felhom golden build)",
            out.display()
        );
    }
    let opts = felhom_core::golden_build::BuildOptions {
        out: out.clone(),
        ..probe
    };
    let progress = |line: &str| {
        if human {
            errln!("  {line}");
        }
    };
    let report = felhom_core::golden_build::build(&opts, &progress)
        .map_err(|e| CliError::failed(format!("build the demo's golden: {e}")))?;
    if human {
        outln!(
            "golden: {} bytes in {:.1}s",
            std::fs::metadata(&report.archive)
                .map(|m| m.len())
                .unwrap_or(0),
            report.mmdebstrap_secs + report.archive_secs
        );
    }
    Ok(out)
}

/// What each real guest says about itself, read by the simulator from outside (its disk,
/// its namespaces, the DHCP server's leases): the proof that identity was reset for real.
/// One entry per VMID, in order (the simulator's state dump for that guest).
async fn look_at_real_guests(
    sim: &pve_sim::SimHandle,
    vmids: &[pve_api::Vmid],
) -> Vec<serde_json::Value> {
    // One state dump serves every guest (each dump runs a few processes per guest); it is
    // taken again until every guest's systemd has answered, or a minute has passed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = sim.state().await;
        let guests: Vec<serde_json::Value> = vmids
            .iter()
            .map(|vmid| {
                state["guests"]
                    .as_array()
                    .and_then(|gs| gs.iter().find(|g| g["vmid"] == vmid.get()))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let booted = guests
            .iter()
            .all(|g| g["lxc"]["boot"]["systemd_state"].is_string());
        if booted || Instant::now() > deadline {
            return guests;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_real_guests(vmids: &[pve_api::Vmid], guests: &[serde_json::Value]) {
    outln!("real guests (read from their disks and namespaces):");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    for (vmid, g) in vmids.iter().zip(guests) {
        let lx = &g["lxc"];
        let leases: Vec<String> = lx["leases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| format!("{} on {}", text(&l["ip"]), text(&l["mac"])))
                    .collect()
            })
            .unwrap_or_default();
        outln!(
            "  {vmid} {}: systemd {}, machine-id {}, host key {}, lease {}",
            text(&lx["uts_hostname"]),
            text(&lx["boot"]["systemd_state"]),
            text(&lx["machine_id"]),
            text(&lx["host_key_fingerprint"]),
            leases.join(" ")
        );
    }
}
