//! `felhom bench`: benchmarks against an embedded simulator that print figures (a table, or
//! JSON with `--output json`). They measure; the tests assert.

mod agent;
mod archives;
mod perf;
mod reliability;
mod sim_child;

use clap::Subcommand;

use super::Ctx;
use crate::error::CliError;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Wall time vs the critical-path floor, requests per guest, task-finish detection
    /// latency, RSS and CPU, and the naive baseline, for each batch size.
    Perf(perf::PerfArgs),
    /// Crash points, a soak under transient faults with a simulator restart, and bad
    /// inputs: what ended correct, and what leaked (all must be 0). Exit 1 if anything did.
    Reliability(reliability::ReliabilityArgs),
    /// The agent under load: guests reconciling while API clients read guests and follow
    /// events: API latency, events delivered, the agent's RSS and CPU.
    Agent(agent::AgentBenchArgs),
}

/// A process's peak RSS in KiB (`VmHWM` of `/proc/<pid>/status`; `pid` may be `self`).
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub async fn run(cmd: BenchCmd, ctx: &Ctx) -> Result<(), CliError> {
    match cmd {
        BenchCmd::Perf(args) => perf::run(args, ctx.format).await,
        BenchCmd::Reliability(args) => reliability::run(args, ctx.format).await,
        BenchCmd::Agent(args) => agent::run(args, ctx.format).await,
    }
}
