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
    // Bare `resume` also names the jobs it cannot finish alone.
    let needs = if args.job.is_none() {
        f.journal
            .needs_person()
            .map_err(felhom_core::ops::OpsError::from)?
    } else {
        Vec::new()
    };
    if ctx.format == OutputFormat::Json {
        output::json(&serde_json::json!({ "jobs": reports, "needs_person": needs
            .iter()
            .map(|n| serde_json::json!({ "job": n.job.id, "why": n.why, "run": n.run }))
            .collect::<Vec<_>>() }));
    } else {
        if reports.is_empty() && needs.is_empty() {
            outln!("nothing to resume");
        }
        output::print_reports(&reports, ctx.format);
        for n in &needs {
            outln!(
                "job {} needs a person: {} (then: {})",
                n.job.id,
                n.why,
                n.run
            );
        }
    }
    let code = output::batch_exit(&reports);
    if !needs.is_empty() && code == crate::error::Exit::Ok {
        return crate::error::Exit::NeedsPerson.into_result();
    }
    code.into_result()
}
