//! `felhom provision SPEC…`: bring up the guests the spec files describe, in parallel within
//! the configured limits. Exit: the batch's most urgent job (0, 1 rolled back, 3 needs a
//! person); 2 when a spec or the config is refused, before anything is written.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, CliProgress};

#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// Guest spec files (TOML: one guest, or a [[guest]] list).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
}

pub async fn run(args: ProvisionArgs, ctx: &Ctx) -> Result<(), CliError> {
    let (f, specs) = super::open_with_specs(ctx, &args.specs).await?;
    let reports = f
        .provision(specs, Arc::new(CliProgress::new(ctx.format)))
        .await?;
    output::print_reports(&reports, ctx.format);
    output::batch_exit(&reports).into_result()
}
