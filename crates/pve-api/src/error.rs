//! `ApiError`: every PVE failure, classified once from (status, reason phrase, body), as
//! pve-manager `rest_handler` and pve-http-server produce them (reference §0). Whether an
//! error is worth retrying is decided here, in [`ApiError::is_transient`], and nowhere else.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::texts;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401: bad secret, unknown or expired token, disabled user (body empty, reason phrase
    /// `Authentication failed!`; `No ticket` without credentials; reference §0). Not
    /// transient: PVE delays the answer 3 s, and the same token fails the same way again.
    #[error("authentication failed: PVE rejected the API token ({reason}); check the token id and secret")]
    Auth { reason: String },
    /// 403 `Permission check failed (/path, Priv)`; `path`/`privilege` are `None` for the
    /// other shapes (`(pool 'x' does not exist)`, `(URI '…' not available with API token, …)`).
    /// Not transient: an ACL has to change.
    #[error("{}", permission_display(.path, .privilege, .message))]
    Permission {
        path: Option<String>,
        privilege: Option<String>,
        message: String,
    },
    /// 400 `Parameter verification failed.` with a per-field map (values without their
    /// trailing `\n`). Not transient: the request itself is wrong.
    #[error("PVE refused parameters: {}", param_display(.errors, .message))]
    Param {
        message: String,
        errors: BTreeMap<String, String>,
    },
    /// 500 `can't lock file '/run/lock/lxc/pve-config-<vmid>.lock' - got timeout`: another
    /// task held the guest's config lock for 10 s (reference §4.1). Transient: the holder
    /// finishes; this is the #1 field complaint (docs/lessons.md L3).
    #[error("PVE config lock timeout: {message}")]
    LockTimeout { lock_file: String, message: String },
    /// 500 `CT is locked (<lock>)`, possibly prefixed (`unable to restore CT 101 - CT is
    /// locked (create)`): a persistent `lock` property (reference §4.2). Not transient at
    /// this layer: it stays until its task ends or a person unlocks, so the caller decides
    /// whether to wait for an empty `lock` field.
    #[error("guest is locked ({lock}): {message}")]
    Locked { lock: String, message: String },
    /// 404, or 500 "… does not exist" (`Configuration file 'nodes/pve/lxc/101.conf' does not
    /// exist`). Not transient.
    #[error("not found: {message}")]
    NotFound { message: String },
    /// 500 [`texts::CONFIG_MODIFIED`]: the `digest` sent with a config write is stale, someone
    /// changed the config in between (reference §3.2). Not transient (it was a plain 500
    /// before): the caller reads the config again and decides.
    #[error("PVE error (HTTP 500): {message}")]
    ConfigModified { message: String },
    /// 500 `CT <vmid> already running` ([`texts::already_running`]) on start (§6.1). Not
    /// transient (was a plain 500): the guest is where a start would put it.
    #[error("PVE error (HTTP 500): {message}")]
    AlreadyRunning { message: String },
    /// 500 `CT <vmid> not running` / `VM <vmid> not running` ([`texts::not_running`]) on
    /// stop, shutdown, reboot (§6.1). Not transient (was a plain 500).
    #[error("PVE error (HTTP 500): {message}")]
    NotRunning { message: String },
    /// 500 [`texts::ALREADY_AT_SIZE`] on resize (§5). Not transient (was a plain 500): the
    /// disk has the size asked for.
    #[error("PVE error (HTTP 500): {message}")]
    AlreadyAtSize { message: String },
    /// 500 [`texts::CANNOT_SHRINK`] on resize (§5). Not transient (was a plain 500): PVE
    /// never shrinks.
    #[error("PVE error (HTTP 500): {message}")]
    CannotShrink { message: String },
    /// 500 `… already exists`: `CT <vmid> already exists on node '<node>'`
    /// ([`texts::already_exists_on_node`]) on create/restore (§2.2), or a pool id in use.
    /// Not transient (was a plain 500).
    #[error("PVE error (HTTP 500): {message}")]
    AlreadyExists { message: String },
    /// 500 [`texts::NO_QUORUM`] (`cluster not ready - no quorum?`): the node PVE asked has
    /// lost the cluster's quorum, so pmxcfs refuses writes (create, restore, clone, start,
    /// config writes). Transient: quorum comes back; nothing was done. A job that keeps
    /// meeting it pauses and resumes when asked.
    #[error("PVE cluster has no quorum (HTTP 500): {message}")]
    NoQuorum { message: String },
    /// 501: unknown path or method (an older PVE, or a typo). Not transient.
    #[error("not implemented by this PVE: {message}")]
    NotImplemented { message: String },
    /// 595 or 596 with an empty body: AnyEvent::HTTP's pseudo-status, passed on as is by
    /// pveproxy when its hop to pvedaemon (or another node's pveproxy) failed or timed out
    /// after 30 s (pve-http-server `src/PVE/APIServer/AnyEvent.pm` `proxy_request`; audit top
    /// #1). The request may have been performed in full (config written, volume allocated,
    /// task started) and only its answer lost. Transient, but a caller must observe before it
    /// repeats a write, exactly as after a `Transport` error with `maybe_sent`.
    #[error(
        "PVE's answer was lost (HTTP {status} {message}): the request may have been performed"
    )]
    AnswerLost { status: u16, message: String },
    /// Any other status. Transient only for 502/503/504/595/596 and a 500 `got no worker
    /// upid`; see [`ApiError::is_transient`].
    #[error("PVE error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// The request did not complete. `maybe_sent` is false only when the connection was
    /// never established (reqwest `is_connect()`, a failed TLS handshake included), so PVE
    /// cannot have acted on it; otherwise the request may have been processed, and a
    /// non-idempotent write must be re-observed before it is repeated (docs/lessons.md L1).
    /// Transient.
    #[error("cannot reach PVE: {message}")]
    Transport { message: String, maybe_sent: bool },
    /// The answer's body passed the client's cap (`ClientConfig::max_body_bytes`): a hostile
    /// or broken server streaming more than any PVE answer holds. Reading stopped at the
    /// cap. `endpoint` is the method and route (`GET /nodes/{node}/tasks/{upid}/log`), never
    /// the values. Not transient: the same request gets the same answer.
    #[error("PVE's answer to {endpoint} is larger than the client's cap of {limit} bytes; reading stopped there")]
    BodyTooLarge { endpoint: String, limit: u64 },
    /// The server's TLS certificate was refused: it does not match the pinned fingerprint
    /// (`expected`), or the CA file or system roots do not vouch for it (`expected` is
    /// `None`). Nothing was sent (the token never left). Not transient and never retried: a
    /// man in the middle or a host whose certificate changed does not heal by waiting, and
    /// retrying would only keep offering connections to whoever answered. Fingerprints are
    /// SHA-256 in PVE's `AA:BB:…` form, what `pvenode cert info` prints on the host.
    #[error("{}", certificate_display(.expected, .presented, .reason))]
    Certificate {
        expected: Option<crate::CertFingerprint>,
        presented: crate::CertFingerprint,
        reason: String,
    },
    /// PVE answered something this client cannot read. Not transient.
    #[error("unexpected PVE response: {message}")]
    Decode { message: String },
    /// The task ended with an error; the last lines of its log show why. Not transient: the
    /// task ran; re-running it is a new dispatch and the caller's decision.
    /// `kind` is the exit status read once ([`TaskFailure::of`]), so callers match on it.
    #[error("task {upid} failed: {exitstatus}{}", tail_display(.log_tail))]
    TaskFailed {
        upid: String,
        exitstatus: String,
        kind: TaskFailure,
        log_tail: Vec<String>,
    },
    /// The task did not end within the wait's deadline. Not transient: the task may still be
    /// working, so repeating the *operation* could run it twice; waiting again on the same
    /// UPID is the caller's call.
    #[error("task {upid} still running after {}s", .waited.as_secs())]
    TaskTimeout { upid: String, waited: Duration },
    /// Refused by this client before anything was sent. Not transient.
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },
}

