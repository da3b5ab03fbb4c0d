//! `felhom sim serve`: the PVE simulator as a standalone HTTPS server; and the helpers the
//! demo and the benchmarks share with it (seeding a golden, a config that points at a
//! running simulator).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use felhom_core::config::{write_config_file, ConfigFile, FelhomSection, PveSection, SshEndpoint};

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum SimCmd {
    /// Serve the simulated PVE API over HTTPS until interrupted.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8006")]
    pub listen: SocketAddr,
    /// Where the simulator keeps its state; a restart on the same dir keeps guests, volumes
    /// and tasks. Created private if missing; a symlink or another user's directory is
    /// refused. It also holds the side-channel secret (`side-channel.secret`, 0600, new at
    /// every start) that `/felhom-sim/*` wants in the `X-Felhom-Sim-Secret` header.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Write a ready felhom config (URL, pinned fingerprint, token file) here.
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// Injected faults, e.g. "lock500=0.2,task_fail:restore=0.05,latency=20ms,seed=7".
    #[arg(long, default_value = "")]
    pub faults: String,
    /// Multiplies every modelled duration (task times, DHCP delay, lock timeouts).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// What guests are: `modelled` records (default), or real `lxc` containers booted from
    /// their restored rootfs, each on a bridge inside a network namespace of the simulator
    /// with its own DHCP server (needs root, lxc, uidmap, dnsmasq-base, iproute2, zstd).
    #[arg(long, value_enum, default_value_t = GuestsArg::Modelled)]
    pub guests: GuestsArg,
    /// A golden archive to put on the `local` backup storage (as the seed golden's volume id).
    /// Needed with `--guests lxc`: the built-in seed golden is synthetic and cannot boot;
    /// make a real one with `felhom golden build`.
    #[arg(long, value_name = "ARCHIVE")]
    pub golden: Option<PathBuf>,
    /// The cluster's nodes: a count N (1: the single node `pve`; N > 1: `pve1`..`pveN`) or a
    /// comma list of names. One HTTPS port serves them all; the node in the path decides
    /// where a call runs. `local`/`local-lvm` are per node; the golden on `local` is readable
    /// from every node.
    #[arg(long, default_value = "1", value_name = "N|NAMES")]
    pub nodes: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestsArg {
    Modelled,
    Lxc,
}

impl From<GuestsArg> for pve_sim::RuntimeKind {
    fn from(g: GuestsArg) -> Self {
        match g {
            GuestsArg::Modelled => pve_sim::RuntimeKind::Modelled,
            GuestsArg::Lxc => pve_sim::RuntimeKind::Lxc,
        }
    }
}

/// The VMID range a simulator-written config gives felhom.
pub const SIM_VMID_RANGE: [u32; 2] = [1000, 1999];
/// The golden archive a fresh simulator is seeded with.
pub const SEED_GOLDEN: &str = "vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst";

/// Put a golden archive, built by the same code `felhom golden` uses, into the simulator's
/// `local` storage, unless one is there already. Returns its volume id.
pub fn seed_golden(state_dir: &Path) -> anyhow::Result<String> {
    let dump = pve_sim::dump_dir(state_dir, "local");
    std::fs::create_dir_all(&dump).with_context(|| format!("create {}", dump.display()))?;
    let path = dump.join(SEED_GOLDEN);
    if !path.exists() {
        felhom_core::golden::build_golden_archive(
            &path,
            &felhom_core::golden::GoldenBuildOptions::default(),
        )
        .with_context(|| format!("build golden archive {}", path.display()))?;
    }
    Ok(format!("local:backup/{SEED_GOLDEN}"))
}

/// Put a real golden archive on the simulator's `local` backup storage under the seed
/// golden's name (keeping its compression suffix), hard-linked when it can be, copied
/// otherwise. Returns its volume id.
pub fn place_golden(state_dir: &Path, archive: &Path) -> anyhow::Result<String> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = [".tar.zst", ".tar.gz", ".tar"]
        .into_iter()
        .find(|s| name.ends_with(s))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--golden {}: must be a .tar.zst, .tar.gz or .tar vzdump archive",
                archive.display()
            )
        })?;
    let stem = SEED_GOLDEN.trim_end_matches(".tar.zst");
    place_archive(state_dir, archive, &format!("{stem}{suffix}"))
}

/// Put `archive` on the `local` backup storage as `name` (hard link, else copy); returns
/// its volume id.
pub fn place_archive(state_dir: &Path, archive: &Path, name: &str) -> anyhow::Result<String> {
    let dump = pve_sim::dump_dir(state_dir, "local");
    std::fs::create_dir_all(&dump).with_context(|| format!("create {}", dump.display()))?;
    let dest = dump.join(name);
    let _ = std::fs::remove_file(&dest);
    if std::fs::hard_link(archive, &dest).is_err() {
        std::fs::copy(archive, &dest)
            .with_context(|| format!("copy {} to {}", archive.display(), dest.display()))?;
    }
    Ok(format!("local:backup/{name}"))
}

/// Ctrl-C or SIGTERM (how a supervisor or a test stops the simulator: with the lxc runtime
/// the shutdown that follows removes its namespaces and DHCP servers). Installed before the
/// simulator says it is ready, so a stop sent right after the ready line is a clean stop,
/// not the default action of the signal.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
        })
    }

    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// A felhom config pointing at a running simulator.
