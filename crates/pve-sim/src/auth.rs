//! Token authentication and privileges (reference §0, §8): the `PVEAPIToken` header, the
//! token secret, ACL evaluation along the path, and privilege separation (token ACLs ∩ the
//! owning user's privileges).

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::state::State;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    /// `user@realm`.
    pub userid: String,
    /// `user@realm!name` for token requests.
    pub token: Option<String>,
    pub privsep: bool,
}

impl Subject {
    /// Exactly `root@pam` without a token: PVE's root-only checks (a root token is not root).
    pub fn is_root(&self) -> bool {
        self.userid == "root@pam" && self.token.is_none()
    }
    /// The name in UPIDs: the token id for tokens.
    pub fn upid_user(&self) -> String {
        self.token.clone().unwrap_or_else(|| self.userid.clone())
    }
    pub fn token_name(&self) -> Option<String> {
        self.token
            .as_ref()
            .and_then(|t| t.split_once('!'))
            .map(|(_, n)| n.to_string())
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Why authentication failed (the 401 reason phrase).
pub enum AuthFailure {
    NoTicket,
    Failed,
}

/// `PVEAPIToken=user@realm!id=secret` (a space may stand for the first `=`); the value is
/// split at its last `=` (pve-access-control `verify_token`).
pub fn authenticate(state: &State, header: Option<&str>) -> Result<Subject, AuthFailure> {
    let Some(h) = header else {
        return Err(AuthFailure::NoTicket);
    };
    let rest = h
        .strip_prefix("PVEAPIToken=")
        .or_else(|| h.strip_prefix("PVEAPIToken "))
        .ok_or(AuthFailure::NoTicket)?;
    let (id, secret) = rest.rsplit_once('=').ok_or(AuthFailure::Failed)?;
    let token = state
        .tokens
        .iter()
        .find(|t| t.id == id)
        .ok_or(AuthFailure::Failed)?;
    // Constant-time-ish comparison of hashes; the secret never leaves this function.
    let given = hash_secret(secret);
    if given.len() != token.secret_sha256.len()
        || given
            .bytes()
            .zip(token.secret_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
    {
        return Err(AuthFailure::Failed);
    }
    let userid = id
        .split_once('!')
        .map(|(u, _)| u.to_string())
        .ok_or(AuthFailure::Failed)?;
    if !state.users.contains(&userid) {
        return Err(AuthFailure::Failed);
    }
    Ok(Subject {
        userid,
        token: Some(id.to_string()),
        privsep: token.privsep,
    })
}

fn prefixes(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        cur.push('/');
        cur.push_str(seg);
        out.push(cur.clone());
    }
    out
}

/// The privileges ACL entries for one subject (user or token id) give on `path`: the deepest
/// level with entries that apply (exact path, or a parent with propagate) wins.
fn acl_privs(state: &State, subject: &str, path: &str) -> BTreeSet<String> {
    let mut privs = BTreeSet::new();
    for p in prefixes(path) {
        let exact = p == path;
        let entries: Vec<_> = state
            .acl
            .iter()
            .filter(|a| a.subject == subject && a.path == p && (exact || a.propagate))
            .collect();
        if !entries.is_empty() {
            privs = entries
                .iter()
                .flat_map(|a| state.roles.get(&a.role).cloned().unwrap_or_default())
                .collect();
        }
    }
    // Pool ACLs apply to member guests (without propagation, reference §8).
    if let Some(vmid) = path
        .strip_prefix("/vms/")
        .and_then(|v| v.parse::<u32>().ok())
    {
        for (pool, members) in &state.pools {
            if members.contains(&vmid) {
                for a in state
                    .acl
                    .iter()
                    .filter(|a| a.subject == subject && a.path == format!("/pool/{pool}"))
                {
                    privs.extend(state.roles.get(&a.role).cloned().unwrap_or_default());
                }
            }
        }
    }
    privs
}

/// Effective privileges of `who` on `path`.
pub fn privileges(state: &State, who: &Subject, path: &str) -> BTreeSet<String> {
    if who.is_root() {
        return crate::state::ALL_PRIVS
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let user = if who.userid == "root@pam" {
        crate::state::ALL_PRIVS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        acl_privs(state, &who.userid, path)
    };
    match &who.token {
        Some(t) if who.privsep => {
            let tok = acl_privs(state, t, path);
            tok.intersection(&user).cloned().collect()
        }
        _ => user,
    }
}

pub fn has(state: &State, who: &Subject, path: &str, privilege: &str) -> bool {
    privileges(state, who, path).contains(privilege)
}

/// The paths `/access/permissions` reports without a `path` argument: the default top-level
/// paths plus every ACL path.
pub fn permission_paths(state: &State) -> BTreeSet<String> {
    let mut paths: BTreeSet<String> = [
        "/", "/access", "/nodes", "/pool", "/sdn", "/storage", "/vms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    paths.extend(state.acl.iter().map(|a| a.path.clone()));
    paths
}

/// Whether the privilege would propagate from `path` (the value `/access/permissions` shows).
pub fn propagates(state: &State, who: &Subject, path: &str) -> u8 {
    let subject = who.token.as_deref().unwrap_or(&who.userid);
    u8::from(
        state
            .acl
            .iter()
            .any(|a| a.subject == subject && a.path == path && a.propagate)
            || who.is_root(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{AclEntry, TokenDef};

    fn state() -> State {
        let mut s = State::bootstrap("pve");
        s.tokens.push(TokenDef {
            id: "felhom@pve!agent".into(),
            secret_sha256: hash_secret("s"),
            privsep: true,
        });
        s
    }

    #[test]
    fn privsep_is_an_intersection() {
        let mut s = state();
        let who = authenticate(&s, Some("PVEAPIToken=felhom@pve!agent=s"))
            .ok()
            .unwrap();
        assert!(has(&s, &who, "/vms/1200", "VM.Allocate"));
        // Narrow the token on /vms/1200: the deeper entry wins for the token.
        s.roles.insert("AuditOnly".into(), vec!["VM.Audit".into()]);
        s.acl.push(AclEntry {
            path: "/vms/1200".into(),
            subject: "felhom@pve!agent".into(),
            role: "AuditOnly".into(),
            propagate: true,
        });
        assert!(!has(&s, &who, "/vms/1200", "VM.Allocate"));
        assert!(has(&s, &who, "/vms/1200", "VM.Audit"));
        assert!(has(&s, &who, "/vms/1300", "VM.Allocate"));
        assert!(!who.is_root());
    }

    #[test]
    fn bad_secrets_fail() {
        let s = state();
        assert!(authenticate(&s, Some("PVEAPIToken=felhom@pve!agent=wrong")).is_err());
        assert!(authenticate(&s, Some("PVEAPIToken felhom@pve!agent=s")).is_ok());
        assert!(matches!(authenticate(&s, None), Err(AuthFailure::NoTicket)));
    }
}
