//! felhom's own configuration: where PVE is, how to trust it, which token, which VMIDs
//! felhom may touch, how much to do at once, and where the journal lives.
//!
//! The token secret is never in this file. It comes from a file that only its owner can
//! read, from systemd credentials (`$CREDENTIALS_DIRECTORY/felhom-token`) or from the
//! `FELHOM_TOKEN_SECRET` environment variable, and only ever lives in a
//! [`pve_api::Secret`], which prints as `<redacted>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pve_api::{ApiToken, CertFingerprint, ClientConfig, Secret, TlsTrust, TokenId, Vmid};
use serde::{Deserialize, Serialize};

use crate::spec::{show, FieldError, SpecErrors};

/// Default config locations, in order, when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: &[&str] = &["./felhom.toml", "/etc/felhom/felhom.toml"];
/// The systemd credential name felhom reads the token secret from.
pub const CREDENTIAL_NAME: &str = "felhom-token";
/// The environment variable felhom reads the token secret from, last.
pub const SECRET_ENV: &str = "FELHOM_TOKEN_SECRET";

/// How felhom reaches a guest's SSH server to prove its host key (bring-up step 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SshEndpoint {
    /// `<guest ip>:22`, as on a real host.
    #[default]
    Direct,
    /// The simulator's loopback port for the guest (`/felhom-sim/guests/{vmid}/ssh`); guest
    /// IPs the simulator hands out are data, never addresses to contact.
    Sim,
}

/// How a guest is built from its golden (`felhom.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Restore with the rootfs and every mount point at their final sizes in the restore
    /// request itself (`rootfs=<sid>:<GiB>`, `mpN=<sid>:<GiB>,mp=<path>`, PVE's explicit
    /// mode, audit §2(a)): no resize task, no mount write.
    #[default]
    Restore,
    /// The spike's sequence: restore at the golden's size (storage-only mode), then a resize
    /// task for the rootfs and a config write per mount point. Kept to compare (`bench perf`).
    RestoreResize,
    /// A linked clone of the golden's template, published once per node and storage by
    /// `felhom golden publish` (a template VMID in felhom's range, `POST …/template`); the
    /// clone shares the template's base volume, then felhom sets its MAC, settings, sizes
    /// (resize: never smaller than the base) and mounts. Needs a storage that can link-clone
    /// a container volume (lvmthin, zfspool, rbd, btrfs; never dir or thick LVM).
    LinkedClone,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Restore => "restore",
            Strategy::RestoreResize => "restore-resize",
            Strategy::LinkedClone => "linked-clone",
        }
    }
}

/// The file format (`felhom.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub pve: PveSection,
    pub felhom: FelhomSection,
    /// `felhom agent`'s settings; other commands ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSection>,
}

/// `[agent]`: the long-running `felhom agent`. Every key is optional; the binary fills the
/// defaults and checks the values (`crates/felhom/src/agent/settings.rs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// `host:port` to serve the API on (plain HTTP only on loopback, else TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The directory of guest spec files (default `/etc/felhom/guests.d/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs_dir: Option<PathBuf>,
    /// Seconds between full reconciliations (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// File holding the API bearer token (else the systemd credential `felhom-api-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) to serve the API with; with `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Guests reconciled at once (default: `felhom.max_parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Milliseconds the spec directory must be quiet before it is read again (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PveSection {
    /// `https://host:8006` — plain HTTP is refused.
    pub url: String,
    /// SHA-256 fingerprint of the server certificate (`AA:BB:…`), what PVE users pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A CA bundle (PEM) instead of a pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `user@realm!tokenid`.
    pub token_id: String,
    /// File holding the token secret; must not be readable by group or others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_file: Option<PathBuf>,
    /// Request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The largest answer (body) felhom reads from PVE, in MiB; a longer one is cut off and
    /// the request fails naming the endpoint (a hostile or broken server cannot fill memory).
    #[serde(default = "default_max_response_mib")]
    pub max_response_mib: u64,
    /// At most this many API requests to any one node in any one second (a sliding window
    /// over the send times); unset: no budget beyond what felhom's own pacing gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
    /// The cluster node whose pveproxy `url` reaches: it answers the cluster-wide requests
    /// (`/cluster/…`) itself, so they spend from its `max_requests_per_second`. Unset, they
    /// spend from a window of their own, and that node can see up to twice the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_node: Option<String>,
}

fn default_timeout() -> u64 {
    30
}

