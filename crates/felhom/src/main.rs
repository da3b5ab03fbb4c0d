//! `felhom`: provision per-customer LXC guests on Proxmox VE with a restricted API token.
//!
//! This file only parses and dispatches: the clap tree is here, each command lives in its
//! own module under `cmd/` and returns `Result<(), CliError>`, and `main` turns that into the
//! exit code once (`error.rs`: 0 ok, 1 failed and rolled back, 2 bad input or config and
//! nothing written, 3 needs a person). Everything printed goes through `output.rs`.

// Every byte for stdout and stderr goes through output.rs (a closed pipe is not a panic).
#![deny(clippy::print_stdout, clippy::print_stderr)]

// The agent branch's router mounts agent::page::index and agent::metrics::handler; until
// then nothing here calls them.
#[allow(dead_code)]
mod agent;
mod cmd;
mod error;
mod output;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use cmd::Ctx;
use error::Exit;
use output::OutputFormat;

#[derive(Parser, Debug)]
#[command(
    name = "felhom",
    version,
    about = "Provision per-customer LXC guests on Proxmox VE with a restricted API token",
    after_help = "Exit codes: 0 ok; 1 failed (rolled back), drift, or not ready; 2 bad input or config, nothing written; 3 needs a person."
)]
pub struct Cli {
    /// Config file; this flag wins over $FELHOM_CONFIG, and without either:
    /// ./felhom.toml, then /etc/felhom/felhom.toml.
    #[arg(long, global = true, value_name = "FILE", env = "FELHOM_CONFIG")]
    config: Option<PathBuf>,
    /// Output format: text for people, or exactly one JSON document on stdout.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Converge customer guests to their spec files: create, repair, continue, or leave
    /// unchanged (TOML, one guest or a [[guest]] list).
    #[command(visible_alias = "provision")]
    Apply(cmd::apply::ApplyArgs),
    /// Show what `apply` would decide for each guest, with zero writes to PVE.
    Plan(cmd::plan::PlanArgs),
    /// Resume one job, or every job a crash left unfinished.
    Resume(cmd::resume::ResumeArgs),
    /// Stop, destroy (with purge) and forget guests felhom made (by VMID or customer/name).
    Teardown(cmd::teardown::TeardownArgs),
    /// Compare the guests felhom owns with their specs and say what drifted.
    Status(cmd::status::StatusArgs),
    /// List the jobs in the journal.
    Jobs(cmd::jobs::JobsArgs),
    /// Is this host and token ready for the work the specs describe? Reads only.
    Preflight(cmd::preflight::PreflightArgs),
    /// Print the minimal role, user, token and ACL setup (pveum) for the work the specs describe.
    Role(cmd::role::RoleArgs),
    /// Run the whole job end to end on an embedded simulator: three guests in parallel.
    Demo(cmd::demo::DemoArgs),
    /// The PVE simulator.
    #[command(subcommand)]
    Sim(cmd::sim::SimCmd),
    /// The golden base: recipe, build, inspection, identity-reset table.
    #[command(subcommand)]
    Golden(cmd::golden::GoldenCmd),
    /// Benchmarks that print figures (against an embedded simulator).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Print a shell completion script (e.g. `felhom completions bash > /etc/bash_completion.d/felhom`).
    Completions(cmd::completions::CompletionsArgs),
    /// Print the man page (roff), or write one per command with --dir.
    Man(cmd::completions::ManArgs),
}

fn main() -> std::process::ExitCode {
    // First, while this is the only thread: the token secret leaves the environment (and
    // every child's) before anything else runs (felhom_core::secrets).
    felhom_core::secrets::take_env_secret();
    let cli = Cli::parse();
    output::init_tracing();
    let ctx = Ctx {
        config: cli.config,
        format: cli.output,
    };
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli.command, &ctx)),
        Err(e) => Err(error::CliError::failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    let exit = match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            e.render(ctx.format);
            e.exit()
        }
    };
    output::finish(exit)
}

async fn run(command: Command, ctx: &Ctx) -> Result<(), error::CliError> {
    match command {
        Command::Apply(a) => cmd::apply::run(a, ctx).await,
        Command::Plan(a) => cmd::plan::run(a, ctx).await,
        Command::Resume(a) => cmd::resume::run(a, ctx).await,
        Command::Teardown(a) => cmd::teardown::run(a, ctx).await,
        Command::Status(a) => cmd::status::run(a, ctx).await,
        Command::Jobs(a) => cmd::jobs::run(a, ctx).await,
        Command::Preflight(a) => cmd::preflight::run(a, ctx).await,
        Command::Role(a) => cmd::role::run(a, ctx).await,
        Command::Demo(a) => cmd::demo::run(a, ctx).await,
        Command::Sim(c) => cmd::sim::run(c, ctx).await,
        Command::Golden(c) => cmd::golden::run(c, ctx).await,
        Command::Bench(c) => cmd::bench::run(c, ctx).await,
        Command::Completions(a) => cmd::completions::completions(a),
        Command::Man(a) => cmd::completions::man(a, ctx),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every argument of every command and subcommand, positional or not, says what it is.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(format!("{path} (the command itself)"));
            }
            for arg in cmd.get_arguments() {
                *seen += 1;
                let has = arg
                    .get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty())
                    || arg.get_long_help().is_some();
                if !has {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing, seen);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(&cmd, "", &mut missing, &mut seen);
        assert!(seen > 40, "the walk saw only {seen} arguments");
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    /// `felhom man` names every command; `man --dir` writes a page for every command and
    /// subcommand (felhom-golden-build.1, …).
    #[test]
    fn man_pages_cover_the_whole_tree() {
        fn names(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let page = format!("{prefix}-{}", sub.get_name());
                out.push((sub.get_name().to_string(), page.clone()));
                names(sub, &page, out);
            }
        }
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut all = Vec::new();
        names(&cmd, "felhom", &mut all);
        assert!(all.len() > 20, "{all:?}");

        let page = String::from_utf8(crate::cmd::completions::man_page().unwrap()).unwrap();
        assert!(page.contains(".TH felhom 1"), "{page}");
        for sub in cmd.get_subcommands() {
            let name = sub.get_name().replace('-', "\\-");
            assert!(
                page.contains(&format!("felhom\\-{name}(1)")),
                "{name} not in:\n{page}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), dir.path()).unwrap();
        for (name, file) in &all {
            let text = std::fs::read_to_string(dir.path().join(format!("{file}.1")))
                .unwrap_or_else(|e| panic!("{file}.1: {e}"));
            assert!(text.contains(".TH"), "{file}.1");
            assert!(
                text.contains(&name.replace('-', "\\-")),
                "{file}.1 does not name {name}"
            );
        }
    }
}
