//! `felhom golden recipe | build | inspect | identity`: the golden base, everything that
//! needs no PVE host. Exit codes as everywhere (`crate::error`): `inspect` exits 1 for a
//! golden with errors, `build` 1 for a failed build (nothing left behind), 2 for bad
//! parameters or a host that cannot build.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use felhom_core::golden::{self, RecipeParams, Severity};
use felhom_core::golden_build::{self, BuildError, BuildOptions, DockerChoice};
use felhom_core::identity::{IdentityPolicy, PolicyName};
use indicatif::{ProgressBar, ProgressStyle};

use super::Ctx;
use crate::error::{CliError, Exit};
use crate::output::{self, errln, out, outln, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum GoldenCmd {
    /// Print the root-side recipe that builds a golden base, as a POSIX shell script.
    Recipe(RecipeArgs),
    /// Build a golden archive here with mmdebstrap, no PVE host needed (root; Debian mirror).
    Build(BuildArgs),
    /// Check a vzdump archive as a golden base (streams it; never unpacks to disk).
    Inspect(InspectArgs),
    /// Print the identity-reset table and what a policy does with each field.
    Identity(IdentityArgs),
    /// Publish a golden as the linked-clone template of a node and storage (strategy
    /// linked-clone): restore it once into a VMID of felhom's range and make it a PVE
    /// template; a second run finds it and writes nothing.
    Publish(PublishArgs),
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The golden archive's volume id (`<storage>:backup/vzdump-lxc-….tar.zst`).
    #[arg(value_name = "GOLDEN")]
    pub golden: String,
    /// The node (default: the cluster's only node).
    #[arg(long)]
    pub node: Option<String>,
    /// The storage the template's volumes go to; its clones stay there (lvmthin, zfspool,
    /// rbd or btrfs).
    #[arg(long, default_value = "local-lvm")]
    pub storage: String,
    /// The template's rootfs size (default: the golden's). Guests of at least this size
    /// clone it; one of exactly this size needs no resize task.
    #[arg(long, value_name = "SIZE")]
    pub rootfs_size: Option<String>,
}

#[derive(Args, Debug)]
pub struct RecipeArgs {
    /// VMID of the template container the recipe creates and backs up.
    #[arg(long, default_value_t = 9100)]
    pub vmid: u32,
    /// Storage for the template container's root disk.
    #[arg(long, default_value = "local-lvm")]
    pub storage: String,
    /// Bridge for the template container's network while it installs packages.
    #[arg(long, default_value = "vmbr0")]
    pub bridge: String,
    /// The Debian container template (volume id) the golden starts from.
    #[arg(
        long,
        default_value = "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst"
    )]
    pub template: String,
    /// Backup storage the golden archive is written to (vzdump).
    #[arg(long, default_value = "local")]
    pub backup_storage: String,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The archive to write (.tar.zst). To upload it to a PVE backup storage, name it
    /// vzdump-lxc-<vmid>-YYYY_MM_DD-HH_MM_SS.tar.zst.
    #[arg(long, value_name = "ARCHIVE")]
    pub out: PathBuf,
    /// Debian suite or codename.
    #[arg(long, default_value = golden_build::DEFAULT_SUITE)]
    pub suite: String,
    /// Debian mirror (http or https); it stays in the golden's sources.list.
    #[arg(long, value_name = "URL", default_value = golden_build::DEFAULT_MIRROR)]
    pub mirror: String,
    /// Docker in the golden: Debian's docker.io (from the same mirror), or none (inspection
    /// then reports docker-missing).
    #[arg(long, value_enum, default_value_t = DockerArg::Debian)]
    pub docker: DockerArg,
    /// Extra Debian packages, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PKG,…")]
    pub packages: Vec<String>,
    /// Build a deliberately broken golden (tests of felhom's failure handling).
    #[arg(long, value_enum, hide = true)]
    pub defect: Vec<BuildDefect>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerArg {
    /// No Docker.
    None,
    /// Debian's docker.io package.
    Debian,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildDefect {
    /// No first-boot SSH host-key unit: restored guests boot without host keys.
    NoFirstBootUnit,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The vzdump archive to check (.tar.zst, .tar.gz or .tar).
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,
}

#[derive(Args, Debug)]
pub struct IdentityArgs {
    /// The identity policy: `provision` (a new customer: every identity reset) or `dr`
    /// (disaster recovery: the restored guest keeps its archived MAC, hostname and host keys).
    #[arg(long, default_value = "provision")]
    pub policy: String,
}

pub async fn run(cmd: GoldenCmd, ctx: &Ctx) -> Result<(), CliError> {
    match cmd {
        GoldenCmd::Recipe(a) => recipe(a, ctx.format),
        GoldenCmd::Build(a) => build(a, ctx.format),
        GoldenCmd::Inspect(a) => inspect(a, ctx.format),
        GoldenCmd::Identity(a) => identity(a, ctx.format),
        GoldenCmd::Publish(a) => publish(a, ctx).await,
    }
}

/// `golden publish`: exit 0 when the template exists (made now or found), 2 for a storage
/// that cannot link-clone or bad parameters (nothing written), 1 when the publish job failed
/// (rolled back).
async fn publish(a: PublishArgs, ctx: &Ctx) -> Result<(), CliError> {
    use felhom_core::publish::PublishReport;
    let f = super::open(ctx)?;
    let node = match a.node {
        Some(n) => n,
        None => {
            let nodes: Vec<String> = f
                .client
                .cluster_resources(Some(pve_api::ResourceType::Node))
                .await
                .map_err(|e| CliError::invalid_field("cannot list nodes", "node", e))?
                .into_iter()
                .filter_map(|r| r.node)
                .collect();
            match nodes.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(CliError::invalid_field(
                        "which node?",
                        "node",
                        format!(
                            "the cluster has {} nodes; name one with --node",
                            nodes.len()
                        ),
                    ))
                }
            }
        }
    };
    let rootfs = a
        .rootfs_size
        .as_deref()
        .map(str::parse::<felhom_core::spec::ByteSize>)
        .transpose()
        .map_err(|e| CliError::invalid_field("invalid --rootfs-size", "rootfs_size", e))?;
    let progress = std::sync::Arc::new(output::CliProgress::new(ctx.format));
    let report = f
        .publish(&node, &a.storage, &a.golden, rootfs, progress)
        .await?;
    match (&report, ctx.format) {
        (_, OutputFormat::Json) => output::json(&report),
        (PublishReport::Exists { vmid, sha256 }, OutputFormat::Human) => outln!(
            "template {vmid} on {node}/{} is already published for {} (sha256 {}…): nothing to do",
            a.storage,
            a.golden,
            &sha256[..12]
        ),
        (PublishReport::Ran { report, sha256 }, OutputFormat::Human) => {
            output::print_reports(std::slice::from_ref(report), ctx.format);
            if report.outcome == felhom_core::job::Outcome::Succeeded {
                outln!(
                    "published {} as template {} on {node}/{} (sha256 {}…)",
                    a.golden,
                    report.vmid.unwrap_or(0),
                    a.storage,
                    &sha256[..12]
                );
            }
        }
    }
    match report {
        PublishReport::Exists { .. } => Ok(()),
        PublishReport::Ran { report, .. } => {
            output::batch_exit(std::slice::from_ref(&report)).into_result()
        }
    }
}