fn default_max_response_mib() -> u64 {
    pve_api::DEFAULT_MAX_BODY_BYTES >> 20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FelhomSection {
    /// Inclusive VMID range felhom may create and destroy guests in.
    pub vmid_range: [u32; 2],
    /// SQLite journal path.
    pub journal: PathBuf,
    /// Jobs at once, in all.
    #[serde(default = "default_parallel")]
    pub max_parallel: usize,
    /// Jobs at once on one node.
    #[serde(default = "default_parallel")]
    pub max_parallel_per_node: usize,
    /// Jobs at once whose disks live on one storage (PVE storage locks time out too).
    #[serde(default = "default_parallel")]
    pub max_parallel_per_storage: usize,
    #[serde(default)]
    pub ssh_endpoint: SshEndpoint,
    /// Seconds a guest may take from start to a DHCP lease.
    #[serde(default = "default_linkup")]
    pub linkup_timeout_secs: u64,
    /// Seconds a guest may take from lease to serving SSH host keys.
    #[serde(default = "default_linkup")]
    pub ssh_timeout_secs: u64,
    /// Seconds one PVE task (restore, resize, start, destroy) may run.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_secs: u64,
    /// Seconds PVE may stay unreachable during a job before the job pauses (exit 3;
    /// `felhom resume` goes on from there). Never a rollback: an unreachable API says
    /// nothing about the guest.
    #[serde(default = "default_connect_budget")]
    pub connect_budget_secs: u64,
    /// How guests are built: `restore` (sizes in the restore request, the default) or
    /// `restore-resize` (the spike's sequence: restore, resize task, mount writes).
    #[serde(default)]
    pub strategy: Strategy,
    /// The work this installation is configured for: guest spec files that `preflight` and
    /// `role` check when given none (relative paths are relative to this file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specs: Vec<PathBuf>,
    /// The PVE nodes felhom places new guests on when a spec says `node = "auto"` or names
    /// no node (empty: every online node of the cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

fn default_parallel() -> usize {
    8
}
fn default_linkup() -> u64 {
    120
}
fn default_task_timeout() -> u64 {
    1800
}
fn default_connect_budget() -> u64 {
    60
}

/// Inclusive VMID range; construction guarantees `lo <= hi`, both valid VMIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VmidRange {
    pub lo: Vmid,
    pub hi: Vmid,
}

impl VmidRange {
    pub fn contains(&self, v: Vmid) -> bool {
        self.lo.get() <= v.get() && v.get() <= self.hi.get()
    }
    pub fn iter(&self) -> impl Iterator<Item = Vmid> {
        (self.lo.get()..=self.hi.get()).filter_map(|n| Vmid::try_from(n).ok())
    }
}

impl std::fmt::Display for VmidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}–{}", self.lo, self.hi)
    }
}

/// A loaded, validated configuration. The secret is inside the token and prints redacted.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub client: ClientConfig,
    pub vmid_range: VmidRange,
    pub journal: PathBuf,
    pub max_parallel: usize,
    pub max_parallel_per_node: usize,
    pub max_parallel_per_storage: usize,
    pub ssh_endpoint: SshEndpoint,
    pub linkup_timeout: Duration,
    pub ssh_timeout: Duration,
    pub task_timeout: Duration,
    /// How long PVE may stay unreachable before a job pauses.
    pub connect_budget: Duration,
    /// `pve.max_requests_per_second`.
    pub max_requests_per_second: Option<f64>,
    /// `pve.entry_node`.
    pub entry_node: Option<String>,
    pub strategy: Strategy,
    /// `felhom.specs`, resolved against the config file's directory.
    pub specs: Vec<PathBuf>,
    /// `felhom.nodes`: where `node = "auto"` places new guests (empty: every online node).
    pub nodes: Vec<String>,
    /// `[agent]`, its paths resolved against the config file's directory.
    pub agent: AgentSection,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file: none of {} exists (give --config FILE, or run `felhom sim serve --write-config FILE`)", DEFAULT_CONFIG_PATHS.join(", "))]
    NotFound,
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{errors}")]
    Invalid { path: PathBuf, errors: SpecErrors },
}

