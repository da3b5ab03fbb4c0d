//! `felhom golden recipe | inspect | identity`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use felhom_core::golden::{self, RecipeParams, Severity};
use felhom_core::identity::{IdentityPolicy, PolicyName};

use crate::OutputFormat;

#[derive(Subcommand, Debug)]
pub enum GoldenCmd {
    /// Print the root-side recipe that builds a golden base, as a POSIX shell script.
    Recipe(RecipeArgs),
    /// Check a vzdump archive as a golden base (streams it; never unpacks to disk).
    Inspect(InspectArgs),
    /// Print the identity-reset table and what a policy does with each field.
    Identity(IdentityArgs),
}

#[derive(Args, Debug)]
pub struct RecipeArgs {
    #[arg(long, default_value_t = 9100)]
    pub vmid: u32,
    #[arg(long, default_value = "local-lvm")]
    pub storage: String,
    #[arg(long, default_value = "vmbr0")]
    pub bridge: String,
    #[arg(
        long,
        default_value = "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst"
    )]
    pub template: String,
    #[arg(long, default_value = "local")]
    pub backup_storage: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub archive: PathBuf,
}

#[derive(Args, Debug)]
pub struct IdentityArgs {
    #[arg(long, default_value = "provision")]
    pub policy: String,
}

pub fn run(cmd: GoldenCmd, format: OutputFormat) -> anyhow::Result<i32> {
    match cmd {
        GoldenCmd::Recipe(a) => {
            let p = RecipeParams {
                vmid: a.vmid,
                storage: a.storage,
                bridge: a.bridge,
                template: a.template,
                backup_storage: a.backup_storage,
            };
            if let Err(errs) = p.validate() {
                eprintln!("error: invalid recipe parameters; nothing printed:");
                for e in errs {
                    eprintln!("  - {e}");
                }
                return Ok(2);
            }
            print!("{}", golden::recipe(&p));
            Ok(0)
        }
        GoldenCmd::Inspect(a) => match golden::inspect_path(&a.archive) {
            Err(e) => {
                match format {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({ "archive": a.archive, "error": e.to_string() })
                    ),
                    OutputFormat::Human => eprintln!("error: {}: {e}", a.archive.display()),
                }
                Ok(2)
            }
            Ok(report) => {
                match format {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "archive": a.archive, "report": report, "errors": report.error_count(), "warnings": report.warning_count() })
                        )?
                    ),
                    OutputFormat::Human => {
                        println!(
                            "{}: {} entries, {} bytes",
                            a.archive.display(),
                            report.entries,
                            report.bytes
                        );
                        for f in &report.findings {
                            let sev = if f.severity == Severity::Error {
                                "ERROR"
                            } else {
                                "warn "
                            };
                            println!(
                                "{sev} {:<32} {}\n      {}\n      fix: {}",
                                f.id, f.path, f.message, f.fix
                            );
                        }
                        println!(
                            "{} error(s), {} warning(s)",
                            report.error_count(),
                            report.warning_count()
                        );
                    }
                }
                Ok(report.exit_code())
            }
        },
        GoldenCmd::Identity(a) => {
            let name: PolicyName = match a.policy.parse() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: --policy: {e}");
                    return Ok(2);
                }
            };
            let policy = IdentityPolicy::named(name);
            let rows = policy.rows();
            match format {
                OutputFormat::Json => {
                    let v: Vec<_> = rows.iter().map(|(r, action)| serde_json::json!({ "field": r.field, "restore_leaves": r.restore_leaves, "reset_by": r.reset_by, "where": r.where_, "cost": r.cost, "policy_action": action })).collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "policy": policy.name, "mac": policy.mac(), "hostname": policy.hostname(), "ssh_host_keys": policy.ssh_host_keys(), "fields": v })
                        )?
                    );
                }
                OutputFormat::Human => {
                    println!("identity policy: {:?}", policy.name);
                    for (r, action) in rows {
                        println!("{}\n  restore leaves: {}\n  reset by:       {}\n  where:          {}\n  cost:           {}\n  this policy:    {action}", r.field, r.restore_leaves, r.reset_by, r.where_, r.cost);
                    }
                }
            }
            Ok(0)
        }
    }
}