pub fn sim_config(handle: &pve_sim::SimHandle, state_dir: &Path, journal: PathBuf) -> ConfigFile {
    ConfigFile {
        pve: PveSection {
            url: handle.url.to_string(),
            fingerprint: Some(handle.fingerprint.clone()),
            ca_file: None,
            token_id: "felhom@pve!agent".into(),
            token_secret_file: Some(
                std::path::absolute(state_dir.join("felhom-agent.token"))
                    .unwrap_or_else(|_| state_dir.join("felhom-agent.token")),
            ),
            timeout_secs: 30,
            max_response_mib: pve_api::DEFAULT_MAX_BODY_BYTES >> 20,
            max_requests_per_second: None,
            // The simulator answers for every node on one port as its first node (its
            // `/cluster/status` marks that one `local`).
            entry_node: handle.nodes().into_iter().next(),
        },
        felhom: FelhomSection {
            vmid_range: SIM_VMID_RANGE,
            journal,
            max_parallel: 16,
            max_parallel_per_node: 16,
            max_parallel_per_storage: 16,
            ssh_endpoint: SshEndpoint::Sim,
            linkup_timeout_secs: 120,
            ssh_timeout_secs: 120,
            task_timeout_secs: 600,
            connect_budget_secs: 60,
            strategy: Default::default(),
            specs: Vec::new(),
            nodes: Vec::new(),
        },
        agent: None,
    }
}

pub fn sim_settings(args: &ServeArgs) -> anyhow::Result<pve_sim::SimConfig> {
    if !(args.time_scale > 0.0 && args.time_scale <= 100.0) {
        anyhow::bail!(
            "--time-scale must be > 0 and ≤ 100; got {}",
            args.time_scale
        );
    }
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the simulator is listening beyond loopback");
    }
    let faults = args
        .faults
        .parse::<pve_sim::FaultSpec>()
        .map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
    let nodes = pve_sim::cluster_node_names(&args.nodes).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(n) = faults.node_down.iter().find(|n| !nodes.contains(n)) {
        anyhow::bail!(
            "--faults node_down:{n}: no such node (--nodes gives {})",
            nodes.join(", ")
        );
    }
    Ok(pve_sim::SimConfig {
        listen: args.listen,
        state_dir: args.state_dir.clone(),
        node: "pve".into(),
        nodes,
        faults,
        time_scale: args.time_scale,
        guests: args.guests.into(),
    })
}

pub async fn run(cmd: SimCmd, ctx: &Ctx) -> Result<(), CliError> {
    match cmd {
        SimCmd::Serve(args) => serve(args, ctx.format).await,
    }
}

/// `sim serve`: start, say where (human lines, or one JSON line once ready), serve until
/// Ctrl-C or SIGTERM. The config file, when asked for, is written before the ready line, so
/// a reader of either may use the other.
async fn serve(args: ServeArgs, format: OutputFormat) -> Result<(), CliError> {
    let settings = sim_settings(&args).map_err(|e| CliError::bad_input(format!("{e:#}")))?;
    // A symlink or another user's directory is refused before anything is put in it.
    pve_sim::prepare_state_dir(&args.state_dir, settings.guests)
        .map_err(|e| CliError::bad_input(format!("--state-dir: {e}")))?;
    let golden = match (&args.golden, args.guests) {
        (Some(g), _) => {
            place_golden(&args.state_dir, g).map_err(|e| CliError::bad_input(format!("{e:#}")))?
        }
        (None, GuestsArg::Modelled) => seed_golden(&args.state_dir)?,
        (None, GuestsArg::Lxc) => String::new(),
    };
    let stop = StopSignals::install()?;
    let handle = pve_sim::start(settings)
        .await
        .context("start the simulator")?;
    let config = match &args.write_config {
        Some(path) => {
            let journal = path
                .parent()
                .unwrap_or(Path::new("."))
                .join("felhom-journal.db");
            write_config_file(
                path,
                &sim_config(
                    &handle,
                    &args.state_dir,
                    std::path::absolute(&journal).unwrap_or(journal),
                ),
            )
            .with_context(|| format!("write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    match format {
        OutputFormat::Json => output::json_line(&serde_json::json!({
            "url": handle.url.to_string(),
            "fingerprint": handle.fingerprint,
            "state_dir": std::path::absolute(&args.state_dir).unwrap_or(args.state_dir.clone()),
            "golden": (!golden.is_empty()).then_some(&golden),
            "guests": handle.guests().to_string(),
            "nodes": handle.nodes(),
            "config": config,
            "side_channel_secret_file": std::path::absolute(pve_sim::side_channel_secret_file(&args.state_dir)).ok(),
        })),
        OutputFormat::Human => {
            outln!("pve-sim listening on {}", handle.url);
            outln!("certificate fingerprint (SHA-256): {}", handle.fingerprint);
            if golden.is_empty() {
                outln!("golden archive: none (the synthetic seed golden cannot boot as a real guest; pass --golden ARCHIVE, made with `felhom golden build`)");
            } else {
                outln!("golden archive: {golden}");
            }
            outln!("guests: {}", handle.guests());
            outln!("nodes: {}", handle.nodes().join(", "));
            outln!(
                "side channel (/felhom-sim/*): send the secret in {} as the {} header",
                pve_sim::side_channel_secret_file(&args.state_dir).display(),
                pve_api::SIDE_CHANNEL_HEADER
            );
            if let Some(path) = config {
                outln!("felhom config written to {}", path.display());
            }
        }
    }
    stop.wait().await;
    handle.shutdown().await;
    Ok(())
}