impl Config {
    /// Find the config: the given path, else the defaults in order.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        DEFAULT_CONFIG_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(ConfigError::NotFound)
    }

    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = Self::locate(explicit)?;
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text)
    }

    /// Validate a config text; relative paths inside resolve against the config's directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |errors: Vec<FieldError>| ConfigError::Invalid {
            path: path.to_path_buf(),
            errors: SpecErrors(errors),
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| text[..s.start].lines().count().to_string())
                .map(|l| format!("(line {l})"))
                .unwrap_or_else(|| "(file)".into());
            invalid(vec![FieldError {
                field,
                rule: e.message().to_string(),
            }])
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut errors = Vec::new();
        let mut err = |field: &str, rule: String| {
            errors.push(FieldError {
                field: field.into(),
                rule,
            })
        };

        let url = match url::Url::parse(&file.pve.url) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => Some(u),
            Ok(_) => {
                err(
                    "pve.url",
                    format!(
                        "must be an https:// URL with a host (plain HTTP is never used); got {}",
                        show(&file.pve.url)
                    ),
                );
                None
            }
            Err(e) => {
                err(
                    "pve.url",
                    format!("is not a URL ({e}); got {}", show(&file.pve.url)),
                );
                None
            }
        };
        let trust = match (&file.pve.fingerprint, &file.pve.ca_file) {
            (Some(_), Some(_)) => {
                err(
                    "pve.fingerprint",
                    "give either fingerprint or ca_file, not both".into(),
                );
                None
            }
            (Some(fp), None) => match fp.parse::<CertFingerprint>() {
                Ok(fp) => Some(TlsTrust::Pinned(fp)),
                Err(e) => {
                    err(
                        "pve.fingerprint",
                        format!("must be a SHA-256 fingerprint like AA:BB:…(32 bytes): {e}"),
                    );
                    None
                }
            },
            (None, Some(ca)) => Some(TlsTrust::CaFile(resolve(ca))),
            (None, None) => Some(TlsTrust::SystemRoots),
        };
        let token_id = match file.pve.token_id.parse::<TokenId>() {
            Ok(t) => Some(t),
            Err(e) => {
                err("pve.token_id", format!("must be user@realm!tokenid: {e}"));
                None
            }
        };
        let secret = match load_secret(
            file.pve
                .token_secret_file
                .as_deref()
                .map(resolve)
                .as_deref(),
        ) {
            Ok(s) => Some(s),
            Err(rule) => {
                err("pve.token_secret_file", rule);
                None
            }
        };
        let [lo, hi] = file.felhom.vmid_range;
        let range = match (Vmid::try_from(lo), Vmid::try_from(hi)) {
            (Ok(lo), Ok(hi)) if lo.get() <= hi.get() => Some(VmidRange { lo, hi }),
            _ => {
                err(
                    "felhom.vmid_range",
                    format!("must be [lo, hi] with 100 <= lo <= hi <= 999999999; got [{lo}, {hi}]"),
                );
                None
            }
        };
        for (i, n) in file.felhom.nodes.iter().enumerate() {
            if let Err(rule) = n.parse::<crate::spec::NodeName>() {
                err(&format!("felhom.nodes[{i}]"), rule);
            } else if n == crate::spec::AUTO_NODE {
                err(
                    &format!("felhom.nodes[{i}]"),
                    format!(
                        "\"{}\" means \"let felhom place it\"; list node names",
                        crate::spec::AUTO_NODE
                    ),
                );
            }
        }
        for (name, v) in [
            ("felhom.max_parallel", file.felhom.max_parallel),
            (
                "felhom.max_parallel_per_node",
                file.felhom.max_parallel_per_node,
            ),
            (
                "felhom.max_parallel_per_storage",
                file.felhom.max_parallel_per_storage,
            ),
        ] {
            if v == 0 || v > 1024 {
                err(name, format!("must be 1–1024; got {v}"));
            }
        }
        if file.pve.timeout_secs == 0 {
            err("pve.timeout_secs", "must be > 0".into());
        }
        if let Some(r) = file.pve.max_requests_per_second {
            if !(r.is_finite() && r > 0.0 && r <= 10_000.0) {
                err(
                    "pve.max_requests_per_second",
                    format!("must be > 0 and ≤ 10000 (requests a second per node); got {r}"),
                );
            }
        }
        if let Some(n) = &file.pve.entry_node {
            if let Err(rule) = n.parse::<crate::spec::NodeName>() {
                err("pve.entry_node", rule);
            }
        }
        if !(1..=4096).contains(&file.pve.max_response_mib) {
            err(
                "pve.max_response_mib",
                format!("must be 1–4096 (MiB); got {}", file.pve.max_response_mib),
            );
        }
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        let (Some(url), Some(trust), Some(token_id), Some(secret), Some(vmid_range)) =
            (url, trust, token_id, secret, range)
        else {
            unreachable!("every None above pushed an error")
        };
        Ok(Config {
            path: path.to_path_buf(),
            client: ClientConfig {
                base_url: url,
                token: ApiToken::shared(token_id, secret),
                trust,
                timeout: Duration::from_secs(file.pve.timeout_secs),
                max_body_bytes: file.pve.max_response_mib << 20,
            },
            vmid_range,
            journal: resolve(&file.felhom.journal),
            max_parallel: file.felhom.max_parallel,
            max_parallel_per_node: file.felhom.max_parallel_per_node,
            max_parallel_per_storage: file.felhom.max_parallel_per_storage,
            ssh_endpoint: file.felhom.ssh_endpoint,
            linkup_timeout: Duration::from_secs(file.felhom.linkup_timeout_secs),
            ssh_timeout: Duration::from_secs(file.felhom.ssh_timeout_secs),
            task_timeout: Duration::from_secs(file.felhom.task_timeout_secs),
            connect_budget: Duration::from_secs(file.felhom.connect_budget_secs),
            max_requests_per_second: file.pve.max_requests_per_second,
            entry_node: file.pve.entry_node.clone(),
            strategy: file.felhom.strategy,
            specs: file.felhom.specs.iter().map(|p| resolve(p)).collect(),
            nodes: file.felhom.nodes.clone(),
            agent: {
                let mut a = file.agent.clone().unwrap_or_default();
                for p in [
                    &mut a.specs_dir,
                    &mut a.token_file,
                    &mut a.tls_cert,
                    &mut a.tls_key,
                ]
                .into_iter()
                .flatten()
                {
                    *p = resolve(p);
                }
                a
            },
        })
    }
}

