//! API-token authentication (reference §0): `Authorization: PVEAPIToken=user@realm!id=secret`.
//! The secret is held in a [`Secret`], which never prints, is never copied and is wiped
//! from memory when dropped.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

/// `user@realm!tokenid`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenId {
    user: String,
    realm: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid API token id: {0}")]
pub struct TokenIdError(String);

impl TokenId {
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn realm(&self) -> &str {
        &self.realm
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `user@realm`, the owning user.
    pub fn userid(&self) -> String {
        format!("{}@{}", self.user, self.realm)
    }
}

impl FromStr for TokenId {
    type Err = TokenIdError;
    fn from_str(s: &str) -> Result<Self, TokenIdError> {
        let err = |why: &str| TokenIdError(format!("{why} (expected user@realm!tokenid)"));
        let (userid, name) = s.split_once('!').ok_or_else(|| err("no '!'"))?;
        let (user, realm) = userid.rsplit_once('@').ok_or_else(|| err("no '@'"))?;
        // pve-access-control: user names are any characters but ':' and whitespace (and '@'
        // only in the realm split); realm `[A-Za-z][A-Za-z0-9.\-_]+`; token `[A-Za-z][A-Za-z0-9.\-_]+`.
        let user_ok = !user.is_empty()
            && user.len() <= 60
            && !user
                .chars()
                .any(|c| c == ':' || c == '!' || c == '=' || c.is_whitespace() || c.is_control());
        let ident = |x: &str| {
            let mut b = x.bytes();
            matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
                && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
                && x.len() <= 64
        };
        if !user_ok {
            return Err(err("bad user name"));
        }
        if !ident(realm) {
            return Err(err("bad realm"));
        }
        if !ident(name) {
            return Err(err("bad token name"));
        }
        Ok(TokenId {
            user: user.into(),
            realm: realm.into(),
            name: name.into(),
        })
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}!{}", self.user, self.realm, self.name)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// A token secret. `Debug` and `Display` print `<redacted>`; only [`Secret::expose`] gives the
/// value, and only the transport calls it (to build the header). Its bytes are overwritten
/// with zeros when it is dropped, and it is not `Clone`: there is one copy, shared by
/// reference (an [`ApiToken`] holds it in an `Arc`).
///
/// ```compile_fail
/// let s = pve_api::Secret::new("x".into());
/// let copy = s.clone(); // Secret is not Clone
/// ```
#[derive(PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A token id with its secret. Cloning it shares the one [`Secret`], never copies it.
#[derive(Clone)]
pub struct ApiToken {
    id: TokenId,
    secret: Arc<Secret>,
}

impl ApiToken {
    pub fn new(id: TokenId, secret: Secret) -> ApiToken {
        ApiToken::shared(id, Arc::new(secret))
    }
    /// A token over a secret held elsewhere too (felhom's secret read once at startup).
    pub fn shared(id: TokenId, secret: Arc<Secret>) -> ApiToken {
        ApiToken { id, secret }
    }
    pub fn id(&self) -> &TokenId {
        &self.id
    }
    /// The `Authorization` header value, wiped when dropped. Callers must mark the header
    /// sensitive.
    pub(crate) fn header_value(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("PVEAPIToken={}={}", self.id, self.secret.expose()))
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids() {
        let t: TokenId = "felhom@pve!agent".parse().unwrap();
        assert_eq!(t.userid(), "felhom@pve");
        assert_eq!(t.to_string(), "felhom@pve!agent");
        for bad in [
            "felhom@pve",
            "felhom!agent",
            "@pve!a",
            "f@pve!1a",
            "f@pve!a b",
            "f@p ve!a",
            "f=x@pve!a",
        ] {
            assert!(bad.parse::<TokenId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn token_id_edges() {
        let t: TokenId = "first.last@my-realm!tok_1.a-b".parse().unwrap();
        assert_eq!(
            (t.user(), t.realm(), t.name()),
            ("first.last", "my-realm", "tok_1.a-b")
        );
        // The user part may hold '@' (an email-like user name); the realm is after the last '@'.
        let t: TokenId = "me@example.com@pve!a".parse().unwrap();
        assert_eq!((t.user(), t.realm()), ("me@example.com", "pve"));
        for bad in [
            "a@pve!",
            "a@pve!-x",
            "a@pve!x!y",
            "a@!x",
            "a@1pve!x",
            "a:b@pve!x",
            "a@pve!x\n",
        ] {
            assert!(bad.parse::<TokenId>().is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", t), "TokenId(me@example.com@pve!a)");
    }

    #[test]
    fn secret_never_prints() {
        let tok = ApiToken::new(
            "a@pve!b".parse().unwrap(),
            Secret::new("s3cr3t-value".into()),
        );
        let shown = format!("{tok:?} {} {:?}", tok.secret, tok.secret);
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(tok.header_value().ends_with("=s3cr3t-value"));
    }
}
