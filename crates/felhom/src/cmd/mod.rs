//! One module per command; each has `run(args, &Ctx) -> Result<(), CliError>`.
//!
//! | module          | command                                  | talks to          |
//! |-----------------|------------------------------------------|-------------------|
//! | `agent`         | `agent` (the long-running service)       | PVE, journal, serves |
//! | `plan`          | `plan SPEC…`                             | PVE, reads only   |
//! | `provision`     | `provision SPEC…`                        | PVE, journal      |
//! | `resume`        | `resume [JOB]`                           | PVE, journal      |
//! | `teardown`      | `teardown VMID…`                         | PVE, journal      |
//! | `status`        | `status [VMID…]`                         | PVE, journal      |
//! | `jobs`          | `jobs`                                   | journal           |
//! | `preflight`     | `preflight [SPEC…]`                      | PVE, reads only   |
//! | `role`          | `role [SPEC…]`                           | nothing           |
//! | `golden`        | `golden recipe / build / inspect / identity` | local files   |
//! | `sim`           | `sim serve`                              | serves            |
//! | `demo`          | `demo`                                   | embedded simulator |
//! | `bench`         | `bench perf / reliability`               | simulator child   |
//! | `completions`   | `completions SHELL`, `man`               | the clap tree     |
//!
//! This module holds what several of them share: the context (config path, output format),
//! opening felhom, reading spec files and VMIDs, all of which refuse bad input with
//! [`CliError::invalid`] before anything is written.

pub mod agent;
pub mod apply;
pub mod bench;
pub mod completions;
pub mod demo;
pub mod golden;
pub mod jobs;
pub mod plan;
pub mod preflight;
pub mod resume;
pub mod role;
pub mod sim;
pub mod status;
pub mod teardown;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use felhom_core::config::{Config, ConfigError};
use felhom_core::ops::Felhom;
use felhom_core::spec::{FieldError, GuestSpec, SpecErrors};
use pve_api::Vmid;

use crate::error::CliError;
use crate::output::OutputFormat;

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--config` or `FELHOM_CONFIG`; `None`: ./felhom.toml, then /etc/felhom/felhom.toml.
    pub config: Option<PathBuf>,
    pub format: OutputFormat,
}

impl Ctx {
    pub fn config(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

fn config_error(e: ConfigError) -> CliError {
    let fields = match e {
        ConfigError::Invalid { errors, .. } => errors.0,
        other => vec![FieldError {
            field: "(config)".into(),
            rule: other.to_string(),
        }],
    };
    CliError::invalid("invalid configuration", fields)
}

/// The config, or field errors (exit 2).
pub fn load_config(ctx: &Ctx) -> Result<Config, CliError> {
    Config::load(ctx.config()).map_err(config_error)
}

/// felhom opened on the config: its journal, its client.
pub fn open(ctx: &Ctx) -> Result<Arc<Felhom>, CliError> {
    let config = load_config(ctx)?;
    Felhom::open(config)
        .map(Arc::new)
        .map_err(|e| CliError::invalid_field("cannot open felhom", "(config)", e))
}

/// Parse every spec file; all field errors of all files at once.
pub fn load_specs(files: &[PathBuf]) -> Result<Vec<GuestSpec>, CliError> {
    let mut specs = Vec::new();
    let mut origin = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match GuestSpec::load_many(f) {
            Ok(mut s) => {
                origin.extend(std::iter::repeat_n(f, s.len()));
                specs.append(&mut s)
            }
            Err(SpecErrors(errs)) => errors.extend(errs.into_iter().map(|e| FieldError {
                field: format!("{}: {}", f.display(), e.field),
                rule: e.rule,
            })),
        }
    }
    // One identity (customer/name) is one guest: two specs claiming it is a mistake.
    let mut seen: std::collections::HashMap<felhom_core::spec::Identity, &PathBuf> =
        std::collections::HashMap::new();
    for (s, f) in specs.iter().zip(&origin) {
        if let Some(first) = seen.insert(s.identity_key(), f) {
            if first != *f {
                errors.push(FieldError {
                    field: format!("{}: name", f.display()),
                    rule: format!(
                        "guest identity {} is also in {} (customer/name must be unique; name defaults to the hostname)",
                        s.identity_key(),
                        first.display()
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(CliError::invalid("invalid guest spec", errors))
    }
}

/// The work `preflight` and `role` check: the SPEC files given, else the config's
/// `felhom.specs`; neither is bad input.
pub fn load_work(files: &[PathBuf], configured: &[PathBuf]) -> Result<Vec<GuestSpec>, CliError> {
    let files = if files.is_empty() { configured } else { files };
    if files.is_empty() {
        return Err(CliError::invalid_field(
            "invalid guest spec",
            "SPEC",
            "no work to check: give SPEC files, or list them in the config as felhom.specs",
        ));
    }
    load_specs(files)
}

/// Specs parsed, felhom opened, and the specs checked against PVE with reads only. Specs
/// are parsed first: a broken spec is reported even without a usable config.
pub async fn open_with_specs(
    ctx: &Ctx,
    files: &[PathBuf],
) -> Result<(Arc<Felhom>, Vec<GuestSpec>), CliError> {
    let specs = load_specs(files)?;
    let f = open(ctx)?;
    let errors = f.validate(&specs).await;
    if !errors.is_empty() {
        return Err(CliError::invalid(
            "guest spec does not fit this PVE host",
            errors,
        ));
    }
    Ok((f, specs))
}

/// Teardown targets (a VMID or `customer/name`), every bad one named at once.
pub fn parse_targets(args: &[String]) -> Result<Vec<felhom_core::ops::Target>, CliError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a.parse::<felhom_core::ops::Target>() {
            Ok(t) => out.push(t),
            Err(rule) => errors.push(FieldError {
                field: format!("target[{i}]"),
                rule: format!(
                    "must be a VMID 100–999999999 or an identity customer/name ({rule}); got {}",
                    felhom_core::spec::show_value(a)
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(CliError::invalid("invalid teardown target", errors))
    }
}

/// VMID arguments, every bad one named at once.
pub fn parse_vmids(args: &[String]) -> Result<Vec<Vmid>, CliError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match a.parse::<u32>().ok().and_then(|n| Vmid::try_from(n).ok()) {
            Some(v) => out.push(v),
            None => errors.push(FieldError {
                field: format!("vmid[{i}]"),
                rule: format!(
                    "must be a VMID 100–999999999; got {}",
                    felhom_core::spec::show_value(a)
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(CliError::invalid("invalid VMID", errors))
    }
}
