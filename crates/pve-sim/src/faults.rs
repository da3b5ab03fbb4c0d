//! Injected faults: `lock500=0.2,task_fail:restore=0.05,http503=0.01,latency=20ms,seed=7`.
//!
//! `post_effect_595=P` (all mutating guest requests) or `post_effect_595:<kind>=P` (one kind
//! of request, see [`POST_EFFECT_KINDS`]) is the one fault that strikes *after* the work: the
//! request is performed in full (config written, volume allocated, task started) and then
//! answered `595` with an empty body. That is what a client sees when pveproxy's 30 s hop to
//! pvedaemon times out while pvedaemon goes on (pve-http-server `src/PVE/APIServer/AnyEvent.pm`
//! `proxy_request`: `http_request(... timeout => 30 ...)`, the AnyEvent::HTTP pseudo-status
//! passed to the client as is; audit top #1).

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FaultSpec {
    /// Probability that a mutating guest request fails with the config-lock timeout 500.
    pub lock500: f64,
    /// Probability that a request fails with 503 (proxy/daemon unavailable).
    pub http503: f64,
    /// Per task type (`vzrestore`, `vzstart`, `resize`, …): probability that it fails.
    pub task_fail: Vec<(String, f64)>,
    /// Added to every request.
    pub latency: Duration,
    /// Replaces the modelled DHCP delay after a start (still scaled by `time_scale`).
    pub dhcp_delay: Option<Duration>,
    /// Per request kind (`*` = every kind, [`POST_EFFECT_KINDS`]): probability that the
    /// request is performed and then answered 595 with an empty body.
    pub post_effect_595: Vec<(String, f64)>,
    /// Seed for the fault RNG, so runs are repeatable.
    pub seed: Option<u64>,
    /// `node_down:<name>`: nodes down from the start (also set and cleared at run time
    /// through `POST /felhom-sim/faults`).
    pub node_down: Vec<String>,
    /// `no_quorum`: the cluster has lost quorum from the start (also at run time).
    pub no_quorum: bool,
    /// `taken_before_create=<vmid>`: the first create or restore at that VMID finds a guest
    /// someone else (not felhom) made there a moment before: a config without felhom's
    /// marker, on the request's node. The race a VMID picked from a read a moment old can
    /// lose; PVE refuses the create (`CT <vmid> already exists on node …`).
    pub taken_before_create: Vec<u32>,
}

/// The cluster faults in force now: what `--faults` set at start, changed at run time by
/// `POST /felhom-sim/faults` (`admin.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFaults {
    pub down: std::collections::BTreeSet<String>,
    pub no_quorum: bool,
}

/// One cluster fault as the side channel and `--faults` name it: `node_down:<name>` or
/// `no_quorum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterFault {
    NodeDown(String),
    NoQuorum,
}

impl FromStr for ClusterFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "no_quorum" || s == "no_quorum=1" {
            return Ok(ClusterFault::NoQuorum);
        }
        let name = s
            .strip_prefix("node_down:")
            .or_else(|| s.strip_prefix("node_down="))
            .ok_or_else(|| {
                format!("cluster fault '{s}' must be node_down:<node name> or no_quorum")
            })?;
        if name.is_empty() {
            return Err("node_down: wants a node name (node_down:<name>)".into());
        }
        Ok(ClusterFault::NodeDown(name.to_string()))
    }
}

impl ClusterFaults {
    /// Set (`on`) or clear a fault.
    pub fn apply(&mut self, f: &ClusterFault, on: bool) {
        match f {
            ClusterFault::NodeDown(n) if on => {
                self.down.insert(n.clone());
            }
            ClusterFault::NodeDown(n) => {
                self.down.remove(n);
            }
            ClusterFault::NoQuorum => self.no_quorum = on,
        }
    }
}

/// The kinds of mutating guest request `post_effect_595:<kind>` can name.
pub const POST_EFFECT_KINDS: &[&str] = &[
    "restore", "config", "resize", "start", "stop", "shutdown", "reboot", "destroy",
];

fn task_type_alias(t: &str) -> &str {
    match t {
        "restore" => "vzrestore",
        "create" => "vzcreate",
        "start" => "vzstart",
        "stop" => "vzstop",
        "shutdown" => "vzshutdown",
        "destroy" => "vzdestroy",
        "clone" => "vzclone",
        "template" => "vztemplate",
        other => other,
    }
}

impl FaultSpec {
    pub fn task_fail_probability(&self, task_type: &str) -> f64 {
        self.task_fail
            .iter()
            .filter(|(t, _)| t == task_type)
            .map(|(_, p)| *p)
            .fold(0.0, f64::max)
    }

    /// The probability of a post-effect 595 for a request of `kind`.
    pub fn post_effect_probability(&self, kind: &str) -> f64 {
        self.post_effect_595
            .iter()
            .filter(|(k, _)| k == "*" || k == kind)
            .map(|(_, p)| *p)
            .fold(0.0, f64::max)
    }
}