/// `golden recipe`: the script, or `{"recipe": "..."}`; exit 2 and nothing on stdout for
/// parameters that would make an unsafe script.
fn recipe(a: RecipeArgs, format: OutputFormat) -> Result<(), CliError> {
    let p = RecipeParams {
        vmid: a.vmid,
        storage: a.storage,
        bridge: a.bridge,
        template: a.template,
        backup_storage: a.backup_storage,
    };
    p.validate().map_err(|fields| CliError::Invalid {
        what: "invalid recipe parameters".into(),
        fields,
        untouched: "nothing printed",
    })?;
    let script = golden::recipe(&p);
    match format {
        OutputFormat::Json => output::json(&serde_json::json!({ "recipe": script })),
        OutputFormat::Human => out!("{script}"),
    }
    Ok(())
}

/// `golden inspect`: findings; exit 0 clean, 1 with errors (the report's own code), 2 when
/// the file cannot be read as an archive.
fn inspect(a: InspectArgs, format: OutputFormat) -> Result<(), CliError> {
    let report = match golden::inspect_path(&a.archive) {
        Ok(r) => r,
        Err(e) => {
            match format {
                OutputFormat::Json => output::json_line(
                    &serde_json::json!({ "archive": a.archive, "error": e.to_string() }),
                ),
                OutputFormat::Human => errln!("error: {}: {e}", a.archive.display()),
            }
            return Err(CliError::Reported(Exit::BadInput));
        }
    };
    match format {
        OutputFormat::Json => output::json(&serde_json::json!({
            "archive": a.archive,
            "report": report,
            "errors": report.error_count(),
            "warnings": report.warning_count(),
        })),
        OutputFormat::Human => {
            outln!(
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
                outln!(
                    "{sev} {:<32} {}\n      {}\n      fix: {}",
                    f.id,
                    f.path,
                    f.message,
                    f.fix
                );
            }
            outln!(
                "{} error(s), {} warning(s)",
                report.error_count(),
                report.warning_count()
            );
        }
    }
    Exit::from_code(report.exit_code()).into_result()
}

