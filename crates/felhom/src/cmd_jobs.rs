//! `provision`, `plan`, `resume`, `teardown`, `status`, `jobs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use felhom_core::config::Config;
use felhom_core::ops::Felhom;
use felhom_core::spec::{FieldError, GuestSpec, SpecErrors};
use pve_api::Vmid;

use crate::output::{self, CliProgress, OutputFormat};

/// Exit code for bad input or config: nothing was written.
pub const EXIT_BAD_INPUT: i32 = 2;

fn bad_input(format: OutputFormat, what: &str, errors: &[FieldError]) -> i32 {
    match format {
        OutputFormat::Json => {
            println!("{}", serde_json::json!({ "error": what, "fields": errors }))
        }
        OutputFormat::Human => {
            eprintln!("error: {what}; nothing was written to PVE:");
            for e in errors {
                eprintln!("  - {e}");
            }
        }
    }
    EXIT_BAD_INPUT
}

/// Load the config; `Err(code)` when it is unusable (printed).
pub fn load_config(path: Option<&Path>, format: OutputFormat) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        let errors = match &e {
            felhom_core::config::ConfigError::Invalid { errors, .. } => errors.0.clone(),
            other => vec![FieldError {
                field: "(config)".into(),
                rule: other.to_string(),
            }],
        };
        bad_input(format, "invalid configuration", &errors)
    })
}

fn open(path: Option<&Path>, format: OutputFormat) -> Result<Arc<Felhom>, i32> {
    let config = load_config(path, format)?;
    Felhom::open(config).map(Arc::new).map_err(|e| {
        bad_input(
            format,
            "cannot open felhom",
            &[FieldError {
                field: "(config)".into(),
                rule: e.to_string(),
            }],
        )
    })
}

/// Parse every spec file; all field errors of all files at once.
/// The work `preflight` and `role` check: the SPEC files given, else the config's
/// `felhom.specs`; neither is bad input.
fn load_work(files: &[PathBuf], configured: &[PathBuf]) -> Result<Vec<GuestSpec>, Vec<FieldError>> {
    let files = if files.is_empty() { configured } else { files };
    if files.is_empty() {
        return Err(vec![FieldError {
            field: "SPEC".into(),
            rule: "no work to check: give SPEC files, or list them in the config as felhom.specs"
                .into(),
        }]);
    }
    load_specs(files)
}

fn load_specs(files: &[PathBuf]) -> Result<Vec<GuestSpec>, Vec<FieldError>> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match GuestSpec::load_many(f) {
            Ok(mut s) => specs.append(&mut s),
            Err(SpecErrors(errs)) => errors.extend(errs.into_iter().map(|e| FieldError {
                field: format!("{}: {}", f.display(), e.field),
                rule: e.rule,
            })),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Specs parsed and checked against PVE with reads only.
async fn checked_specs(
    f: &Felhom,
    files: &[PathBuf],
    format: OutputFormat,
) -> Result<Vec<GuestSpec>, i32> {
    let specs = load_specs(files).map_err(|e| bad_input(format, "invalid guest spec", &e))?;
    let errors = f.validate(&specs).await;
    if !errors.is_empty() {
        return Err(bad_input(
            format,
            "guest spec does not fit this PVE host",
            &errors,
        ));
    }
    Ok(specs)
}

pub async fn provision(
    config: Option<&Path>,
    files: &[PathBuf],
    format: OutputFormat,
) -> anyhow::Result<i32> {
    // Specs first: a broken spec is reported even without a usable config.
    if let Err(e) = load_specs(files) {
        return Ok(bad_input(format, "invalid guest spec", &e));
    }
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let specs = match checked_specs(&f, files, format).await {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let reports = f
        .provision(specs, Arc::new(CliProgress::new(format)))
        .await
        .context("provision")?;
    output::print_reports(&reports, format);
    Ok(output::batch_exit_code(&reports))
}

pub async fn plan(
    config: Option<&Path>,
    files: &[PathBuf],
    format: OutputFormat,
) -> anyhow::Result<i32> {
    if let Err(e) = load_specs(files) {
        return Ok(bad_input(format, "invalid guest spec", &e));
    }
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let specs = match checked_specs(&f, files, format).await {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let vmids = f.pick_vmids(&specs).await.context("plan")?;
    let mut plans = Vec::new();
    for (s, vmid) in specs.iter().zip(vmids) {
        let steps = f.plan(s, vmid).await.context("plan")?;
        plans.push((s.hostname.to_string(), steps));
    }
    match format {
        OutputFormat::Json => {
            let v: Vec<_> = plans
                .iter()
                .map(|(h, steps)| serde_json::json!({ "hostname": h, "steps": steps.iter().map(|(s, d)| serde_json::json!({ "step": s, "would": d })).collect::<Vec<_>>() }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "plans": v }))?
            );
        }
        OutputFormat::Human => {
            for (h, steps) in &plans {
                println!("{h}:");
                for (s, d) in steps {
                    println!("  {s:<9} {d}");
                }
            }
            println!("(plan only: nothing was written)");
        }
    }
    Ok(0)
}

pub async fn resume(
    config: Option<&Path>,
    job: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<i32> {
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let reports = match f.resume(job, Arc::new(CliProgress::new(format))).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_BAD_INPUT);
        }
    };
    if reports.is_empty() && format == OutputFormat::Human {
        println!("nothing to resume");
    }
    output::print_reports(&reports, format);
    Ok(output::batch_exit_code(&reports))
}

fn parse_vmids(args: &[String], format: OutputFormat) -> Result<Vec<Vmid>, i32> {
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
        Err(bad_input(format, "invalid VMID", &errors))
    }
}