fn prob(key: &str, v: &str) -> Result<f64, String> {
    let p: f64 = v
        .parse()
        .map_err(|_| format!("{key}: '{v}' is not a probability"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{key}: probability must be within 0..1, got {p}"))
    }
}

/// `20ms`, `1.5s`, `2s`.
fn duration(key: &str, v: &str) -> Result<Duration, String> {
    let bad = || format!("{key}: '{v}' must be a duration like 20ms or 1.5s");
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * scale))
}

impl FromStr for FaultSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut f = FaultSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.starts_with("node_down") || part.starts_with("no_quorum") {
                match part.parse::<ClusterFault>()? {
                    ClusterFault::NodeDown(n) => f.node_down.push(n),
                    ClusterFault::NoQuorum => f.no_quorum = true,
                }
                continue;
            }
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault '{part}' must be key=value"))?;
            match k {
                "lock500" => f.lock500 = prob(k, v)?,
                "http503" => f.http503 = prob(k, v)?,
                "post_effect_595" => f.post_effect_595.push(("*".into(), prob(k, v)?)),
                k if k.starts_with("post_effect_595:") => {
                    let kind = &k["post_effect_595:".len()..];
                    if !POST_EFFECT_KINDS.contains(&kind) {
                        return Err(format!(
                            "post_effect_595: unknown request kind '{kind}' (one of {})",
                            POST_EFFECT_KINDS.join(", ")
                        ));
                    }
                    f.post_effect_595.push((kind.to_string(), prob(k, v)?));
                }
                "seed" => f.seed = Some(v.parse().map_err(|_| format!("seed: '{v}' is not a number"))?),
                "latency" => f.latency = duration(k, v)?,
                "dhcp_delay" => f.dhcp_delay = Some(duration(k, v)?),
                "taken_before_create" => f.taken_before_create.push(
                    v.parse()
                        .map_err(|_| format!("taken_before_create: '{v}' is not a VMID"))?,
                ),
                k if k.starts_with("task_fail:") => {
                    let t = task_type_alias(&k["task_fail:".len()..]).to_string();
                    let known = ["vzrestore", "vzcreate", "vzstart", "vzstop", "vzshutdown", "vzdestroy", "resize", "vzclone", "vztemplate"];
                    if !known.contains(&t.as_str()) {
                        return Err(format!("task_fail: unknown task type '{t}' (one of restore, start, stop, shutdown, destroy, resize, clone, template)"));
                    }
                    f.task_fail.push((t, prob(k, v)?));
                }
                other => return Err(format!("unknown fault '{other}' (known: lock500, http503, post_effect_595[:<kind>], task_fail:<type>, latency, dhcp_delay, taken_before_create, seed, node_down:<node>, no_quorum)")),
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse() {
        let f: FaultSpec = "lock500=0.2,task_fail:restore=0.05,latency=20ms,seed=7"
            .parse()
            .unwrap();
        assert_eq!(f.lock500, 0.2);
        assert_eq!(f.task_fail_probability("vzrestore"), 0.05);
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.seed, Some(7));
        let f: FaultSpec = "dhcp_delay=1.5s,latency=2ms".parse().unwrap();
        assert_eq!(f.dhcp_delay, Some(Duration::from_millis(1500)));
        assert!("latency=20".parse::<FaultSpec>().is_err());
        assert!("lock501=1"
            .parse::<FaultSpec>()
            .unwrap_err()
            .contains("lock501"));
        assert!("lock500=2".parse::<FaultSpec>().is_err());
        assert!("task_fail:boot=0.1".parse::<FaultSpec>().is_err());
        assert_eq!("".parse::<FaultSpec>().unwrap(), FaultSpec::default());
        let f: FaultSpec = "post_effect_595:resize=1,post_effect_595=0.1"
            .parse()
            .unwrap();
        assert_eq!(f.post_effect_probability("resize"), 1.0);
        assert_eq!(f.post_effect_probability("start"), 0.1);
        let f: FaultSpec = "post_effect_595:start=0.5".parse().unwrap();
        assert_eq!(f.post_effect_probability("start"), 0.5);
        assert_eq!(f.post_effect_probability("restore"), 0.0);
        assert!("post_effect_595:boot=1"
            .parse::<FaultSpec>()
            .unwrap_err()
            .contains("boot"));
        assert!("post_effect_595=1.5".parse::<FaultSpec>().is_err());
        let f: FaultSpec = "node_down:pve2,no_quorum,seed=1".parse().unwrap();
        assert_eq!(f.node_down, vec!["pve2".to_string()]);
        assert!(f.no_quorum);
        assert!("node_down:".parse::<FaultSpec>().is_err());
        assert!("no_quorumx".parse::<FaultSpec>().is_err());
    }
}
