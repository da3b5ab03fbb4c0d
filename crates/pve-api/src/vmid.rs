//! `Vmid`: PVE's `pve-vmid` format, `^[1-9][0-9]{2,8}$` (100–999999999).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vmid(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VMID {0}: must be 100–999999999")]
pub struct VmidError(pub String);

impl Vmid {
    pub const MIN: u32 = 100;
    pub const MAX: u32 = 999_999_999;
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vmid {
    type Error = VmidError;
    fn try_from(n: u32) -> Result<Self, VmidError> {
        if (Self::MIN..=Self::MAX).contains(&n) {
            Ok(Vmid(n))
        } else {
            Err(VmidError(n.to_string()))
        }
    }
}

impl From<Vmid> for u32 {
    fn from(v: Vmid) -> u32 {
        v.0
    }
}

impl FromStr for Vmid {
    type Err = VmidError;
    fn from_str(s: &str) -> Result<Self, VmidError> {
        let ok = s.len() >= 3
            && s.len() <= 9
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0');
        if !ok {
            return Err(VmidError(s.chars().take(20).collect()));
        }
        s.parse::<u32>()
            .map_err(|_| VmidError(s.into()))
            .and_then(Vmid::try_from)
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bounds() {
        assert!(Vmid::try_from(99).is_err());
        assert!(Vmid::try_from(100).is_ok());
        assert!(Vmid::try_from(1_000_000_000).is_err());
        assert!("0100".parse::<Vmid>().is_err());
        assert!("12a".parse::<Vmid>().is_err());
        assert_eq!("1200".parse::<Vmid>().unwrap().get(), 1200);
        assert_eq!("999999999".parse::<Vmid>().unwrap().get(), 999_999_999);
        for bad in [
            "",
            "99",
            "1000000000",
            "+100",
            " 100",
            "100 ",
            "-100",
            "1e3",
        ] {
            assert!(bad.parse::<Vmid>().is_err(), "{bad:?}");
        }
        let v: Vmid = serde_json::from_str("101").unwrap();
        assert_eq!(v.to_string(), "101");
        assert_eq!(serde_json::to_string(&v).unwrap(), "101");
        assert!(serde_json::from_str::<Vmid>("99").is_err());
    }
}
