//! Validate requests against PVE's official API schema (`apidata.js` from pve-docs):
//! route existence, parameter names (with collapsed `net[n]`/`mp[n]` keys), types, enums,
//! patterns, lengths, and inline property-string formats.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

pub struct Schema {
    /// schema path → method → info
    pub endpoints: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub checks: usize,
    pub skipped_patterns: usize,
    pub failures: Vec<String>,
}

/// The schema's copy in the repository (`docs/pve-api-schema/`, provenance beside it). Tests
/// read nothing outside the repository, so there is no override pointing elsewhere.
pub fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/pve-api-schema/apidata.js")
}

impl Schema {
    pub fn load() -> Schema {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the PVE API schema at {} ({e}); it is part of the repository, \
                 see docs/pve-api-schema/PROVENANCE.md to restore or refresh it",
                path.display()
            )
        });
        let start = text.find('[').expect("apidata.js holds a JSON array");
        let end = text.trim_end().trim_end_matches(';').len();
        let tree: Value =
            serde_json::from_str(&text[start..end]).expect("apidata.js is JSON after its prefix");
        let mut endpoints = BTreeMap::new();
        fn walk(n: &Value, out: &mut BTreeMap<String, BTreeMap<String, Value>>) {
            if let (Some(path), Some(info)) = (n["path"].as_str(), n["info"].as_object()) {
                out.insert(
                    path.to_string(),
                    info.iter().map(|(m, i)| (m.clone(), i.clone())).collect(),
                );
            }
            for c in n["children"].as_array().into_iter().flatten() {
                walk(c, out);
            }
        }
        for n in tree.as_array().unwrap() {
            walk(n, &mut endpoints);
        }
        Schema { endpoints }
    }

    /// The schema path a concrete request path belongs to.
    pub fn match_path(&self, path: &str) -> Option<&str> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        self.endpoints
            .keys()
            .find(|p| {
                let ps: Vec<&str> = p.split('/').collect();
                ps.len() == segs.len()
                    && ps
                        .iter()
                        .zip(&segs)
                        .all(|(a, b)| a.starts_with('{') || a == b)
            })
            .map(String::as_str)
    }

    pub fn info(&self, method: &str, schema_path: &str) -> Option<&Value> {
        self.endpoints.get(schema_path)?.get(method)
    }

    /// The property names of an endpoint's answer (`returns`, or its array's `items`).
    pub fn return_properties(&self, method: &str, schema_path: &str) -> Vec<String> {
        let Some(r) = self.info(method, schema_path).map(|i| &i["returns"]) else {
            return Vec::new();
        };
        let obj = if r["type"] == "array" { &r["items"] } else { r };
        obj["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Validate one recorded request (method, concrete path, params).
    pub fn validate(
        &self,
        method: &str,
        path: &str,
        params: &BTreeMap<String, String>,
        t: &mut Tally,
    ) {
        let Some(sp) = self.match_path(path) else {
            t.failures
                .push(format!("{method} {path}: no such path in the schema"));
            return;
        };
        let Some(info) = self.info(method, sp) else {
            t.failures
                .push(format!("{method} {sp}: method not in the schema"));
            return;
        };
        t.checks += 1;
        let props = &info["parameters"]["properties"];
        let additional = info["parameters"]["additionalProperties"]
            .as_i64()
            .unwrap_or(0)
            == 1;
        for (k, v) in params {
            let collapsed = collapse(k);
            let Some(prop) = props.get(k).or_else(|| props.get(&collapsed)) else {
                t.checks += 1;
                if !additional {
                    t.failures.push(format!(
                        "{method} {sp}: parameter '{k}' is not in the schema"
                    ));
                }
                continue;
            };
            check_value(&format!("{method} {sp} {k}"), prop, v, t);
        }
        for (k, p) in props.as_object().into_iter().flatten() {
            if p["optional"].as_i64().unwrap_or(0) == 0 && !k.contains('[') {
                t.checks += 1;
                if !params.contains_key(k) {
                    t.failures
                        .push(format!("{method} {sp}: required parameter '{k}' missing"));
                }
            }
        }
    }
}

/// `net0` → `net[n]`, `mp12` → `mp[n]`.
fn collapse(k: &str) -> String {
    let base = k.trim_end_matches(|c: char| c.is_ascii_digit());
    if base.len() < k.len() {
        format!("{base}[n]")
    } else {
        k.to_string()
    }
}

fn check_value(what: &str, prop: &Value, v: &str, t: &mut Tally) {
    let mut subs: Vec<(String, Value, String)> = Vec::new();
    check_one(what, prop, v, t, &mut subs);
    for (w, p, val) in subs {
        check_value(&w, &p, &val, t);
    }
}

fn check_one(
    what: &str,
    prop: &Value,
    v: &str,
    t: &mut Tally,
    subs: &mut Vec<(String, Value, String)>,
) {
    let mut fail = |m: String| t.failures.push(format!("{what}={v:?}: {m}"));
    let ty = prop["type"].as_str().unwrap_or("string");
    t.checks += 1;
    match ty {
        "integer" => match v.parse::<i64>() {
            Ok(n) => {
                if let Some(min) = prop["minimum"].as_f64() {
                    t.checks += 1;
                    if (n as f64) < min {
                        fail(format!("below minimum {min}"));
                    }
                }
                if let Some(max) = prop["maximum"].as_f64() {
                    t.checks += 1;
                    if (n as f64) > max {
                        fail(format!("above maximum {max}"));
                    }
                }
            }
            Err(_) => fail("not an integer".into()),
        },
        "boolean" => {
            if !matches!(v, "0" | "1") {
                fail("booleans must be sent as 0/1".into());
            }
        }
        "number" => {
            if v.parse::<f64>().is_err() {
                fail("not a number".into());
            }
        }
        _ => {
            if let Some(max) = prop["maxLength"].as_u64() {
                t.checks += 1;
                if v.chars().count() as u64 > max {
                    fail(format!("longer than maxLength {max}"));
                }
            }
            if let Some(e) = prop["enum"].as_array() {
                t.checks += 1;
                if !e.iter().any(|x| x.as_str() == Some(v)) {
                    fail(format!("not in enum {e:?}"));
                }
            }
            if let Some(p) = prop["pattern"].as_str() {
                match regex::Regex::new(&format!("^(?:{p})$")) {
                    Ok(re) => {
                        t.checks += 1;
                        if !re.is_match(v) {
                            fail(format!("does not match pattern {p}"));
                        }
                    }
                    Err(_) => t.skipped_patterns += 1,
                }
            }
            if let Some(format) = prop["format"].as_object() {
                // An inline property-string format: every key must be one the format knows.
                let default_key = format
                    .iter()
                    .find(|(_, d)| d["default_key"].as_i64() == Some(1))
                    .map(|(k, _)| k.clone());
                match pve_api::PropertyString::parse(v, default_key.as_deref()) {
                    Ok(ps) => {
                        for key in ps.keys() {
                            t.checks += 1;
                            let known = format.contains_key(key)
                                || format.values().any(|d| d["alias"].as_str() == Some(key));
                            if !known {
                                fail(format!("property-string key '{key}' is not in the format"));
                            }
                            if let (Some(sub), Some(val)) = (format.get(key), ps.get(key)) {
                                // Each value by its own schema: ranges (`tag`), patterns
                                // (`bridge`), booleans sent as 0/1, enums.
                                subs.push((format!("{what}.{key}"), sub.clone(), val.to_string()));
                            }
                        }
                    }
                    Err(e) => fail(format!("not a property string: {e}")),
                }
            }
        }
    }
}
