//! `felhom apply SPEC… [--prune]` (alias `provision`): converge the guests the spec files
//! describe. Per guest identity (customer/name) felhom observes PVE and the journal and
//! decides: create, unchanged (zero writes), repair the drift the steps can repair, continue
//! an interrupted job, or refuse with the reason (`felhom plan` prints exactly these
//! decisions). `--prune` also tears down felhom guests in none of the specs.
//! Exit: 0 converged; 1 something could not converge (said why); 2 a spec or the config is
//! refused, before anything is written; 3 needs a person (or `felhom resume`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, CliProgress};

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Guest spec files (TOML: one guest, or a [[guest]] list).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Also tear down felhom guests whose identity is in none of the specs.
    #[arg(long)]
    pub prune: bool,
}

pub async fn run(args: ApplyArgs, ctx: &Ctx) -> Result<(), CliError> {
    let (f, specs) = super::open_with_specs(ctx, &args.specs).await?;
    let reports = f
        .apply(specs, args.prune, Arc::new(CliProgress::new(ctx.format)))
        .await?;
    output::print_reports(&reports, ctx.format);
    output::batch_exit(&reports).into_result()
}
