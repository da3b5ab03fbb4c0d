//! Step 4, settings: what the customer bought beyond the network — `cores`, `memory`,
//! `swap`, `onboot`, `nameserver`, `searchdomain` — is what the spec says. The restore
//! request already carries them (PVE takes every config key at restore and lets the request
//! win over the archive: pve-container `src/PVE/LXC/Create.pm` `sanitize_and_merge_config`
//! fills only keys the request left undefined), so after a fresh restore this step only
//! observes. It acts when the guest drifted (a repair job): one `PUT config` of the keys
//! that differ, with the digest of the config it was decided on.
//!
//! A key the spec does not set is not felhom's: the guest keeps what the golden has. On a
//! running guest PVE applies `cores`, `memory`, `swap`, `onboot` at once; `nameserver` and
//! `searchdomain` reach the guest at its next start (reference §3.2).

use serde_json::{json, Value};

use super::identity::modified_is_not_yet;
use super::{owned_config, spec, Drift, GuestView, PlanCx};
use crate::job::{JobCx, Observed, StepError};
use crate::spec::GuestSpec;

pub(super) async fn observe(cx: &JobCx) -> Result<Observed, StepError> {
    let s = spec(cx)?;
    let cfg = owned_config(cx, cx.vmid()?).await?;
    if differing(&cfg, s).is_empty() {
        Ok(Observed::Done(intent_of(s)))
    } else {
        Ok(Observed::NotDone)
    }
}

pub(super) fn intent(cx: &JobCx) -> Result<Value, StepError> {
    Ok(intent_of(spec(cx)?))
}

fn intent_of(s: &GuestSpec) -> Value {
    let map: serde_json::Map<String, Value> = s
        .settings()
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    json!(map)
}

pub(super) async fn act(cx: &JobCx) -> Result<(), StepError> {
    let s = spec(cx)?;
    let vmid = cx.vmid()?;
    let cfg = owned_config(cx, vmid).await?;
    let params: Vec<(String, String)> = differing(&cfg, s)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if params.is_empty() {
        return Ok(());
    }
    cx.client
        .lxc_update_config(&cx.node, vmid, &params, cfg.digest.as_deref())
        .await
        .map_err(modified_is_not_yet)
}

/// The spec's settings whose value on the guest differs: (key, wanted value).
fn differing(cfg: &pve_api::LxcConfig, s: &GuestSpec) -> Vec<(&'static str, String)> {
    s.settings()
        .into_iter()
        .filter(|(k, want)| have(cfg, k) != *want)
        .collect()
}

/// A setting as the guest has it, in the form [`GuestSpec::settings`] writes (absent keys
/// read as PVE's defaults; lists re-joined with one space).
fn have(cfg: &pve_api::LxcConfig, key: &str) -> String {
    let raw = cfg.get_string(key);
    match key {
        "onboot" => match raw.as_deref() {
            Some("1" | "on" | "yes" | "true") => "1".into(),
            _ => "0".into(),
        },
        // PVE's defaults (apidata.js): 512 MiB of each.
        "memory" | "swap" => raw.unwrap_or_else(|| "512".into()),
        "nameserver" => raw
            .unwrap_or_default()
            .split([' ', ',', ';'])
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<std::net::IpAddr>()
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|_| a.to_string())
            })
            .collect::<Vec<_>>()
            .join(" "),
        "searchdomain" => raw
            .unwrap_or_default()
            .split([' ', ',', ';'])
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        _ => raw.unwrap_or_default(),
    }
}

/// The settings as `plan` and the restore step's plan line name them.
pub(super) fn describe(s: &GuestSpec) -> String {
    s.settings()
        .into_iter()
        .map(|(k, v)| match k {
            "memory" | "swap" => format!("{k} {v} MiB"),
            "onboot" => format!("onboot {}", if v == "1" { "yes" } else { "no" }),
            _ => format!("{k} {v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn plan(p: &PlanCx) -> Vec<String> {
    if p.spec.settings().is_empty() {
        return Vec::new();
    }
    vec![format!(
        "verify {} (set at restore; the golden's values for the rest)",
        describe(p.spec)
    )]
}

/// Every setting the spec gives, against the guest's config.
pub(super) fn drift(v: &GuestView) -> Vec<Drift> {
    let Some(s) = v.spec else {
        return Vec::new();
    };
    differing(v.cfg, s)
        .into_iter()
        .map(|(k, want)| {
            let have = have(v.cfg, k);
            Drift::new(k, want, have)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> GuestSpec {
        let text = crate::adversarial::base_spec(
            "acme",
            "1300",
            "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst",
            extra,
        );
        GuestSpec::parse_many(&text).unwrap().remove(0)
    }

    fn cfg(pairs: &[(&str, Value)]) -> pve_api::LxcConfig {
        pve_api::LxcConfig {
            values: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            digest: None,
        }
    }

    #[test]
    fn only_what_the_spec_sets_is_compared_in_pves_form() {
        let s = spec("cores = 2\nmemory = 1024\nonboot = false\nnameserver = [\"2001:DB8::53\", \"192.0.2.53\"]\nsearchdomain = [\"a.example\"]\n");
        // Numbers come back as JSON numbers, lists with PVE's other separators.
        let same = cfg(&[
            ("cores", json!(2)),
            ("memory", json!(1024)),
            ("swap", json!(4096)),
            ("nameserver", json!("2001:db8::53,192.0.2.53")),
            ("searchdomain", json!("a.example")),
        ]);
        assert!(
            differing(&same, &s).is_empty(),
            "{:?}",
            differing(&same, &s)
        );
        let changed = cfg(&[
            ("cores", json!(4)),
            ("memory", json!(1024)),
            ("onboot", json!(1)),
            ("nameserver", json!("192.0.2.53 2001:db8::53")),
        ]);
        let keys: Vec<&str> = differing(&changed, &s).iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec!["cores", "onboot", "nameserver", "searchdomain"]);
    }

    #[test]
    fn absent_keys_read_as_pves_defaults() {
        let s = spec("memory = 512\nswap = 512\nonboot = false\n");
        assert!(differing(&cfg(&[]), &s).is_empty());
        let s = spec("cores = 1\n");
        assert_eq!(differing(&cfg(&[]), &s), vec![("cores", "1".to_string())]);
    }
}
