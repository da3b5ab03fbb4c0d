//! `felhom plan SPEC…`: what `apply` would decide for each guest (create, unchanged, repair, continue, refuse; with `--prune`, what it would remove), and for a creation each step, with zero
//! writes to PVE (it reads what is there to say what would change).

use std::path::PathBuf;

use clap::Args;
use felhom_core::apply::Decision;
use pve_api::Vmid;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Guest spec files (TOML: one guest, or a [[guest]] list).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Also list the felhom guests `apply --prune` would tear down.
    #[arg(long)]
    pub prune: bool,
}

pub async fn run(args: PlanArgs, ctx: &Ctx) -> Result<(), CliError> {
    let (f, specs) = super::open_with_specs(ctx, &args.specs).await?;
    let decisions = f.plan_apply(&specs, args.prune).await?;
    let mut plans = Vec::new();
    for (i, (id, d)) in decisions.iter().enumerate() {
        // A creation lists what each step will do; other decisions say it in one line.
        let steps = match (d, specs.get(i)) {
            (Decision::Create { vmid, node, placed }, Some(s)) => {
                let vmid = vmid.and_then(|v| Vmid::try_from(v).ok());
                // A placed guest: where placement put it and why, then its steps there.
                let spec = match node {
                    Some(n) => s.on_node(n).map_err(|rule| {
                        CliError::invalid_field("invalid guest spec", "node", &rule)
                    })?,
                    None => s.clone(),
                };
                let mut steps = Vec::new();
                if let (Some(n), Some(why)) = (node, placed) {
                    steps.push(("place".to_string(), format!("node {n}: {why}")));
                }
                steps.extend(f.plan(&spec, vmid).await?);
                steps
            }
            _ => Vec::new(),
        };
        let hostname = specs
            .get(i)
            .map(|s| s.hostname.to_string())
            .unwrap_or_else(|| id.name.clone());
        plans.push((id.clone(), hostname, d.clone(), steps));
    }
    match ctx.format {
        OutputFormat::Json => {
            let v: Vec<_> = plans
                .iter()
                .map(|(id, h, d, steps)| {
                    let steps: Vec<_> = steps
                        .iter()
                        .map(|(s, d)| serde_json::json!({ "step": s, "would": d }))
                        .collect();
                    serde_json::json!({ "identity": id.to_string(), "hostname": h, "decision": d, "steps": steps })
                })
                .collect();
            output::json(&serde_json::json!({ "plans": v }));
        }
        OutputFormat::Human => {
            let mut t = output::table(["guest", "decision", "step", "would"]);
            for (id, _, d, steps) in &plans {
                let who = id.to_string();
                if steps.is_empty() {
                    t.add_row([who.as_str(), d.name(), "-", d.describe().as_str()]);
                }
                for (s, line) in steps {
                    t.add_row([who.as_str(), d.name(), s.as_str(), line.as_str()]);
                }
            }
            output::print_table(&t);
            outln!("(plan only: nothing was written)");
        }
    }
    Ok(())
}
