//! `felhom status [VMID…]`: compare each guest felhom owns with its spec and journal and say
//! what drifted. Exit 1 when anything did.

use clap::Args;

use super::Ctx;
use crate::error::{CliError, Exit};
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// VMIDs to look at; default: every live guest felhom owns.
    #[arg(value_name = "VMID")]
    pub vmids: Vec<String>,
}

pub async fn run(args: StatusArgs, ctx: &Ctx) -> Result<(), CliError> {
    let vmids = super::parse_vmids(&args.vmids)?;
    let f = super::open(ctx)?;
    let st = f.status(&vmids).await?;
    let drifted = st.iter().any(|g| !g.drift.is_empty());
    match ctx.format {
        OutputFormat::Json => output::json(&serde_json::json!({ "guests": st })),
        OutputFormat::Human if st.is_empty() => outln!("felhom owns no live guests"),
        OutputFormat::Human => {
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let mut t = output::table(["vmid", "hostname", "status", "ip", "mac", "ssh", "drift"]);
            for g in &st {
                t.add_row([
                    g.vmid.to_string(),
                    g.hostname.clone(),
                    g.status.clone(),
                    dash(&g.ip),
                    dash(&g.mac),
                    dash(&g.ssh_fingerprint),
                    g.drift.len().to_string(),
                ]);
            }
            output::print_table(&t);
            for g in &st {
                for d in &g.drift {
                    outln!(
                        "{} drift {}: expected {}, found {}",
                        g.vmid,
                        d.field,
                        d.expected,
                        d.actual
                    );
                }
            }
        }
    }
    if drifted { Exit::Failed } else { Exit::Ok }.into_result()
}
