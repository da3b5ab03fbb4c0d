//! `felhom`: provision per-customer LXC guests on Proxmox VE with a restricted API token.
//!
//! Thin: parse arguments, call `felhom-core`, render. Exit codes: 0 ok, 1 failed and rolled
//! back, 2 bad input or config (nothing written), 3 failed and rollback incomplete.

mod bench;
mod cmd_golden;
mod cmd_jobs;
mod cmd_sim;
mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use output::OutputFormat;

#[derive(Parser, Debug)]
#[command(
    name = "felhom",
    version,
    about = "Provision per-customer LXC guests on Proxmox VE with a restricted API token"
)]
struct Cli {
    /// Config file (default: ./felhom.toml, then /etc/felhom/felhom.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring up customer guests from spec files (TOML, one guest or a [[guest]] list).
    Provision {
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
    },
    /// Show what `provision` would do, with zero writes to PVE.
    Plan {
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<PathBuf>,
    },
    /// Resume one job, or every job a crash left unfinished.
    Resume { job: Option<String> },
    /// Stop, destroy (with purge) and forget guests felhom made.
    Teardown {
        #[arg(required = true, value_name = "VMID")]
        vmids: Vec<String>,
    },
    /// Compare the guests felhom owns with their specs and say what drifted.
    Status { vmids: Vec<String> },
    /// List the jobs in the journal.
    Jobs,
    /// Is this host and token ready for the work the specs describe? Reads only.
    Preflight {
        /// Spec files (default: the config's `felhom.specs`).
        #[arg(value_name = "SPEC")]
        specs: Vec<PathBuf>,
        /// How many guests of this kind the storage must have room for.
        #[arg(long, default_value_t = 1)]
        guests: u64,
    },
    /// Print the minimal role, user, token and ACL setup (pveum) for the work the specs describe.
    Role {
        /// Spec files (default: the config's `felhom.specs`).
        #[arg(value_name = "SPEC")]
        specs: Vec<PathBuf>,
    },
    /// Run the whole job end to end on an embedded simulator: three guests in parallel.
    Demo(demo::DemoArgs),
    /// The PVE simulator.
    #[command(subcommand)]
    Sim(cmd_sim::SimCmd),
    /// The golden base: recipe, inspection, identity-reset table.
    #[command(subcommand)]
    Golden(cmd_golden::GoldenCmd),
    /// Benchmarks that print figures (against an embedded simulator).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(run(cli));
    ExitCode::from(code.clamp(0, 255) as u8)
}

async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Provision { specs } => {
            cmd_jobs::provision(cli.config.as_deref(), &specs, cli.output).await
        }
        Command::Plan { specs } => cmd_jobs::plan(cli.config.as_deref(), &specs, cli.output).await,
        Command::Resume { job } => {
            cmd_jobs::resume(cli.config.as_deref(), job.as_deref(), cli.output).await
        }
        Command::Teardown { vmids } => {
            cmd_jobs::teardown(cli.config.as_deref(), &vmids, cli.output).await
        }
        Command::Status { vmids } => {
            cmd_jobs::status(cli.config.as_deref(), &vmids, cli.output).await
        }
        Command::Jobs => cmd_jobs::jobs(cli.config.as_deref(), cli.output).await,
        Command::Preflight { specs, guests } => {
            cmd_jobs::preflight(cli.config.as_deref(), &specs, guests, cli.output).await
        }
        Command::Role { specs } => cmd_jobs::role(cli.config.as_deref(), &specs, cli.output),
        Command::Demo(args) => demo::run(args, cli.output).await,
        Command::Sim(cmd) => cmd_sim::run(cmd).await,
        Command::Golden(cmd) => cmd_golden::run(cmd, cli.output),
        Command::Bench(cmd) => bench::run(cmd, cli.output).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