/// `golden identity`: the identity-reset table, and what the policy does with each field.
fn identity(a: IdentityArgs, format: OutputFormat) -> Result<(), CliError> {
    let name: PolicyName = a
        .policy
        .parse()
        .map_err(|e| CliError::bad_input(format!("--policy: {e}")))?;
    let policy = IdentityPolicy::named(name);
    let rows = policy.rows();
    match format {
        OutputFormat::Json => {
            let v: Vec<_> = rows.iter().map(|(r, action)| serde_json::json!({ "field": r.field, "restore_leaves": r.restore_leaves, "reset_by": r.reset_by, "where": r.where_, "cost": r.cost, "policy_action": action })).collect();
            output::json(&serde_json::json!({
                "policy": policy.name,
                "mac": policy.mac(),
                "hostname": policy.hostname(),
                "ssh_host_keys": policy.ssh_host_keys(),
                "fields": v,
            }));
        }
        OutputFormat::Human => {
            outln!("identity policy: {:?}", policy.name);
            for (r, action) in rows {
                outln!("{}\n  restore leaves: {}\n  reset by:       {}\n  where:          {}\n  cost:           {}\n  this policy:    {action}", r.field, r.restore_leaves, r.reset_by, r.where_, r.cost);
            }
        }
    }
    Ok(())
}

/// `golden build`: exit 0 built, 1 the build failed (nothing left behind), 2 bad input or a
/// host that cannot build (not root, no mmdebstrap), nothing run.
fn build(a: BuildArgs, format: OutputFormat) -> Result<(), CliError> {
    let opts = BuildOptions {
        out: a.out,
        suite: a.suite,
        mirror: (a.mirror != golden_build::DEFAULT_MIRROR).then_some(a.mirror),
        docker: match a.docker {
            DockerArg::None => DockerChoice::None,
            DockerArg::Debian => DockerChoice::Debian,
        },
        packages: a.packages,
        first_boot_unit: !a.defect.contains(&BuildDefect::NoFirstBootUnit),
    };
    let spinner = (format == OutputFormat::Human && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let progress = |msg: &str| match (&spinner, format) {
        (Some(b), _) => b.set_message(msg.to_string()),
        (None, OutputFormat::Human) => errln!("golden build: {msg}"),
        (None, OutputFormat::Json) => {}
    };
    let result = golden_build::build(&opts, &progress);
    if let Some(b) = &spinner {
        b.finish_and_clear();
    }
    match result {
        Ok(r) => {
            match format {
                OutputFormat::Json => output::json(&r),
                OutputFormat::Human => {
                    outln!(
                        "built {} ({} bytes): Debian {} + {}, docker {}, first-boot unit {}",
                        r.archive.display(),
                        r.archive_bytes,
                        r.suite,
                        r.mirror,
                        r.docker,
                        if r.first_boot_unit { "yes" } else { "NO" }
                    );
                    outln!(
                        "  rootfs {} files, {} bytes uncompressed; mmdebstrap {:.1}s, archive {:.1}s; net0 hwaddr {}",
                        r.files, r.uncompressed_bytes, r.mmdebstrap_secs, r.archive_secs, r.hwaddr
                    );
                    outln!("  inputs {}", r.input_hash);
                    for w in &r.warnings {
                        outln!("  warning: {w}");
                    }
                    outln!(
                        "check it with: felhom golden inspect {}",
                        r.archive.display()
                    );
                }
            }
            Ok(())
        }
        Err(e) => {
            let exit = match e {
                BuildError::Invalid(_) | BuildError::NotRoot | BuildError::MmdebstrapMissing => {
                    Exit::BadInput
                }
                BuildError::Mmdebstrap { .. } | BuildError::Io { .. } | BuildError::Archive(_) => {
                    Exit::Failed
                }
            };
            match format {
                OutputFormat::Json => {
                    let fields: Vec<_> = match &e {
                        BuildError::Invalid(errs) => errs
                            .iter()
                            .map(|f| serde_json::json!({ "field": f.field, "rule": f.rule }))
                            .collect(),
                        _ => Vec::new(),
                    };
                    output::json_line(
                        &serde_json::json!({ "error": e.to_string(), "fields": fields }),
                    );
                }
                OutputFormat::Human => errln!("error: {e}"),
            }
            Err(CliError::Reported(exit))
        }
    }
}
