//! `felhom teardown VMID…`: stop, destroy with purge and forget guests felhom made (and only
//! those: a VMID outside its range or without a live record is refused, exit 2).

use std::sync::Arc;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, CliProgress};

#[derive(Args, Debug)]
pub struct TeardownArgs {
    /// VMIDs of guests felhom made (within the config's vmid_range).
    #[arg(required = true, value_name = "VMID")]
    pub vmids: Vec<String>,
}

pub async fn run(args: TeardownArgs, ctx: &Ctx) -> Result<(), CliError> {
    let vmids = super::parse_vmids(&args.vmids)?;
    let f = super::open(ctx)?;
    let reports = f
        .teardown(vmids, Arc::new(CliProgress::new(ctx.format)))
        .await
        .map_err(|e| CliError::invalid_field("teardown refused", "vmid", e))?;
    output::print_reports(&reports, ctx.format);
    output::batch_exit(&reports).into_result()
}
