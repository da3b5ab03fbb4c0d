//! `felhom resume [JOB]`: finish one job, or every job a crash left unfinished, from what the
//! journal and PVE say was done. Exit as `provision`.

use std::sync::Arc;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, CliProgress, OutputFormat};

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The job to resume (its id, as `felhom jobs` lists it); default: every unfinished job.
    #[arg(value_name = "JOB")]
    pub job: Option<String>,
}

pub async fn run(args: ResumeArgs, ctx: &Ctx) -> Result<(), CliError> {
    let f = super::open(ctx)?;
    let reports = f
        .resume(args.job.as_deref(), Arc::new(CliProgress::new(ctx.format)))
        .await?;
    if reports.is_empty() && ctx.format == OutputFormat::Human {
        outln!("nothing to resume");
    }
    output::print_reports(&reports, ctx.format);
    output::batch_exit(&reports).into_result()
}
