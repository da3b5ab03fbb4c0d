//! The agent's settings: `[agent]` of felhom's config with its defaults filled in and every
//! value checked before anything starts (a bad one is exit 2, naming the key and the rule).
//!
//! | key             | default                     | rule                                                   |
//! |-----------------|-----------------------------|--------------------------------------------------------|
//! | `listen`        | `127.0.0.1:8443`            | `host:port`; without TLS only a loopback address        |
//! | `specs_dir`     | `/etc/felhom/guests.d/`     | a directory (created if missing is *not* done: it must exist) |
//! | `interval_secs` | 60                          | 1–86400                                                |
//! | `token_file`    | `$CREDENTIALS_DIRECTORY/felhom-api-token` | owner-only file holding one token of ≥ 16 characters |
//! | `tls_cert`/`tls_key` | none (plain HTTP)      | both or neither; PEM                                   |
//! | `concurrency`   | `felhom.max_parallel`       | 1–1024                                                 |
//! | `debounce_ms`   | 200                         | 10–60000                                               |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use felhom_core::config::Config;
use felhom_core::spec::FieldError;
use pve_api::Secret;

/// The systemd credential the API token is read from when `agent.token_file` is not set.
pub const API_TOKEN_CREDENTIAL: &str = "felhom-api-token";
pub const DEFAULT_SPECS_DIR: &str = "/etc/felhom/guests.d/";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub specs_dir: PathBuf,
    pub interval: Duration,
    /// Shared, never copied: `Secret` is zeroized on drop and not `Clone`.
    pub token: std::sync::Arc<Secret>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub concurrency: usize,
    pub debounce: Duration,
}

impl Settings {
    /// `listen` from the command line wins over the config.
    pub fn from_config(config: &Config, listen: Option<&str>) -> Result<Settings, Vec<FieldError>> {
        let a = &config.agent;
        let mut errors = Vec::new();
        let mut err = |field: &str, rule: String| {
            errors.push(FieldError {
                field: field.into(),
                rule,
            })
        };
        let listen_text = listen
            .map(str::to_string)
            .or_else(|| a.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                err(
                    "agent.tls_cert",
                    "give both tls_cert and tls_key, or neither".into(),
                );
                None
            }
        };
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(addr) if tls.is_none() && !addr.ip().is_loopback() => {
                err(
                    "agent.listen",
                    format!("{addr} is not a loopback address: plain HTTP is served on loopback only; set agent.tls_cert and agent.tls_key to listen there"),
                );
                None
            }
            Ok(addr) => Some(addr),
            Err(e) => {
                err(
                    "agent.listen",
                    format!(
                        "must be host:port with an IP address ({e}); got {}",
                        felhom_core::spec::show_value(&listen_text)
                    ),
                );
                None
            }
        };
        let specs_dir = a
            .specs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPECS_DIR));
        if !specs_dir.is_dir() {
            err(
                "agent.specs_dir",
                format!("{} is not a directory", specs_dir.display()),
            );
        }
        let interval = a.interval_secs.unwrap_or(60);
        if !(1..=86_400).contains(&interval) {
            err(
                "agent.interval_secs",
                format!("must be 1–86400; got {interval}"),
            );
        }
        let concurrency = a.concurrency.unwrap_or(config.max_parallel);
        if !(1..=1024).contains(&concurrency) {
            err(
                "agent.concurrency",
                format!("must be 1–1024; got {concurrency}"),
            );
        }
        let debounce = a.debounce_ms.unwrap_or(200);
        if !(10..=60_000).contains(&debounce) {
            err(
                "agent.debounce_ms",
                format!("must be 10–60000; got {debounce}"),
            );
        }
        let token = match load_token(a.token_file.as_deref()) {
            Ok(t) => Some(t),
            Err(rule) => {
                err("agent.token_file", rule);
                None
            }
        };
        match (listen, token) {
            (Some(listen), Some(token)) if errors.is_empty() => Ok(Settings {
                listen,
                specs_dir,
                interval: Duration::from_secs(interval),
                token: std::sync::Arc::new(token),
                tls,
                concurrency,
                debounce: Duration::from_millis(debounce),
            }),
            _ => Err(errors),
        }
    }
}

/// The API bearer token: `agent.token_file`, else the systemd credential.
fn load_token(file: Option<&Path>) -> Result<Secret, String> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Path::new(&dir).join(API_TOKEN_CREDENTIAL),
            None => {
                return Err(format!(
                    "is required: set agent.token_file, or provide the systemd credential '{API_TOKEN_CREDENTIAL}' (LoadCredential=)"
                ))
            }
        },
    };
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim();
    if t.len() < 16 || t.contains(char::is_whitespace) || !t.is_ascii() {
        return Err(format!(
            "{} must hold exactly one token of at least 16 printable ASCII characters",
            path.display()
        ));
    }
    Ok(Secret::new(t.to_string()))
}
