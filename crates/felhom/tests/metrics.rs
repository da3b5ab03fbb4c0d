//! The Prometheus exposition after real jobs against the simulator: `promtool check metrics`
//! (Debian's `prometheus` package; `scripts/test` installs it) accepts it, every family has
//! samples, and names and labels follow the conventions (counters `_total`, durations
//! `_seconds`, no raw VMID or node in a label). The jobs run in this process through
//! felhom-core, as the agent runs them, so the process-global registry is the one rendered.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is needed to check the metrics exposition and could not be run ({e}): \
             install Debian's `prometheus` package (scripts/test does, as root)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// `name{labels} value` → (name, [(label, value)]).
fn sample(line: &str) -> (String, Vec<(String, String)>) {
    let (head, _) = line.rsplit_once(' ').unwrap();
    let Some((name, rest)) = head.split_once('{') else {
        return (head.to_string(), Vec::new());
    };
    let labels = rest.trim_end_matches('}');
    let re = regex::Regex::new(r#"([a-z_]+)="((?:[^"\\]|\\.)*)""#).unwrap();
    let pairs = re
        .captures_iter(labels)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    (name.to_string(), pairs)
}

#[test]
fn exposition_after_real_jobs_passes_promtool_and_the_conventions() {
    // Lock timeouts on a fifth of the mutating requests: steps retry, so the retry and
    // lock-timeout counters have samples too (seeded: the same faults every run).
    let sim = Sim::with("lock500=0.2,seed=7", 0.02);
    let a = sim.write_spec("a.toml", &spec("metrics-a", "1301", ""));
    let b = sim.write_spec("b.toml", &spec("metrics-b", "1302", MOUNT));
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let cfg = felhom_core::config::Config::parse(&sim.config, &text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let f = Arc::new(felhom_core::ops::Felhom::open(cfg).unwrap());
        let mut specs = felhom_core::spec::GuestSpec::load_many(&a).unwrap();
        specs.extend(felhom_core::spec::GuestSpec::load_many(&b).unwrap());
        let reports = f
            .apply(specs, false, Arc::new(felhom_core::job::Quiet))
            .await
            .unwrap();
        for r in &reports {
            assert_eq!(r.outcome.exit_code(), 0, "{reports:?}");
        }
        let torn = f
            .teardown(
                vec![pve_api::Vmid::try_from(1302).unwrap()],
                Arc::new(felhom_core::job::Quiet),
            )
            .await
            .unwrap();
        assert_eq!(torn[0].outcome.exit_code(), 0, "{torn:?}");
    });
    // What the agent sets.
    felhom_core::metrics::set_guests_by_state(&[("running", 1), ("absent", 1)]);
    felhom_core::metrics::set_drift(0);

    let text = felhom_core::metrics::encode();
    let (ok, said) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics:\n{said}\n--- exposition:\n{text}"
    );

    // Every family declared has samples.
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.push((name.to_string(), kind.to_string()));
        }
    }
    let samples: Vec<(String, Vec<(String, String)>)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(sample)
        .collect();
    for (name, kind) in &types {
        assert!(name.starts_with("felhom_"), "{name}");
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name} without _total"),
            "histogram" => assert!(name.ends_with("_seconds"), "histogram {name}: unit?"),
            "gauge" => assert!(!name.ends_with("_total"), "gauge {name} named as a counter"),
            other => panic!("{name}: unexpected type {other}"),
        }
        assert!(
            samples.iter().any(|(s, _)| s.starts_with(name.as_str())),
            "{name} has no sample after real jobs:\n{text}"
        );
    }
    for want in [
        "felhom_jobs_total",
        "felhom_step_duration_seconds",
        "felhom_step_retries_total",
        "felhom_pve_lock_timeouts_total",
        "felhom_pve_requests_total",
        "felhom_pve_request_duration_seconds",
        "felhom_pve_task_expected_duration_seconds",
        "felhom_guests",
        "felhom_guests_drifted",
    ] {
        assert!(types.iter().any(|(n, _)| n == want), "{want} missing");
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                let (n, ls) = sample(l);
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(a, b)| a == k && b == v))
            })
            .and_then(|l| l.rsplit_once(' ').unwrap().1.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        value(
            "felhom_jobs_total",
            &[("kind", "bringup"), ("outcome", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "felhom_jobs_total",
            &[("kind", "teardown"), ("outcome", "succeeded")]
        ),
        1.0
    );
    assert!(
        value("felhom_pve_lock_timeouts_total", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            "felhom_pve_requests_total",
            &[
                ("endpoint", "GET /nodes/{node}/lxc/{vmid}/config"),
                ("status", "200")
            ]
        ) >= 2.0,
        "{text}"
    );
    assert!(
        value("felhom_step_duration_seconds_count", &[("step", "restore")]) >= 2.0,
        "{text}"
    );
    assert!(
        value(
            "felhom_pve_task_expected_duration_seconds",
            &[("task_type", "vzrestore"), ("bound", "upper")]
        ) > 0.0,
        "{text}"
    );
    // Bounded labels: no VMID, no node name, no UPID in any label value.
    for (name, labels) in &samples {
        for (k, v) in labels {
            for raw in ["1301", "1302", "UPID", "/pve/", "metrics-a", "metrics-b"] {
                assert!(!v.contains(raw), "{name} {k}={v:?} carries a raw value");
            }
        }
    }
}
