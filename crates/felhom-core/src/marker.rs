//! The ownership marker felhom writes into a guest's `description` at restore time.
//!
//! PVE itself is the shared truth across agents (docs/lessons.md, "Scale beyond one host"); the
//! marker is how any felhom process proves a guest is its own before it stops or destroys
//! it. A guest without it, or with another job's marker, is never touched by rollback.
//!
//! The marker is one line:
//! `felhom: job=<id> customer=<id> name=<name> state=<provisioning|provisioned>`.
//! `customer` and `name` are the guest's identity; markers written before identities existed
//! have no `name` (the guest's name is then its hostname). A marker alone proves nothing
//! (anyone with `VM.Config.Options` can write a description): `apply` also checks the MAC
//! and rootfs volume felhom recorded for the guest.
//! PVE returns the description with a trailing `\n` per line (reference §3.1), so parsing is
//! line-based and tolerant of that.

use std::fmt;

pub const PREFIX: &str = "felhom:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub job: String,
    pub customer: String,
    /// The guest's name within its customer (`None` in markers older than identities).
    pub name: Option<String>,
    pub state: MarkerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerState {
    Provisioning,
    Provisioned,
}

impl MarkerState {
    fn as_str(self) -> &'static str {
        match self {
            MarkerState::Provisioning => "provisioning",
            MarkerState::Provisioned => "provisioned",
        }
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX} job={} customer={}", self.job, self.customer)?;
        if let Some(name) = &self.name {
            write!(f, " name={name}")?;
        }
        write!(f, " state={}", self.state.as_str())
    }
}

impl Marker {
    /// Find felhom's marker in a description, if there is one.
    pub fn find(description: &str) -> Option<Marker> {
        description.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(PREFIX)?;
            let mut job = None;
            let mut customer = None;
            let mut name = None;
            let mut state = None;
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("job", v)) => job = Some(v.to_string()),
                    Some(("customer", v)) => customer = Some(v.to_string()),
                    Some(("name", v)) => name = Some(v.to_string()),
                    Some(("state", "provisioning")) => state = Some(MarkerState::Provisioning),
                    Some(("state", "provisioned")) => state = Some(MarkerState::Provisioned),
                    _ => {}
                }
            }
            Some(Marker {
                job: job?,
                customer: customer?,
                name,
                state: state?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_pve_trailing_newline() {
        let m = Marker {
            job: "j-1".into(),
            customer: "acme".into(),
            name: Some("web1".into()),
            state: MarkerState::Provisioned,
        };
        let desc = format!("{m}\n");
        assert_eq!(Marker::find(&desc), Some(m));
        assert_eq!(Marker::find("some other guest\n"), None);
        let old = Marker::find("felhom: job=j-0 customer=acme state=provisioning\n").unwrap();
        assert_eq!(old.name, None, "markers older than identities still parse");
        assert_eq!(
            Marker::find("felhom: job=x\n"),
            None,
            "incomplete markers are not markers"
        );
    }
}
