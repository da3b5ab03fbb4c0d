//! `felhom jobs`: the journal's jobs, newest first.

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct JobsArgs {}

pub async fn run(_args: JobsArgs, ctx: &Ctx) -> Result<(), CliError> {
    let f = super::open(ctx)?;
    let jobs = felhom_core::ops::job_summary(&f.journal)?;
    match ctx.format {
        OutputFormat::Json => output::json(&serde_json::json!({ "jobs": jobs })),
        OutputFormat::Human if jobs.is_empty() => outln!("no jobs in the journal"),
        OutputFormat::Human => {
            let text = |v: &serde_json::Value, none: &str| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => none.to_string(),
                other => other.to_string(),
            };
            let time = |v: &serde_json::Value| {
                v.as_i64()
                    .map(output::utc_time)
                    .unwrap_or_else(|| "-".into())
            };
            let mut t = output::table([
                "job", "kind", "vmid", "guest", "state", "started", "ended", "error",
            ]);
            for j in &jobs {
                t.add_row([
                    text(&j["job"], ""),
                    text(&j["kind"], ""),
                    text(&j["vmid"], "-"),
                    text(&j["identity"], &text(&j["hostname"], "-")),
                    text(&j["state"], ""),
                    time(&j["started_at"]),
                    time(&j["ended_at"]),
                    text(&j["error"], "").replace('\n', " "),
                ]);
            }
            output::print_table(&t);
        }
    }
    Ok(())
}