pub async fn teardown(
    config: Option<&Path>,
    vmids: &[String],
    format: OutputFormat,
) -> anyhow::Result<i32> {
    let vmids = match parse_vmids(vmids, format) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let reports = match f.teardown(vmids, Arc::new(CliProgress::new(format))).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(bad_input(
                format,
                "teardown refused",
                &[FieldError {
                    field: "vmid".into(),
                    rule: e.to_string(),
                }],
            ))
        }
    };
    output::print_reports(&reports, format);
    Ok(output::batch_exit_code(&reports))
}

pub async fn status(
    config: Option<&Path>,
    vmids: &[String],
    format: OutputFormat,
) -> anyhow::Result<i32> {
    let vmids = match parse_vmids(vmids, format) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let st = match f.status(&vmids).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(bad_input(
                format,
                "status",
                &[FieldError {
                    field: "vmid".into(),
                    rule: e.to_string(),
                }],
            ))
        }
    };
    let drifted = st.iter().any(|g| !g.drift.is_empty());
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "guests": st }))?
        ),
        OutputFormat::Human => {
            if st.is_empty() {
                println!("felhom owns no live guests");
            }
            for g in &st {
                println!(
                    "{:<6} {:<20} {:<8} ip {:<15} mac {:<17} ssh {}",
                    g.vmid,
                    g.hostname,
                    g.status,
                    g.ip.as_deref().unwrap_or("-"),
                    g.mac.as_deref().unwrap_or("-"),
                    g.ssh_fingerprint.as_deref().unwrap_or("-")
                );
                for d in &g.drift {
                    println!(
                        "       drift {}: expected {}, found {}",
                        d.field, d.expected, d.actual
                    );
                }
            }
        }
    }
    Ok(if drifted { 1 } else { 0 })
}

pub async fn jobs(config: Option<&Path>, format: OutputFormat) -> anyhow::Result<i32> {
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let jobs = felhom_core::ops::job_summary(&f.journal)?;
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs }))?
        ),
        OutputFormat::Human => {
            for j in &jobs {
                println!(
                    "{:<28} {:<9} vmid {:<6} {:<20} {:<20} {}",
                    j["job"].as_str().unwrap_or(""),
                    j["kind"].as_str().unwrap_or(""),
                    j["vmid"]
                        .as_u64()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                    j["hostname"].as_str().unwrap_or("-"),
                    j["state"].as_str().unwrap_or(""),
                    j["error"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}

pub async fn preflight(
    config: Option<&Path>,
    files: &[PathBuf],
    guests: u64,
    format: OutputFormat,
) -> anyhow::Result<i32> {
    let f = match open(config, format) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let specs = match load_work(files, &f.config.specs) {
        Ok(s) => s,
        Err(e) => return Ok(bad_input(format, "invalid guest spec", &e)),
    };
    let report = match felhom_core::preflight::preflight(&f, &specs, guests).await {
        Ok(r) => r,
        Err(e) => {
            match format {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({ "ready": null, "error": e.to_string() })
                ),
                OutputFormat::Human => eprintln!("cannot tell: {e}"),
            }
            return Ok(2);
        }
    };
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Human => {
            for p in &report.paths {
                let status = if p.missing.is_empty() {
                    "ok     "
                } else {
                    "MISSING"
                };
                println!("{status} {:<36} needs {}", p.path, p.needed.join(","));
                if !p.missing.is_empty() {
                    println!("        missing: {}", p.missing.join(","));
                }
                if !p.excess.is_empty() {
                    println!("        warning: more than needed: {}", p.excess.join(","));
                }
            }
            for c in &report.checks {
                println!(
                    "{} {:<13} {}",
                    if c.ok { "ok     " } else { "FAILED " },
                    c.name,
                    c.detail
                );
            }
            if !report.grant_commands.is_empty() {
                println!("\nto grant what is missing, as root on the PVE host:");
                for c in &report.grant_commands {
                    println!("  {c}");
                }
            }
            println!("{}", if report.ready { "ready" } else { "not ready" });
        }
    }
    Ok(if report.ready { 0 } else { 1 })
}

pub fn role(config: Option<&Path>, files: &[PathBuf], format: OutputFormat) -> anyhow::Result<i32> {
    // The config is optional here: a root operator may print the role before felhom has a
    // token. Without one, SPEC files are required.
    let cfg = if files.is_empty() {
        match load_config(config, format) {
            Ok(c) => Some(c),
            Err(code) => return Ok(code),
        }
    } else {
        Config::load(config).ok()
    };
    let configured = cfg.as_ref().map(|c| c.specs.as_slice()).unwrap_or_default();
    let specs = match load_work(files, configured) {
        Ok(s) => s,
        Err(e) => return Ok(bad_input(format, "invalid guest spec", &e)),
    };
    let token = cfg
        .map(|c| c.client.token.id().to_string())
        .unwrap_or_else(|| "felhom@pve!agent".into());
    let Some(scope) = felhom_core::privileges::Scope::from_specs(&specs) else {
        return Ok(2);
    };
    match format {
        OutputFormat::Json => {
            let acl: Vec<_> = felhom_core::privileges::required(&scope)
                .into_iter()
                .map(|(path, privs)| serde_json::json!({ "path": path, "privs": privs.keys().collect::<Vec<_>>(), "propagate": path == "/vms" }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "role": "FelhomAgent", "privileges": felhom_core::privileges::role_privileges(&scope), "acl": acl, "commands": felhom_core::privileges::pveum_commands(&scope, &token) })
                )?
            );
        }
        OutputFormat::Human => {
            for c in felhom_core::privileges::pveum_commands(&scope, &token) {
                println!("{c}");
            }
        }
    }
    Ok(0)
}
