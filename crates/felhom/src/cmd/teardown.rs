//! `felhom teardown TARGET…`: stop, destroy with purge and forget guests felhom made, named by
//! VMID or identity (`customer/name`); only those: a VMID outside its range, or a guest felhom
//! has no record of, is refused (exit 2). A target already gone is `absent` (exit 0). Any
//! unfinished bring-up of the guest is superseded and never resumes.

use std::sync::Arc;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, CliProgress};

#[derive(Args, Debug)]
pub struct TeardownArgs {
    /// Guests felhom made: a VMID (within the config's vmid_range) or an identity customer/name.
    #[arg(required = true, value_name = "VMID|CUSTOMER/NAME")]
    pub targets: Vec<String>,
}

pub async fn run(args: TeardownArgs, ctx: &Ctx) -> Result<(), CliError> {
    let targets = super::parse_targets(&args.targets)?;
    let f = super::open(ctx)?;
    let reports = f
        .teardown_targets(targets, Arc::new(CliProgress::new(ctx.format)))
        .await
        .map_err(|e| CliError::invalid_field("teardown refused", "vmid", e))?;
    output::print_reports(&reports, ctx.format);
    output::batch_exit(&reports).into_result()
}