/// The secret, from (in order) the configured file, systemd credentials, the environment.
fn load_secret(file: Option<&Path>) -> Result<Arc<Secret>, String> {
    let secret = find_secret(file)?;
    crate::secrets::forbid_core_dumps();
    Ok(secret)
}

fn find_secret(file: Option<&Path>) -> Result<Arc<Secret>, String> {
    if let Some(path) = file {
        return read_secret_file(path);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        if path.exists() {
            // systemd makes credentials readable by the service only; no mode check needed
            // beyond the one read_secret_file does.
            return read_secret_file(&path);
        }
    }
    match crate::secrets::env_secret() {
        Some(s) => Ok(s),
        None => Err(format!(
            "is required: no token secret found (set pve.token_secret_file, or provide the systemd credential '{CREDENTIAL_NAME}', or the {SECRET_ENV} environment variable)"
        )),
    }
}

fn read_secret_file(path: &Path) -> Result<Arc<Secret>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:03o}); run `chmod 600 {}` — a token secret must be readable by its owner only",
            path.display(),
            path.display()
        ));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let s = text.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "{} must hold exactly one token secret",
            path.display()
        ));
    }
    Ok(Arc::new(Secret::new(s.to_string())))
}

/// Write a config file (used by `felhom sim serve --write-config`).
pub fn write_config_file(path: &Path, file: &ConfigFile) -> std::io::Result<()> {
    let text = toml::to_string_pretty(file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("# written by felhom; see README.md\n{text}"))?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    fn with(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[pve]\nurl = \"https://pve.example:8006\"\nfingerprint = \"{}\"\ntoken_id = \"felhom@pve!agent\"\n{extra}\n[felhom]\nvmid_range = [1000, 1999]\njournal = \"j.db\"\n",
            ["AA"; 32].join(":")
        );
        std::env::set_var(
            "FELHOM_TOKEN_SECRET",
            "00000000-0000-0000-0000-000000000000",
        );
        Config::parse(Path::new("/tmp/x/felhom.toml"), &text)
    }

    #[test]
    fn the_request_budget_is_optional_and_checked() {
        match with("") {
            Ok(c) => assert_eq!(c.max_requests_per_second, None),
            Err(e) => panic!("{e}"),
        }
        match with("max_requests_per_second = 20") {
            Ok(c) => assert_eq!(c.max_requests_per_second, Some(20.0)),
            Err(e) => panic!("{e}"),
        }
        for bad in ["0", "-1", "nan", "20000"] {
            let e = with(&format!("max_requests_per_second = {bad}"))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(e.contains("pve.max_requests_per_second"), "{e}");
            assert!(e.contains("must be > 0 and ≤ 10000"), "{e}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_config_text_never_panics(text in "\\PC{0,400}") {
            let _ = Config::parse(Path::new("/tmp/x/felhom.toml"), &text);
        }
    }
}
