//! Desired state: the guests the agent keeps converged, from two sources.
//!
//! | source | where it lives | who changes it |
//! |---|---|---|
//! | the spec directory (`agent.specs_dir`, `*.toml`) | the files, read again on every change (watched) and on SIGHUP | the operator |
//! | the API (`PUT`/`DELETE /v1/guests/{customer}/{name}`) | the journal's `agent_specs` table (survives restarts) | a controller |
//!
//! One identity (customer/name) in both: **the directory wins**. A PUT or DELETE of an
//! identity the directory holds is refused with 409 (the operator's file decides), and a
//! stored API spec shadowed by a file is left in the journal but not used while the file is
//! there. A file that does not parse is skipped whole, logged with every field error; the
//! guests of the other files are kept. Removing a file stops reconciling its guests; it never
//! tears them down (DELETE through the API, or `felhom teardown`, does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use felhom_core::journal::Journal;
use felhom_core::spec::{GuestSpec, Identity};

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    Api,
}

#[derive(Debug, Clone)]
pub struct Wanted {
    pub spec: GuestSpec,
    pub source: Source,
}

#[derive(Debug, Default, Clone)]
pub struct Desired {
    pub dir: BTreeMap<Identity, Wanted>,
    pub api: BTreeMap<Identity, Wanted>,
}

impl Desired {
    /// The spec the agent converges `id` to (the directory's first).
    pub fn get(&self, id: &Identity) -> Option<&Wanted> {
        self.dir.get(id).or_else(|| self.api.get(id))
    }

    /// Every wanted guest, the directory's winning.
    pub fn all(&self) -> BTreeMap<Identity, Wanted> {
        let mut out = self.api.clone();
        out.extend(self.dir.clone());
        out
    }
}

/// Read every `*.toml` of `dir` (sorted by name). Files that fail are logged and skipped.
pub fn read_dir(dir: &Path) -> BTreeMap<Identity, Wanted> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the spec directory");
            return BTreeMap::new();
        }
    };
    files.sort();
    let mut out: BTreeMap<Identity, Wanted> = BTreeMap::new();
    for f in files {
        match GuestSpec::load_many(&f) {
            Ok(specs) => {
                for spec in specs {
                    let id = spec.identity_key();
                    if let Some(first) = out.get(&id) {
                        tracing::error!(file = %f.display(), identity = %id, first = ?first.source, "guest identity is in two spec files; the first one is kept");
                        continue;
                    }
                    out.insert(
                        id,
                        Wanted {
                            spec,
                            source: Source::File(f.clone()),
                        },
                    );
                }
            }
            Err(errs) => {
                for e in errs.0 {
                    tracing::error!(file = %f.display(), field = %e.field, rule = %e.rule, "spec file skipped");
                }
            }
        }
    }
    out
}

/// The specs stored through the API. One the running felhom cannot decode is logged and left.
pub fn read_api(journal: &Journal) -> BTreeMap<Identity, Wanted> {
    let mut out = BTreeMap::new();
    match journal.agent_specs() {
        Ok(rows) => {
            for (customer, name, value) in rows {
                match serde_json::from_value::<GuestSpec>(value) {
                    Ok(spec) => {
                        out.insert(
                            Identity { customer, name },
                            Wanted {
                                spec,
                                source: Source::Api,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(%customer, %name, error = %e, "stored API spec cannot be read; left alone")
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the stored API specs"),
    }
    out
}
