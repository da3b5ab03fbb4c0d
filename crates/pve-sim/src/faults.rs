//! Injected faults: `lock500=0.2,task_fail:restore=0.05,http503=0.01,latency=20ms,seed=7`.

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
    /// Seed for the fault RNG, so runs are repeatable.
    pub seed: Option<u64>,
}

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
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault '{part}' must be key=value"))?;
            match k {
                "lock500" => f.lock500 = prob(k, v)?,
                "http503" => f.http503 = prob(k, v)?,
                "seed" => f.seed = Some(v.parse().map_err(|_| format!("seed: '{v}' is not a number"))?),
                "latency" => f.latency = duration(k, v)?,
                "dhcp_delay" => f.dhcp_delay = Some(duration(k, v)?),
                k if k.starts_with("task_fail:") => {
                    let t = task_type_alias(&k["task_fail:".len()..]).to_string();
                    let known = ["vzrestore", "vzcreate", "vzstart", "vzstop", "vzshutdown", "vzdestroy", "resize", "vzclone", "vztemplate"];
                    if !known.contains(&t.as_str()) {
                        return Err(format!("task_fail: unknown task type '{t}' (one of restore, start, stop, shutdown, destroy, resize, clone, template)"));
                    }
                    f.task_fail.push((t, prob(k, v)?));
                }
                other => return Err(format!("unknown fault '{other}' (known: lock500, http503, task_fail:<type>, latency, dhcp_delay, seed)")),
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
    }
}
