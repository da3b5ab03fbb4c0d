//! `ApiError`: every PVE failure, classified once from (status, reason phrase, body), as
//! pve-manager `rest_handler` and pve-http-server produce them (reference §0). Whether an
//! error is worth retrying is decided here, in [`ApiError::is_transient`], and nowhere else.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401: bad secret, unknown or expired token, disabled user (body empty, reason phrase
    /// `Authentication failed!`; `No ticket` without credentials).
    #[error("authentication failed: PVE rejected the API token ({reason}); check the token id and secret")]
    Auth { reason: String },
    /// 403 `Permission check failed (/path, Priv)`.
    #[error("{}", permission_display(.path, .privilege, .message))]
    Permission {
        path: Option<String>,
        privilege: Option<String>,
        message: String,
    },
    /// 400 `Parameter verification failed.` with a per-field map.
    #[error("PVE refused parameters: {}", param_display(.errors, .message))]
    Param {
        message: String,
        errors: BTreeMap<String, String>,
    },
    /// 500 `can't lock file '/run/lock/lxc/pve-config-<vmid>.lock' - got timeout`: another
    /// task held the guest's config lock for 10 s (seed F4).
    #[error("PVE config lock timeout: {message}")]
    LockTimeout { lock_file: String, message: String },
    /// 500 `CT is locked (<lock>)`: a persistent lock property (create, destroyed, backup…).
    #[error("guest is locked ({lock}): {message}")]
    Locked { lock: String, message: String },
    /// 404, or 500 "… does not exist".
    #[error("not found: {message}")]
    NotFound { message: String },
    /// 501: unknown path or method.
    #[error("not implemented by this PVE: {message}")]
    NotImplemented { message: String },
    /// Any other server error.
    #[error("PVE error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// The request did not complete. `maybe_sent` is false only when the connection was
    /// never established, so PVE cannot have acted on it.
    #[error("cannot reach PVE: {message}")]
    Transport { message: String, maybe_sent: bool },
    /// PVE answered something this client cannot read.
    #[error("unexpected PVE response: {message}")]
    Decode { message: String },
    /// The task ended with an error; the last lines of its log show why.
    #[error("task {upid} failed: {exitstatus}{}", tail_display(.log_tail))]
    TaskFailed {
        upid: String,
        exitstatus: String,
        log_tail: Vec<String>,
    },
    /// The task did not end within the wait's deadline.
    #[error("task {upid} still running after {}s", .waited.as_secs())]
    TaskTimeout { upid: String, waited: Duration },
    /// Refused by this client before anything was sent.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },
}

fn permission_display(path: &Option<String>, privilege: &Option<String>, message: &str) -> String {
    match (path, privilege) {
        (Some(p), Some(v)) => {
            format!("permission denied: the token lacks {v} on {p} (PVE: {message})")
        }
        _ => format!("permission denied (PVE: {message})"),
    }
}

fn param_display(errors: &BTreeMap<String, String>, message: &str) -> String {
    if errors.is_empty() {
        return message.to_string();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn tail_display(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(" (log tail: {})", tail.join(" | "))
    }
}

impl ApiError {
    /// Whether trying again may succeed without anyone changing anything.
    ///
    /// - `LockTimeout`: another task held the config lock; it ends (F4). Transient.
    /// - `Transport`: connection refused/reset, timeouts. Transient — but a caller must
    ///   re-observe before repeating a non-idempotent write when `maybe_sent` is true.
    /// - `Server` 502/503/504/595/596 (proxy and pvedaemon unavailability) and 500 `got no
    ///   worker upid` (the fork failed before any work): transient.
    /// - `TaskTimeout` is *not*: the task may still be working; waiting again is the
    ///   caller's call, not a blind retry.
    /// - `Locked`: a persistent lock needs its holder (or a person) to finish; not transient
    ///   at this layer.
    /// - Auth, Permission, Param, NotFound, NotImplemented, Decode, TaskFailed, InvalidInput:
    ///   nothing changes by retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::LockTimeout { .. } | ApiError::Transport { .. } => true,
            ApiError::Server { status, message } => {
                matches!(status, 502 | 503 | 504 | 595 | 596)
                    || message.contains("got no worker upid")
            }
            _ => false,
        }
    }

    /// The HTTP status this error came with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Auth { .. } => Some(401),
            ApiError::Permission { .. } => Some(403),
            ApiError::Param { .. } => Some(400),
            ApiError::LockTimeout { .. } | ApiError::Locked { .. } => Some(500),
            ApiError::NotImplemented { .. } => Some(501),
            ApiError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Classify a non-2xx response. `reason` is the status line's reason phrase; `body` the raw
/// body (`{"data":null,"message":"…\n","errors":{…}}` on PVE ≥ 8.3, possibly empty before).
pub fn classify(status: u16, reason: &str, body: &[u8]) -> ApiError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
        .map(|m| m.trim_end().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| reason.trim().to_string());
    match status {
        401 => ApiError::Auth {
            reason: if reason.is_empty() {
                "Authentication failed!".into()
            } else {
                reason.to_string()
            },
        },
        403 => {
            let (path, privilege) = parse_permission(&message);
            ApiError::Permission {
                path,
                privilege,
                message,
            }
        }
        400 => {
            let errors = parsed
                .as_ref()
                .and_then(|v| v.get("errors"))
                .and_then(|e| e.as_object())
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(|s| s.trim_end().to_string())
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            ApiError::Param { message, errors }
        }
        404 => ApiError::NotFound { message },
        501 => ApiError::NotImplemented { message },
        500 => {
            if let Some(file) = lock_timeout_file(&message) {
                ApiError::LockTimeout {
                    lock_file: file,
                    message,
                }
            } else if let Some(lock) = locked_kind(&message) {
                ApiError::Locked { lock, message }
            } else if message.contains("does not exist") {
                ApiError::NotFound { message }
            } else {
                ApiError::Server { status, message }
            }
        }
        _ => ApiError::Server { status, message },
    }
}

