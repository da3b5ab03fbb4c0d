//! `felhom role [SPEC…]`: the minimal role, user, token and ACL setup (`pveum` lines) for the
//! work the specs describe. Needs no PVE: a root operator may print it before felhom has a
//! token, so the config is optional when SPEC files are given.

use std::path::PathBuf;

use clap::Args;
use felhom_core::config::Config;
use felhom_core::privileges;

use super::Ctx;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// Spec files (default: the config's `felhom.specs`).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
}

pub async fn run(args: RoleArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cfg = if args.specs.is_empty() {
        Some(super::load_config(ctx)?)
    } else {
        Config::load(ctx.config()).ok()
    };
    let configured = cfg.as_ref().map(|c| c.specs.as_slice()).unwrap_or_default();
    let specs = super::load_work(&args.specs, configured)?;
    let token = cfg
        .map(|c| c.client.token.id().to_string())
        .unwrap_or_else(|| "felhom@pve!agent".into());
    let scope = privileges::Scope::from_specs(&specs).ok_or_else(|| {
        CliError::invalid_field("invalid guest spec", "SPEC", "the spec files name no guest")
    })?;
    let commands = privileges::pveum_commands(&scope, &token);
    match ctx.format {
        OutputFormat::Json => {
            let acl: Vec<_> = privileges::required(&scope)
                .into_iter()
                .map(|(path, privs)| {
                    let propagate = privileges::propagates(&path);
                    serde_json::json!({ "path": path, "privs": privs.keys().collect::<Vec<_>>(), "propagate": propagate })
                })
                .collect();
            output::json(&serde_json::json!({
                "role": "FelhomAgent",
                "privileges": privileges::role_privileges(&scope),
                "acl": acl,
                "commands": commands,
            }));
        }
        OutputFormat::Human => {
            for c in commands {
                outln!("{c}");
            }
        }
    }
    Ok(())
}