/// What a PVE `die` text says, read once. The same texts reach a client two ways: as a
/// 500's message when the handler died before forking (then [`classify`] turns the kind into
/// an [`ApiError`] variant), or as a task's exit status when the worker died (then it is the
/// `kind` of [`ApiError::TaskFailed`]). The texts are in [`crate::texts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    /// [`texts::lock_timeout`]: the config flock was held by someone else (§4.1).
    LockTimeout { lock_file: String },
    /// Some other `got timeout` (a `run_with_timeout` elsewhere than the flock).
    Timeout,
    /// [`texts::locked`]: the persistent `lock` property (§4.2).
    Locked { lock: String },
    /// [`texts::bridge_missing`]: a start found no bridge of that name on the node. Told
    /// apart from [`TaskFailure::NotFound`]: the guest exists, its network config does not fit
    /// the node.
    BridgeMissing { bridge: String },
    /// `… does not exist` ([`texts::no_config`], [`texts::storage_missing`], …), or a
    /// restore's archive that is not there ([`texts::cant_find_file`]).
    NotFound,
    /// [`texts::CONFIG_MODIFIED`].
    ConfigModified,
    /// [`texts::already_running`].
    AlreadyRunning,
    /// [`texts::not_running`], [`texts::vm_not_running`].
    NotRunning,
    /// [`texts::ALREADY_AT_SIZE`].
    AlreadyAtSize,
    /// [`texts::CANNOT_SHRINK`].
    CannotShrink,
    /// [`texts::already_exists_on_node`].
    AlreadyExists,
    /// [`texts::NO_QUORUM`].
    NoQuorum,
    /// Anything else, [`texts::NO_WORKER_UPID`] included.
    Other,
}