/// `Permission check failed (/vms/123, VM.Allocate)` → (path, privilege). Other shapes
/// (`(pool 'x' does not exist)`, `(/, Sys.Modify for modifying tag 't')`, `(URI … need
/// proper ticket.)`) keep what can be read.
fn parse_permission(msg: &str) -> (Option<String>, Option<String>) {
    let Some(start) = msg.find("Permission check failed (") else {
        return (None, None);
    };
    let inner = &msg[start + "Permission check failed (".len()..];
    let Some(end) = inner.rfind(')') else {
        return (None, None);
    };
    let inner = &inner[..end];
    match inner.split_once(", ") {
        Some((path, privs)) if path.starts_with('/') => {
            let privilege = privs.split_whitespace().next().map(str::to_string);
            (Some(path.to_string()), privilege)
        }
        _ => (None, None),
    }
}

fn lock_timeout_file(msg: &str) -> Option<String> {
    let start = msg.find("can't lock file '")? + "can't lock file '".len();
    let rest = &msg[start..];
    let end = rest.find('\'')?;
    if !rest[end..].contains("got timeout") {
        return None;
    }
    Some(rest[..end].to_string())
}

fn locked_kind(msg: &str) -> Option<String> {
    let start = msg
        .find("CT is locked (")
        .or_else(|| msg.find("VM is locked ("))?
        + "CT is locked (".len();
    let rest = &msg[start..];
    Some(rest[..rest.find(')')?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(msg: &str) -> Vec<u8> {
        serde_json::json!({ "data": null, "message": msg })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn permission_texts() {
        let e = classify(
            403,
            "Permission check failed (/vms/123, VM.Allocate)",
            &body("Permission check failed (/vms/123, VM.Allocate)\n"),
        );
        assert_eq!(
            e,
            ApiError::Permission {
                path: Some("/vms/123".into()),
                privilege: Some("VM.Allocate".into()),
                message: "Permission check failed (/vms/123, VM.Allocate)".into()
            }
        );
        assert!(e.to_string().contains("lacks VM.Allocate on /vms/123"));
        let e = classify(
            403,
            "x",
            &body("Permission check failed (/, Sys.Modify for modifying tag 'prod')\n"),
        );
        assert!(
            matches!(e, ApiError::Permission { path: Some(p), privilege: Some(v), .. } if p == "/" && v == "Sys.Modify")
        );
        let e = classify(
            403,
            "x",
            &body("Permission check failed (pool 'x' does not exist)\n"),
        );
        assert!(matches!(
            e,
            ApiError::Permission {
                path: None,
                privilege: None,
                ..
            }
        ));
        // Old servers: no body, the reason phrase carries it.
        let e = classify(
            403,
            "Permission check failed (/storage/local, Datastore.AllocateSpace)",
            b"",
        );
        assert!(
            matches!(e, ApiError::Permission { privilege: Some(v), .. } if v == "Datastore.AllocateSpace")
        );
    }

    #[test]
    fn lock_and_locked_and_missing() {
        let m = "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\n";
        let e = classify(
            500,
            "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout",
            &body(m),
        );
        assert!(
            matches!(&e, ApiError::LockTimeout { lock_file, .. } if lock_file == "/run/lock/lxc/pve-config-101.lock")
        );
        assert!(e.is_transient());
        let e = classify(
            500,
            "x",
            &body("unable to restore CT 101 - CT is locked (create)\n"),
        );
        assert!(matches!(&e, ApiError::Locked { lock, .. } if lock == "create"));
        assert!(!e.is_transient());
        let e = classify(
            500,
            "x",
            &body("Configuration file 'nodes/pve/lxc/101.conf' does not exist\n"),
        );
        assert!(matches!(e, ApiError::NotFound { .. }));
        let e = classify(
            500,
            "CT 101 already running",
            &body("CT 101 already running\n"),
        );
        assert!(
            matches!(&e, ApiError::Server { status: 500, message } if message == "CT 101 already running")
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn params_auth_gateway() {
        let b = serde_json::json!({ "data": null, "errors": { "hostname": "invalid format - value does not look like a valid DNS name\n" }, "message": "Parameter verification failed.\n" });
        let e = classify(
            400,
            "Parameter verification failed.",
            b.to_string().as_bytes(),
        );
        match &e {
            ApiError::Param { errors, .. } => assert_eq!(
                errors["hostname"],
                "invalid format - value does not look like a valid DNS name"
            ),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("hostname: invalid format"));
        assert!(matches!(
            classify(401, "Authentication failed!", b""),
            ApiError::Auth { .. }
        ));
        assert!(classify(503, "Service Unavailable", b"").is_transient());
        assert!(classify(596, "Broken pipe", b"").is_transient());
        assert!(!classify(500, "boom", b"").is_transient());
        assert!(classify(
            500,
            "x",
            &body("got no worker upid - start worker failed\n")
        )
        .is_transient());
        assert!(matches!(
            classify(
                501,
                "Method 'POST /nodes/pve/lxc/100/config' not implemented",
                b""
            ),
            ApiError::NotImplemented { .. }
        ));
    }
}
