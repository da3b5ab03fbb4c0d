//! `felhom preflight [SPEC…]`: is this host and token ready for the work the specs describe?
//! Privileges needed, held, missing and excess per ACL path (with the `pveum` lines that
//! grant what is missing), PVE version, golden, VMID range, storage room. Reads only.
//! Exit 0 ready, 1 not ready, 2 cannot tell.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use crate::error::{CliError, Exit};
use crate::output::{self, errln, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct PreflightArgs {
    /// Spec files (default: the config's `felhom.specs`).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// How many guests of this kind the storage must have room for.
    #[arg(long, default_value_t = 1)]
    pub guests: u64,
}

pub async fn run(args: PreflightArgs, ctx: &Ctx) -> Result<(), CliError> {
    let f = super::open(ctx)?;
    let specs = super::load_work(&args.specs, &f.config.specs)?;
    let report = match felhom_core::preflight::preflight(&f, &specs, args.guests).await {
        Ok(r) => r,
        Err(e) => {
            match ctx.format {
                OutputFormat::Json => {
                    output::json_line(&serde_json::json!({ "ready": null, "error": e.to_string() }))
                }
                OutputFormat::Human => errln!("cannot tell: {e}"),
            }
            return Err(CliError::Reported(Exit::BadInput));
        }
    };
    match ctx.format {
        OutputFormat::Json => output::json(&report),
        OutputFormat::Human => {
            let mut t = output::table(["", "path", "needs", "missing"]);
            for p in &report.paths {
                let status = if p.missing.is_empty() {
                    "ok"
                } else {
                    "MISSING"
                };
                let missing = if p.missing.is_empty() {
                    "-".to_string()
                } else {
                    p.missing.join(",")
                };
                t.add_row([status, &p.path, &p.needed.join(","), &missing]);
            }
            output::print_table(&t);
            for p in report.paths.iter().filter(|p| !p.excess.is_empty()) {
                outln!(
                    "warning: {} holds more than needed: {}",
                    p.path,
                    p.excess.join(",")
                );
            }
            outln!();
            let mut t = output::table(["", "check", "detail"]);
            for c in &report.checks {
                t.add_row([if c.ok { "ok" } else { "FAILED" }, c.name, &c.detail]);
            }
            output::print_table(&t);
            if !report.grant_commands.is_empty() {
                outln!("\nto grant what is missing, as root on the PVE host:");
                for c in &report.grant_commands {
                    outln!("  {c}");
                }
            }
            outln!("{}", if report.ready { "ready" } else { "not ready" });
        }
    }
    if report.ready { Exit::Ok } else { Exit::Failed }.into_result()
}