impl TaskFailure {
    /// Read a die text. The order matters where texts nest: a lock timeout or a lock is what
    /// a prefixed text is about (`unable to restore CT 1 - CT is locked (create)`), and a
    /// failed fork says nothing else happened. The first four checks are in the order the
    /// 500 classification always had, so no 500 changes variant.
    pub fn of(text: &str) -> TaskFailure {
        if let Some(lock_file) = lock_timeout_file(text) {
            return TaskFailure::LockTimeout { lock_file };
        }
        if let Some(lock) = locked_kind(text) {
            return TaskFailure::Locked { lock };
        }
        if let Some(bridge) = missing_bridge(text) {
            return TaskFailure::BridgeMissing { bridge };
        }
        if text.contains(texts::DOES_NOT_EXIST_PART.trim_start())
            || text.contains(texts::CANT_FIND_FILE_PART)
        {
            return TaskFailure::NotFound;
        }
        if text.contains(texts::NO_WORKER_UPID) {
            return TaskFailure::Other;
        }
        if text.contains(texts::NO_QUORUM) {
            return TaskFailure::NoQuorum;
        }
        if text.contains(texts::GOT_TIMEOUT_PART) {
            return TaskFailure::Timeout;
        }
        if text.contains(texts::CONFIG_MODIFIED_PART) {
            TaskFailure::ConfigModified
        } else if text.contains(texts::ALREADY_AT_SIZE) {
            TaskFailure::AlreadyAtSize
        } else if text.contains(texts::CANNOT_SHRINK) {
            TaskFailure::CannotShrink
        } else if text.contains(texts::ALREADY_RUNNING_PART) {
            TaskFailure::AlreadyRunning
        } else if text.contains(texts::NOT_RUNNING_PART) {
            TaskFailure::NotRunning
        } else if text.contains(texts::ALREADY_EXISTS_PART) {
            TaskFailure::AlreadyExists
        } else {
            TaskFailure::Other
        }
    }
}

/// `bridge 'vmbr9' does not exist` → `vmbr9` (a bridge name has no quote: `[-_.\w\d]+`).
fn missing_bridge(text: &str) -> Option<String> {
    let tail = &text[text.find(texts::BRIDGE_PART)? + texts::BRIDGE_PART.len()..];
    let (name, rest) = tail.split_once('\'')?;
    (rest.starts_with(texts::DOES_NOT_EXIST_PART) && !name.is_empty()).then(|| name.to_string())
}

fn permission_display(path: &Option<String>, privilege: &Option<String>, message: &str) -> String {
    match (path, privilege) {
        (Some(p), Some(v)) => {
            format!("permission denied: token lacks {v} on {p} (PVE: {message})")
        }
        _ => format!("permission denied: {message}"),
    }
}

