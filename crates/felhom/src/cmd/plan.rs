//! `felhom plan SPEC…`: what `provision` would do for each guest, step by step, with zero
//! writes to PVE (it reads what is there to say what would change).

use std::path::PathBuf;

use clap::Args;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Guest spec files (TOML: one guest, or a [[guest]] list).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
}

pub async fn run(args: PlanArgs, ctx: &Ctx) -> Result<(), CliError> {
    let (f, specs) = super::open_with_specs(ctx, &args.specs).await?;
    let vmids = f.pick_vmids(&specs).await?;
    let mut plans = Vec::new();
    for (s, vmid) in specs.iter().zip(vmids) {
        let steps = f.plan(s, vmid).await?;
        plans.push((s.hostname.to_string(), steps));
    }
    match ctx.format {
        OutputFormat::Json => {
            let v: Vec<_> = plans
                .iter()
                .map(|(h, steps)| {
                    let steps: Vec<_> = steps
                        .iter()
                        .map(|(s, d)| serde_json::json!({ "step": s, "would": d }))
                        .collect();
                    serde_json::json!({ "hostname": h, "steps": steps })
                })
                .collect();
            output::json(&serde_json::json!({ "plans": v }));
        }
        OutputFormat::Human => {
            let mut t = output::table(["guest", "step", "would"]);
            for (h, steps) in &plans {
                for (s, d) in steps {
                    t.add_row([h.as_str(), s.as_str(), d.as_str()]);
                }
            }
            output::print_table(&t);
            outln!("(plan only: nothing was written)");
        }
    }
    Ok(())
}