fn certificate_display(
    expected: &Option<crate::CertFingerprint>,
    presented: &crate::CertFingerprint,
    reason: &str,
) -> String {
    let check =
        "run `pvenode cert info` on the PVE node to see its certificate's SHA-256 fingerprint";
    match expected {
        Some(pin) => format!(
            "refusing PVE's TLS certificate, nothing was sent: {reason}; expected (pinned) {pin}, the server presented {presented}; {check}, and change the pin only if you know why the certificate changed"
        ),
        None => format!(
            "refusing PVE's TLS certificate, nothing was sent: {reason}; the server presented {presented}; {check}"
        ),
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
    /// - `NoQuorum`: the cluster lost quorum; it comes back, nothing was done. Transient.
    /// - `Transport`: connection refused/reset, timeouts. Transient — but a caller must
    ///   re-observe before repeating a non-idempotent write when `maybe_sent` is true.
    /// - `AnswerLost` (595/596, empty body): transient with the same duty to re-observe: the
    ///   write may be done.
    /// - `Server` 502/503/504/595/596 (proxy and pvedaemon unavailability) and 500 `got no
    ///   worker upid` (the fork failed before any work): transient.
    /// - `TaskTimeout` is *not*: the task may still be working; waiting again is the
    ///   caller's call, not a blind retry.
    /// - `Locked`: a persistent lock needs its holder (or a person) to finish; not transient
    ///   at this layer.
    /// - `ConfigModified`, `AlreadyRunning`, `NotRunning`, `AlreadyAtSize`, `CannotShrink`,
    ///   `AlreadyExists`: not transient, exactly as the plain 500 `Server` they were before
    ///   they had names (none of them contains `got no worker upid`, which stays `Server`).
    /// - Auth, Permission, Param, NotFound, NotImplemented, Decode, TaskFailed, InvalidInput:
    ///   nothing changes by retrying.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::LockTimeout { .. }
            | ApiError::Transport { .. }
            | ApiError::AnswerLost { .. }
            | ApiError::NoQuorum { .. } => true,
            ApiError::Server { status, message } => {
                matches!(status, 502 | 503 | 504 | 595 | 596)
                    || message.contains(texts::NO_WORKER_UPID)
            }
            _ => false,
        }
    }

    /// Whether the request may have been performed although its answer says nothing of it:
    /// a lost answer (`AnswerLost`), a request that may have been sent before the connection
    /// broke (`Transport` with `maybe_sent`), a task still running past the wait's deadline
    /// (`TaskTimeout`). A caller that dispatched a task must look for it (running, or its
    /// effect) before dispatching again.
    pub fn maybe_performed(&self) -> bool {
        matches!(
            self,
            ApiError::AnswerLost { .. }
                | ApiError::Transport {
                    maybe_sent: true,
                    ..
                }
                | ApiError::TaskTimeout { .. }
        )
    }

    /// The HTTP status this error came with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Auth { .. } => Some(401),
            ApiError::Permission { .. } => Some(403),
            ApiError::Param { .. } => Some(400),
            ApiError::LockTimeout { .. }
            | ApiError::Locked { .. }
            | ApiError::ConfigModified { .. }
            | ApiError::AlreadyRunning { .. }
            | ApiError::NotRunning { .. }
            | ApiError::AlreadyAtSize { .. }
            | ApiError::CannotShrink { .. }
            | ApiError::AlreadyExists { .. }
            | ApiError::NoQuorum { .. } => Some(500),
            ApiError::NotImplemented { .. } => Some(501),
            ApiError::Server { status, .. } | ApiError::AnswerLost { status, .. } => Some(*status),
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
        // The body is empty; the reason phrase says `Authentication failed!` or `No ticket`.
        401 => ApiError::Auth {
            reason: if message.is_empty() {
                "Authentication failed!".into()
            } else {
                message
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
        500 => match TaskFailure::of(&message) {
            TaskFailure::LockTimeout { lock_file } => ApiError::LockTimeout { lock_file, message },
            TaskFailure::Locked { lock } => ApiError::Locked { lock, message },
            TaskFailure::NotFound => ApiError::NotFound { message },
            TaskFailure::ConfigModified => ApiError::ConfigModified { message },
            TaskFailure::AlreadyRunning => ApiError::AlreadyRunning { message },
            TaskFailure::NotRunning => ApiError::NotRunning { message },
            TaskFailure::AlreadyAtSize => ApiError::AlreadyAtSize { message },
            TaskFailure::CannotShrink => ApiError::CannotShrink { message },
            TaskFailure::AlreadyExists => ApiError::AlreadyExists { message },
            TaskFailure::NoQuorum => ApiError::NoQuorum { message },
            TaskFailure::BridgeMissing { .. } | TaskFailure::Timeout | TaskFailure::Other => {
                ApiError::Server { status, message }
            }
        },
        595 | 596 if body.trim_ascii().is_empty() => ApiError::AnswerLost { status, message },
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
    let start = msg.find(texts::LOCK_FILE_PART)? + texts::LOCK_FILE_PART.len();
    let rest = &msg[start..];
    let end = rest.find('\'')?;
    if !rest[end..].contains(texts::GOT_TIMEOUT_PART) {
        return None;
    }
    Some(rest[..end].to_string())
}

fn locked_kind(msg: &str) -> Option<String> {
    let (at, part) = texts::LOCKED_PARTS
        .iter()
        .find_map(|p| msg.find(p).map(|at| (at, *p)))?;
    let rest = &msg[at + part.len()..];
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
            matches!(&e, ApiError::AlreadyRunning { message } if message == "CT 101 already running")
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn every_reference_text() {
        // 401: empty body, the reason phrase is all there is.
        assert_eq!(
            classify(401, "Authentication failed!", b""),
            ApiError::Auth {
                reason: "Authentication failed!".into()
            }
        );
        assert_eq!(
            classify(401, "No ticket", b""),
            ApiError::Auth {
                reason: "No ticket".into()
            }
        );
        assert_eq!(classify(401, "", b"").status(), Some(401));
        // 403 variants.
        let uri = "Permission check failed (URI '/access/ticket' not available with API token, need proper ticket.)";
        assert_eq!(
            classify(403, uri, &body(&format!("{uri}\n"))),
            ApiError::Permission {
                path: None,
                privilege: None,
                message: uri.into()
            }
        );
        let pool = "Permission check failed (pool 'felhom' does not exist)";
        let e = classify(403, pool, &body(&format!("{pool}\n")));
        assert_eq!(
            e,
            ApiError::Permission {
                path: None,
                privilege: None,
                message: pool.into()
            }
        );
        assert_eq!(e.to_string(), format!("permission denied: {pool}"));
        let e = classify(
            403,
            "x",
            &body("Permission check failed (/vms/123, VM.Allocate)\n"),
        );
        assert_eq!(
            e.to_string(),
            "permission denied: token lacks VM.Allocate on /vms/123 (PVE: Permission check failed (/vms/123, VM.Allocate))"
        );
        let e = classify(
            403,
            "x",
            &body("Permission check failed (/vms/100, VM.Config.Options)\n"),
        );
        assert!(
            matches!(e, ApiError::Permission { privilege: Some(p), .. } if p == "VM.Config.Options")
        );
        // 400: every field, trimmed; the message is kept.
        let b = serde_json::json!({"data": null, "message": "Parameter verification failed.\n",
            "errors": {"vmid": "VM 123 already exists\n", "delete": "unknown option 'x'\n"}});
        let e = classify(
            400,
            "Parameter verification failed.",
            b.to_string().as_bytes(),
        );
        let ApiError::Param { message, errors } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(message, "Parameter verification failed.");
        assert_eq!(errors["vmid"], "VM 123 already exists");
        assert_eq!(errors["delete"], "unknown option 'x'");
        assert_eq!(
            e.to_string(),
            "PVE refused parameters: delete: unknown option 'x'; vmid: VM 123 already exists"
        );
        // A 400 from an old server (no body) keeps the reason phrase.
        assert_eq!(
            classify(400, "Parameter verification failed.", b""),
            ApiError::Param {
                message: "Parameter verification failed.".into(),
                errors: BTreeMap::new()
            }
        );
        // 500 lock timeout, with and without a prefix; the storage lock too.
        for (m, f) in [
            ("can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout", "/run/lock/lxc/pve-config-101.lock"),
            ("unable to create CT 1000 - can't lock file '/run/lock/lxc/pve-config-1000.lock' - got timeout", "/run/lock/lxc/pve-config-1000.lock"),
            ("can't lock file '/var/lock/pve-manager/pve-storage-local-lvm' - got timeout", "/var/lock/pve-manager/pve-storage-local-lvm"),
        ] {
            let e = classify(500, m, &body(&format!("{m}\n")));
            assert_eq!(e, ApiError::LockTimeout { lock_file: f.into(), message: m.into() });
            assert!(e.is_transient());
        }
        // Old server: the reason phrase alone carries it.
        assert!(matches!(
            classify(
                500,
                "can't lock file '/run/lock/lxc/pve-config-9.lock' - got timeout",
                b""
            ),
            ApiError::LockTimeout { .. }
        ));
        // `can't lock file` without `got timeout` is something else.
        assert!(matches!(
            classify(
                500,
                "x",
                &body("can't lock file '/x' - Permission denied\n")
            ),
            ApiError::Server { .. }
        ));
        // Locked, plain and prefixed.
        for (m, l) in [
            ("CT is locked (create)", "create"),
            ("unable to restore CT 101 - CT is locked (create)", "create"),
            ("CT is locked (destroyed)", "destroyed"),
            ("can't remove CT 101 - CT is locked (backup)", "backup"),
        ] {
            let e = classify(500, "x", &body(&format!("{m}\n")));
            assert_eq!(
                e,
                ApiError::Locked {
                    lock: l.into(),
                    message: m.into()
                }
            );
            assert!(!e.is_transient());
            assert_eq!(e.status(), Some(500));
        }
        // Not found: 404, or 500 "does not exist".
        assert_eq!(
            classify(404, "Not Found", b""),
            ApiError::NotFound {
                message: "Not Found".into()
            }
        );
        assert!(matches!(
            classify(500, "x", &body("storage 'nope' does not exist\n")),
            ApiError::NotFound { .. }
        ));
        // 501.
        let m = "Method 'POST /nodes/pve/lxc/100/config' not implemented";
        assert_eq!(
            classify(501, m, &body(m)),
            ApiError::NotImplemented { message: m.into() }
        );
        // Other 5xx: transient only where the reference says so.
        for (st, transient) in [
            (500, false),
            (502, true),
            (503, true),
            (504, true),
            (595, true),
            (596, true),
            (599, false),
        ] {
            let e = classify(st, "Errors during connection establishment", b"");
            assert_eq!(e.is_transient(), transient, "{st}");
            assert_eq!(e.status(), Some(st));
        }
        assert!(classify(
            500,
            "x",
            &body("unable to create CT 101 - got no worker upid - start worker failed\n")
        )
        .is_transient());
        // The body's message wins over the (first-line-only) reason phrase.
        let e = classify(500, "line one", &body("line one\nline two\n"));
        assert_eq!(
            e,
            ApiError::Server {
                status: 500,
                message: "line one\nline two".into()
            }
        );
        // Garbage bodies fall back to the reason phrase.
        assert_eq!(
            classify(500, "CT 101 already running", b"<html>oops</html>"),
            ApiError::AlreadyRunning {
                message: "CT 101 already running".into()
            }
        );
        assert_eq!(
            classify(500, "boom", b"<html>oops</html>"),
            ApiError::Server {
                status: 500,
                message: "boom".into()
            }
        );
        assert_eq!(
            classify(500, "fallback", br#"{"data":null,"message":""}"#),
            ApiError::Server {
                status: 500,
                message: "fallback".into()
            }
        );
    }

    #[test]
    fn transient_decisions() {
        let no = [
            ApiError::Auth { reason: "x".into() },
            ApiError::Permission {
                path: None,
                privilege: None,
                message: "x".into(),
            },
            ApiError::Param {
                message: "x".into(),
                errors: BTreeMap::new(),
            },
            ApiError::NotFound {
                message: "x".into(),
            },
            ApiError::NotImplemented {
                message: "x".into(),
            },
            ApiError::Decode {
                message: "x".into(),
            },
            ApiError::TaskFailed {
                upid: "u".into(),
                exitstatus: "e".into(),
                kind: TaskFailure::Other,
                log_tail: vec![],
            },
            ApiError::TaskFailed {
                upid: "u".into(),
                exitstatus: texts::lock_timeout(&texts::config_lock_file(1)),
                kind: TaskFailure::LockTimeout {
                    lock_file: texts::config_lock_file(1),
                },
                log_tail: vec![],
            },
            ApiError::ConfigModified {
                message: "x".into(),
            },
            ApiError::AlreadyRunning {
                message: "x".into(),
            },
            ApiError::NotRunning {
                message: "x".into(),
            },
            ApiError::AlreadyAtSize {
                message: "x".into(),
            },
            ApiError::CannotShrink {
                message: "x".into(),
            },
            ApiError::AlreadyExists {
                message: "x".into(),
            },
            ApiError::TaskTimeout {
                upid: "u".into(),
                waited: Duration::from_secs(1),
            },
            ApiError::InvalidInput {
                field: "f".into(),
                message: "x".into(),
            },
            ApiError::Locked {
                lock: "create".into(),
                message: "x".into(),
            },
        ];
        for e in &no {
            assert!(!e.is_transient(), "{e:?}");
        }
        for e in [
            ApiError::LockTimeout {
                lock_file: "f".into(),
                message: "x".into(),
            },
            ApiError::Transport {
                message: "x".into(),
                maybe_sent: true,
            },
            ApiError::Transport {
                message: "x".into(),
                maybe_sent: false,
            },
        ] {
            assert!(e.is_transient(), "{e:?}");
        }
        let e = ApiError::TaskFailed {
            upid: "U".into(),
            exitstatus: "boom".into(),
            kind: TaskFailure::Other,
            log_tail: vec!["a".into(), "TASK ERROR: boom".into()],
        };
        assert_eq!(
            e.to_string(),
            "task U failed: boom (log tail: a | TASK ERROR: boom)"
        );
    }

    /// Every die text the simulator says (from `texts`), as a 500 and as a task's exit
    /// status, plainly and with the prefixes PVE puts in front.
    #[test]
    fn named_texts_round_trip() {
        let lock = texts::config_lock_file(101);
        let cases: Vec<(String, TaskFailure)> = vec![
            (texts::CONFIG_MODIFIED.into(), TaskFailure::ConfigModified),
            (texts::already_running(101), TaskFailure::AlreadyRunning),
            (texts::not_running(101), TaskFailure::NotRunning),
            (texts::vm_not_running(101), TaskFailure::NotRunning),
            (texts::ALREADY_AT_SIZE.into(), TaskFailure::AlreadyAtSize),
            (texts::CANNOT_SHRINK.into(), TaskFailure::CannotShrink),
            (
                texts::already_exists_on_node(101, "pve"),
                TaskFailure::AlreadyExists,
            ),
            (
                texts::bridge_missing("vmbr9"),
                TaskFailure::BridgeMissing {
                    bridge: "vmbr9".into(),
                },
            ),
            (texts::no_config("pve", 101), TaskFailure::NotFound),
            (texts::storage_missing("nope"), TaskFailure::NotFound),
            (
                texts::volume_missing("local:backup/x"),
                TaskFailure::NotFound,
            ),
            (
                texts::cant_find_file("local:backup/x"),
                TaskFailure::NotFound,
            ),
            (
                texts::locked("backup"),
                TaskFailure::Locked {
                    lock: "backup".into(),
                },
            ),
            (
                texts::lock_timeout(&lock),
                TaskFailure::LockTimeout {
                    lock_file: lock.clone(),
                },
            ),
            (
                "command 'x' failed: got timeout".into(),
                TaskFailure::Timeout,
            ),
            ("boom".into(), TaskFailure::Other),
        ];
        for (text, kind) in cases {
            for t in [text.clone(), texts::unable_to_restore(101, &text)] {
                assert_eq!(TaskFailure::of(&t), kind, "{t}");
                let e = classify(500, "first line", &body(&format!("{t}\n")));
                let want = match kind.clone() {
                    TaskFailure::LockTimeout { lock_file } => ApiError::LockTimeout {
                        lock_file,
                        message: t.clone(),
                    },
                    TaskFailure::Locked { lock } => ApiError::Locked {
                        lock,
                        message: t.clone(),
                    },
                    TaskFailure::NotFound => ApiError::NotFound { message: t.clone() },
                    TaskFailure::ConfigModified => ApiError::ConfigModified { message: t.clone() },
                    TaskFailure::AlreadyRunning => ApiError::AlreadyRunning { message: t.clone() },
                    TaskFailure::NotRunning => ApiError::NotRunning { message: t.clone() },
                    TaskFailure::AlreadyAtSize => ApiError::AlreadyAtSize { message: t.clone() },
                    TaskFailure::CannotShrink => ApiError::CannotShrink { message: t.clone() },
                    TaskFailure::AlreadyExists => ApiError::AlreadyExists { message: t.clone() },
                    TaskFailure::NoQuorum => ApiError::NoQuorum { message: t.clone() },
                    TaskFailure::BridgeMissing { .. }
                    | TaskFailure::Timeout
                    | TaskFailure::Other => ApiError::Server {
                        status: 500,
                        message: t.clone(),
                    },
                };
                assert_eq!(e, want, "{t}");
                // `NotFound` has no status of its own (it may come as 404 or 500).
                let status = (!matches!(e, ApiError::NotFound { .. })).then_some(500);
                assert_eq!(e.status(), status, "{t}");
                // Named or not, a plain 500 is transient only as a lock timeout.
                assert_eq!(
                    e.is_transient(),
                    matches!(e, ApiError::LockTimeout { .. }),
                    "{t}"
                );
            }
        }
        // A failed fork stays the transient `Server`, whatever else the text says.
        let e = classify(
            500,
            "x",
            &body(&format!(
                "{} - CT 101 already running\n",
                texts::NO_WORKER_UPID
            )),
        );
        assert!(
            matches!(e, ApiError::Server { .. }) && e.is_transient(),
            "{e:?}"
        );
        // The same texts with another status are not reinterpreted.
        assert!(matches!(
            classify(400, "x", &body(texts::ALREADY_AT_SIZE)),
            ApiError::Param { .. }
        ));
        // `nextid`'s field error stays a parameter error.
        let b = serde_json::json!({"data": null, "message": "Parameter verification failed.\n",
            "errors": {"vmid": format!("{}\n", texts::vmid_in_use(123))}});
        assert!(matches!(
            classify(400, "Parameter verification failed.", b.to_string().as_bytes()),
            ApiError::Param { errors, .. } if errors["vmid"] == "VM 123 already exists"
        ));
        // The literal texts, as PVE writes them (reference §3.2, §5, §6.1, §0, §4).
        assert_eq!(
            texts::CONFIG_MODIFIED,
            "detected modified configuration - file changed by other user? Try again."
        );
        assert_eq!(texts::already_running(7), "CT 7 already running");
        assert_eq!(texts::not_running(7), "CT 7 not running");
        assert_eq!(texts::vm_not_running(7), "VM 7 not running");
        assert_eq!(
            texts::lock_timeout(&texts::config_lock_file(7)),
            "can't lock file '/run/lock/lxc/pve-config-7.lock' - got timeout"
        );
        assert_eq!(texts::locked("create"), "CT is locked (create)");
        assert_eq!(
            texts::no_config("pve", 7),
            "Configuration file 'nodes/pve/lxc/7.conf' does not exist"
        );
        assert_eq!(
            texts::already_exists_on_node(7, "pve"),
            "CT 7 already exists on node 'pve'"
        );
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
        // pveproxy's hop to pvedaemon timed out: the work may be done, the answer is lost.
        let e = classify(595, "Connection timed out", b"");
        assert_eq!(
            e,
            ApiError::AnswerLost {
                status: 595,
                message: "Connection timed out".into()
            }
        );
        assert!(e.is_transient());
        assert_eq!(e.status(), Some(595));
        assert!(e.to_string().contains("may have been performed"), "{e}");
        assert!(e.maybe_performed());
        assert!(!classify(503, "Service Unavailable", b"").maybe_performed());
        let m = "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\n";
        assert!(!classify(500, "x", &body(m)).maybe_performed());
        // A 595 that carries a body is not the proxy's pseudo-status.
        assert!(matches!(
            classify(595, "x", &body("something\n")),
            ApiError::Server { status: 595, .. }
        ));
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

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        /// Whatever a server sends, classification never panics.
        #[test]
        fn classify_never_panics(status in 100u16..600, reason in "\\PC{0,80}", body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = classify(status, &reason, &body);
        }

        /// Each named text, wherever PVE's prefix and tail put it, keeps its variant.
        #[test]
        fn named_texts_survive_prefixes(which in 0usize..6, vmid in 100u32..1_000_000_000, prefix in "[a-z ]{0,20}", tail in "( - [a-z]{1,10})?") {
            let (text, ok): (String, fn(&ApiError) -> bool) = match which {
                0 => (texts::CONFIG_MODIFIED.into(), |e| matches!(e, ApiError::ConfigModified { .. })),
                1 => (texts::already_running(vmid), |e| matches!(e, ApiError::AlreadyRunning { .. })),
                2 => (texts::not_running(vmid), |e| matches!(e, ApiError::NotRunning { .. })),
                3 => (texts::ALREADY_AT_SIZE.into(), |e| matches!(e, ApiError::AlreadyAtSize { .. })),
                4 => (texts::CANNOT_SHRINK.into(), |e| matches!(e, ApiError::CannotShrink { .. })),
                _ => (texts::already_exists_on_node(vmid, "pve"), |e| matches!(e, ApiError::AlreadyExists { .. })),
            };
            let msg = format!("{prefix}{text}{tail}");
            let e = classify(500, "", serde_json::json!({ "data": null, "message": format!("{msg}\n") }).to_string().as_bytes());
            prop_assert!(ok(&e), "{msg:?} -> {e:?}");
            prop_assert!(!e.is_transient());
            let kind = TaskFailure::of(&msg);
            prop_assert!(!matches!(kind, TaskFailure::Other | TaskFailure::NotFound), "{msg:?} -> {kind:?}");
        }

        /// `cluster not ready - no quorum?`, however PVE prefixes it, is `NoQuorum`: transient,
        /// a 500, and the same kind inside a task's exit status.
        #[test]
        fn no_quorum_survives_prefixes(prefix in "[a-z0-9 ]{0,30}( - )?", tail in "(\n[a-z ]{0,10})?") {
            let msg = format!("{prefix}{}{tail}", texts::NO_QUORUM);
            let e = classify(500, "", serde_json::json!({ "data": null, "message": format!("{msg}\n") }).to_string().as_bytes());
            prop_assert!(matches!(e, ApiError::NoQuorum { .. }), "{msg:?} -> {e:?}");
            prop_assert!(e.is_transient());
            prop_assert_eq!(e.status(), Some(500));
            prop_assert_eq!(TaskFailure::of(&msg), TaskFailure::NoQuorum);
        }

        #[test]
        fn task_failure_never_panics(text in "\\PC{0,200}") {
            let _ = TaskFailure::of(&text);
        }

        #[test]
        fn classify_json_messages_never_panic(status in 400u16..600, msg in "\\PC{0,200}") {
            let body = serde_json::json!({ "data": null, "message": msg, "errors": { "x": msg } }).to_string();
            let e = classify(status, "", body.as_bytes());
            let _ = e.to_string();
            let _ = e.is_transient();
        }
    }
}
