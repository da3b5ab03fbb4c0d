//! The operations the CLI (and later the daemon) offers: validate, plan, provision, resume,
//! teardown, status. They wire specs, the journal, the client and the job engine together,
//! and bound concurrency globally, per node and per storage (lock contention is the field's
//! first complaint: docs/lessons.md L3).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pve_api::{ApiError, PveClient, Vmid};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bringup::{self, BringupStep};
use crate::config::Config;
use crate::guest::{GoldenInfo, PickError, VmidPicker};
use crate::job::{self, Facts, JobCx, Observed, Outcome, Progress, Step};
use crate::journal::JobRow;
use crate::journal::{JobKind, JobState, Journal, Phase};
use crate::spec::{show, FieldError, GuestSpec, Identity, VmidChoice};
use crate::teardown;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    Invalid(String),
}

/// What one job run reports.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job: String,
    pub kind: JobKind,
    pub label: String,
    pub vmid: Option<u32>,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub ssh_fingerprint: Option<String>,
}

/// Bounds how many jobs run at once: in all, per node, per storage.
#[derive(Debug)]
pub struct Limits {
    global: Arc<Semaphore>,
    per_node: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    per_storage: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    node_cap: usize,
    storage_cap: usize,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            global: Arc::new(Semaphore::new(config.max_parallel)),
            per_node: Default::default(),
            per_storage: Default::default(),
            node_cap: config.max_parallel_per_node,
            storage_cap: config.max_parallel_per_storage,
        }
    }
    fn sem(
        map: &std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
        key: &str,
        cap: usize,
    ) -> Arc<Semaphore> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(cap)))
            .clone()
    }
    /// Permits in a fixed order (storage, node, global) so two jobs can never deadlock.
    /// `node` is the job's (placed or followed) node; a storage is counted per node, as
    /// `local-lvm` on two nodes is two volume groups with locks of their own.
    async fn acquire(&self, node: &str, storage: Option<&str>) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        if let Some(s) = storage {
            if let Ok(p) = Self::sem(&self.per_storage, &format!("{node}/{s}"), self.storage_cap)
                .acquire_owned()
                .await
            {
                permits.push(p);
            }
        }
        if let Ok(p) = Self::sem(&self.per_node, node, self.node_cap)
            .acquire_owned()
            .await
        {
            permits.push(p);
        }
        if let Ok(p) = self.global.clone().acquire_owned().await {
            permits.push(p);
        }
        permits
    }
}

/// felhom, opened: config, client, journal.
pub struct Felhom {
    pub config: Arc<Config>,
    pub client: PveClient,
    pub journal: Arc<Journal>,
    pub limits: Arc<Limits>,
    /// Learned durations of the waits on guests (DHCP lease, SSH keys), shared by all jobs.
    pub waits: Arc<pve_api::durations::TaskDurations>,
    /// `JobCx::created`, shared by this process's jobs.
    pub created: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    /// What each golden archive says about itself, by (node, volid): a vzdump archive never
    /// changes under its name (the name carries its timestamp), so one read per process.
    golden: std::sync::Mutex<std::collections::HashMap<(String, String), GoldenInfo>>,
    /// Held while a golden's config is read: a batch's jobs that all miss the cache at once
    /// wait for the one read instead of each sending its own.
    golden_read: tokio::sync::Mutex<()>,
}

pub fn new_job_id(kind: JobKind) -> String {
    let prefix = match kind {
        JobKind::Bringup => "up",
        JobKind::Teardown => "down",
        JobKind::Repair => "fix",
        JobKind::Publish => crate::publish::JOB_PREFIX,
    };
    let t = crate::journal::now_ms();
    format!("{prefix}-{t:x}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The holder of the identity leases of one `apply` invocation.
pub fn new_apply_id() -> String {
    format!(
        "apply-{:x}-{:06x}",
        crate::journal::now_ms(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// What `teardown` is asked to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Vmid(Vmid),
    Identity(Identity),
}

impl Target {
    fn vmid(&self) -> Option<u32> {
        match self {
            Target::Vmid(v) => Some(v.get()),
            Target::Identity(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Vmid(v) => write!(f, "{v}"),
            Target::Identity(id) => write!(f, "{id}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    /// A VMID (`1100`) or an identity (`acme/web1`).
    fn from_str(s: &str) -> Result<Target, String> {
        if let Some((customer, name)) = s.split_once('/') {
            let c: crate::spec::CustomerId = customer.parse()?;
            let n: crate::spec::Hostname = name.parse()?;
            return Ok(Target::Identity(Identity {
                customer: c.to_string(),
                name: n.to_string(),
            }));
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither a VMID nor an identity customer/name"))?;
        Vmid::try_from(n)
            .map(Target::Vmid)
            .map_err(|e| e.to_string())
    }
}

impl Felhom {
    pub fn open(config: Config) -> Result<Felhom, OpsError> {
        let client = PveClient::new(config.client.clone())?;
        client.set_observer(crate::metrics::pve_observer());
        client.set_request_budget(config.max_requests_per_second, config.entry_node.as_deref());
        let journal = Arc::new(Journal::open(&config.journal)?);
        let limits = Arc::new(Limits::new(&config));
        let felhom = Felhom {
            config: Arc::new(config),
            client,
            journal,
            limits,
            waits: Default::default(),
            created: Default::default(),
            golden: Default::default(),
            golden_read: Default::default(),
        };
        felhom.recall_durations()?;
        Ok(felhom)
    }

    /// Durations are kept as `task:<type>` (PVE tasks, learned by the client) and
    /// `wait:<step>` (waits on the guest).
    fn recall_durations(&self) -> Result<(), OpsError> {
        for (kind, lo, hi) in self.journal.load_durations()? {
            let b = pve_api::durations::Bracket {
                lo: Duration::from_millis(lo),
                hi: Duration::from_millis(hi),
            };
            if let Some(t) = kind.strip_prefix("task:") {
                self.client.durations().record(t, b);
            } else if let Some(w) = kind.strip_prefix("wait:") {
                self.waits.record(w, b);
            }
        }
        Ok(())
    }

    /// Persist what this process learned of the host's durations (after every batch).
    pub(crate) fn remember_durations(&self) {
        let ms = |d: Duration| d.as_millis() as u64;
        let items: Vec<(String, u64, u64)> = self
            .client
            .durations()
            .snapshot()
            .into_iter()
            .map(|(t, b)| (format!("task:{t}"), ms(b.lo), ms(b.hi)))
            .chain(
                self.waits
                    .snapshot()
                    .into_iter()
                    .map(|(w, b)| (format!("wait:{w}"), ms(b.lo), ms(b.hi))),
            )
            .collect();
        if let Err(e) = self.journal.save_durations(&items) {
            // Only an optimisation is lost: the next run learns again.
            tracing::warn!(error = %e, "cannot save learned durations");
        }
    }

    fn cx(
        &self,
        job: &str,
        label: &str,
        node: &str,
        spec: Option<GuestSpec>,
        progress: Arc<dyn Progress>,
    ) -> JobCx {
        JobCx {
            job_id: job.into(),
            label: label.into(),
            node: node.into(),
            client: self.client.clone(),
            journal: self.journal.clone(),
            config: self.config.clone(),
            facts: Default::default(),
            progress,
            backoff: Default::default(),
            spec,
            config_cache: Default::default(),
            acting: Default::default(),
            shortcuts: Default::default(),
            waits: self.waits.clone(),
            created: self.created.clone(),
            unreachable_since: Default::default(),
            dispatch_unsure: Default::default(),
        }
    }

    /// [`crate::guest::golden_info`], read once per archive and process.
    pub async fn golden_info(&self, node: &str, volid: &str) -> Result<GoldenInfo, ApiError> {
        let key = (node.to_string(), volid.to_string());
        let cached = || {
            self.golden
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
        };
        if let Some(g) = cached() {
            return Ok(g);
        }
        let _reading = self.golden_read.lock().await;
        if let Some(g) = cached() {
            return Ok(g);
        }
        let g = crate::guest::golden_info(&self.client, node, volid).await?;
        self.golden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, g.clone());
        Ok(g)
    }

    /// Whether journal job `job` works for guest `id`.
    fn job_is_for(&self, job: &str, id: &Identity) -> bool {
        self.journal.job(job).is_ok_and(|j| {
            j.customer.as_deref() == Some(id.customer.as_str())
                && j.name.as_deref() == Some(id.name.as_str())
        })
    }

    /// Everything that can be checked against PVE with reads only, before any job exists:
    /// a spec that fails here causes zero writes.
    pub async fn validate(&self, specs: &[GuestSpec]) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let many = specs.len() > 1;
        // Each node's bridges, listed once (None: the node would not say).
        let mut bridges_of: HashMap<String, Option<Vec<String>>> = HashMap::new();
        // Where guests live, which nodes are up, where `auto` ones would go: one cluster read.
        let cluster = crate::cluster::ClusterView::read(&self.client).await;
        let resolved: Vec<Option<crate::apply::Resolved>> = match &cluster {
            Ok(c) => match self.resolve_nodes(c, specs).await {
                Ok(r) => r.into_iter().map(Some).collect(),
                Err(e) => specs.iter().map(|_| Some(Err(e.to_string()))).collect(),
            },
            Err(_) => specs.iter().map(|_| None).collect(),
        };
        for (i, (s, placed)) in specs.iter().zip(resolved).enumerate() {
            let prefix = if many {
                format!("guest[{i}].")
            } else {
                String::new()
            };
            let mut err = |field: &str, rule: String| {
                errors.push(FieldError {
                    field: format!("{prefix}{field}"),
                    rule,
                })
            };
            // An `auto` spec is checked on the node it would get (or already lives on).
            let placed_spec;
            let s = match (s.node_is_auto(), placed) {
                (false, _) => s,
                (true, Some(Ok((p, _)))) => {
                    placed_spec = p;
                    &placed_spec
                }
                (true, Some(Err(why))) => {
                    err("node", format!("\"auto\": {why}"));
                    continue;
                }
                (true, None) => {
                    let e = cluster
                        .as_ref()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    err(
                        "node",
                        format!("\"auto\": cannot read the cluster's nodes: {e}"),
                    );
                    continue;
                }
            };
            // A node the cluster says is down cannot answer for its golden, storages and
            // bridges; that is no fault of the spec: its guest's job pauses instead.
            if cluster.as_ref().is_ok_and(|c| {
                c.node_names().any(|n| n == s.node.as_str()) && !c.node_online(s.node.as_str())
            }) {
                continue;
            }
            let id = s.identity_key();
            if s.customer.as_str() == crate::publish::TEMPLATE_CUSTOMER {
                err(
                    "customer",
                    format!(
                        "'{}' is reserved for felhom's linked-clone templates",
                        crate::publish::TEMPLATE_CUSTOMER
                    ),
                );
            }
            if self.config.strategy == crate::config::Strategy::LinkedClone
                && !crate::publish::has_template_for(&self.journal, s.node.as_str(), s)
            {
                err(
                    "golden",
                    format!(
                        "strategy linked-clone: {} has no published template on node {} storage {}; run `felhom golden publish --node {} --storage {}` first",
                        s.golden, s.node, s.storage, s.node, s.storage
                    ),
                );
            }
            if let VmidChoice::Fixed(v) = s.vmid {
                if !self.config.vmid_range.contains(v) {
                    err(
                        "vmid",
                        format!(
                            "{v} is outside felhom's VMID range {} (felhom.vmid_range in {})",
                            self.config.vmid_range,
                            self.config.path.display()
                        ),
                    );
                } else if let Some((job, pid)) = self.journal.live_lease_holder(v).ok().flatten() {
                    // A job building this very guest right now: `apply` waits for it and
                    // decides then. Any other holder is another guest's.
                    if !self.job_is_for(&job, &id) {
                        err(
                            "vmid",
                            format!("guest {v} is held by job {job} (felhom process {pid}) for another guest; wait for it to finish"),
                        );
                    }
                } else if self.journal.guest(v.get()).ok().flatten().is_some_and(|g| {
                    g.state != "torn_down" && g.customer == id.customer && g.name == id.name
                }) {
                    // The journal's guest for this identity: `apply` proves it is still
                    // felhom's (MAC, rootfs volume, marker) and decides.
                } else {
                    let node = cluster
                        .as_ref()
                        .ok()
                        .and_then(|c| c.node_of(v.get()))
                        .unwrap_or(s.node.as_str());
                    match crate::guest::config_of(&self.client, node, v).await {
                        Ok(None) => {}
                        Ok(Some(cfg)) => match crate::guest::marker_of(&cfg) {
                            // The guest this spec describes: `apply` decides what to do.
                            Some(m)
                                if m.customer == id.customer
                                    && m.name.as_deref().unwrap_or(s.hostname.as_str()) == id.name => {}
                            Some(m) => err("vmid", format!("{v} already holds felhom guest {}/{} (job {}), not {id} (see `felhom status {v}`)", m.customer, m.name.as_deref().unwrap_or("?"), m.job)),
                            None => err("vmid", format!("{v} already holds a guest that felhom does not own; refusing to touch it")),
                        },
                        Err(e) => err("vmid", format!("cannot check VMID {v}: {e}")),
                    }
                }
            }
            match self.golden_info(s.node.as_str(), s.golden.as_str()).await {
                Ok(g) => {
                    if let Some(bytes) = g.rootfs_bytes {
                        if s.rootfs_size.bytes() < bytes {
                            err("rootfs_size", format!(
                                "{} would shrink the golden's {} rootfs; PVE cannot shrink a disk (\"unable to shrink disk size\")",
                                s.rootfs_size, pve_api::format_disk_size(bytes)
                            ));
                        }
                    }
                }
                Err(ApiError::NotFound { message }) | Err(ApiError::Server { message, .. }) => err(
                    "golden",
                    format!(
                        "cannot read {}: {}",
                        show(s.golden.as_str()),
                        message.trim()
                    ),
                ),
                Err(e) => err(
                    "golden",
                    format!("cannot read {}: {e}", show(s.golden.as_str())),
                ),
            }
            let mut storages: Vec<(String, &str)> = vec![("storage".into(), s.storage.as_str())];
            storages.extend(
                s.mounts
                    .iter()
                    .enumerate()
                    .map(|(j, m)| (format!("mount[{j}].storage"), m.storage.as_str())),
            );
            let mut seen = std::collections::HashMap::new();
            for (field, sid) in storages {
                let status = match seen.get(sid) {
                    Some(st) => st,
                    None => seen
                        .entry(sid)
                        .or_insert(self.client.storage_status(s.node.as_str(), sid).await),
                };
                if let (Ok(st), true) = (status, field == "storage") {
                    if self.config.strategy == crate::config::Strategy::LinkedClone {
                        if let Some(rule) =
                            crate::publish::link_clone_refusal(sid, &st.storage_type)
                        {
                            err(&field, rule);
                        }
                    }
                }
                match status {
                    Ok(st) if !st.content.split(',').any(|c| c == "rootdir") => err(
                        &field,
                        format!(
                            "storage '{sid}' does not allow container directories (content: {})",
                            st.content
                        ),
                    ),
                    Ok(_) => {}
                    Err(e) => err(&field, format!("storage '{sid}' on node {}: {e}", s.node)),
                }
            }
            // A guest on a bridge the node lacks restores fine and then cannot start (PVE's
            // start fails): refuse it now. If the node's interfaces cannot be listed, start
            // will say it.
            let node = s.node.to_string();
            if !bridges_of.contains_key(&node) {
                let listed = self.client.network(&node).await.ok().map(|ifaces| {
                    ifaces
                        .into_iter()
                        .filter(|i| i.is_bridge())
                        .map(|i| i.iface)
                        .collect::<Vec<_>>()
                });
                bridges_of.insert(node.clone(), listed);
            }
            if let Some(Some(bridges)) = bridges_of.get(&node) {
                if !bridges.iter().any(|b| b == s.bridge.as_str()) {
                    err(
                        "bridge",
                        format!(
                            "bridge '{}' does not exist on node {} (it has: {}); a guest on it could not start",
                            s.bridge,
                            s.node,
                            bridges.join(", ")
                        ),
                    );
                }
            }
            if let Some(pool) = &s.pool {
                match self.client.pools().await {
                    Ok(pools) if !pools.iter().any(|p| p.poolid == pool.as_str()) => {
                        err("pool", format!("pool '{pool}' does not exist"))
                    }
                    Ok(_) => {}
                    Err(e) => err("pool", format!("cannot list pools: {e}")),
                }
            }
        }
        // A refused certificate is the one error that matters: the client sent nothing after
        // the first handshake, so every other check failed the same way.
        if let Some(e) = self.untrusted() {
            return vec![e];
        }
        errors
    }

    /// The server's certificate was refused (pin mismatch, CA): the config field to fix and
    /// the error naming both fingerprints and `pvenode cert info`.
    pub fn untrusted(&self) -> Option<FieldError> {
        let e = self.client.refused_certificate()?;
        let field = match self.config.client.trust {
            pve_api::TlsTrust::Pinned(_) => "pve.fingerprint",
            pve_api::TlsTrust::CaFile(_) => "pve.ca_file",
            pve_api::TlsTrust::SystemRoots => "pve.url",
        };
        Some(FieldError {
            field: field.into(),
            rule: e.to_string(),
        })
    }

    /// The VMIDs `provision` would give these specs, in order (fixed ones as given, "auto"
    /// ones the lowest free in turn): `plan` shows them and `provision` reserves them first.
    pub async fn pick_vmids(&self, specs: &[GuestSpec]) -> Result<Vec<Option<Vmid>>, OpsError> {
        let cluster = crate::cluster::ClusterView::read(&self.client).await?;
        self.pick_vmids_in(&cluster, specs)
    }

    /// [`Felhom::pick_vmids`] over a cluster read already made: one picker for every node,
    /// as VMIDs are unique across the cluster.
    pub fn pick_vmids_in(
        &self,
        cluster: &crate::cluster::ClusterView,
        specs: &[GuestSpec],
    ) -> Result<Vec<Option<Vmid>>, OpsError> {
        let mut picker = VmidPicker::from_view(&self.journal, cluster, self.config.vmid_range)
            .map_err(|e| match e {
                PickError::Api(e) => OpsError::Api(e),
                PickError::Journal(e) => OpsError::Journal(e),
            })?;
        Ok(specs.iter().map(|s| picker.pick(s.vmid)).collect())
    }

    /// What `provision` would do for one spec that gets `vmid`, reading only: each step's
    /// own plan line.
    pub async fn plan(
        &self,
        spec: &GuestSpec,
        vmid: Option<Vmid>,
    ) -> Result<Vec<(String, String)>, OpsError> {
        let vmid = vmid.ok_or_else(|| {
            OpsError::Invalid(format!(
                "no free VMID in felhom's range {}",
                self.config.vmid_range
            ))
        })?;
        let golden = self
            .golden_info(spec.node.as_str(), spec.golden.as_str())
            .await?;
        let template = crate::publish::recorded_template(
            &self.journal,
            spec.node.as_str(),
            spec.storage.as_str(),
            spec.golden.as_str(),
            None,
            Some(spec.rootfs_size.bytes()),
        )?
        .map(|g| g.vmid);
        let p = bringup::PlanCx {
            spec,
            vmid,
            golden: &golden,
            config: &self.config,
            template,
        };
        Ok(bringup::STEPS
            .iter()
            .flat_map(|s| {
                s.plan(&p)
                    .into_iter()
                    .map(|line| (s.name().to_string(), line))
            })
            .collect())
    }

    /// `provision` is `apply` (without pruning): the same decisions, the same exit codes.
    pub async fn provision(
        self: &Arc<Self>,
        specs: Vec<GuestSpec>,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<JobReport>, OpsError> {
        self.apply(specs, false, progress).await
    }

    /// Run (or resume) one journaled job to its end, whatever its kind:
    /// - a bring-up or repair whose stored spec this felhom cannot decode is **paused**, never
    ///   run: its rollback would destroy a guest over a decoding problem;
    /// - a job that already holds a VMID re-takes that VMID's lease before any step acts
    ///   (a live holder elsewhere pauses it);
    /// - bring-ups roll back on a permanent error; repairs and teardowns only go forward.
    pub(crate) async fn run_job(&self, row: JobRow, progress: Arc<dyn Progress>) -> JobReport {
        let label = row
            .hostname
            .clone()
            .unwrap_or_else(|| row.vmid.map(|v| v.to_string()).unwrap_or_default());
        let spec: Result<Option<GuestSpec>, String> = match row.kind {
            JobKind::Teardown => Ok(None),
            JobKind::Bringup | JobKind::Repair | JobKind::Publish => {
                serde_json::from_value(row.spec.clone())
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        };
        let storage = spec
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .map(|s| s.storage.to_string());
        let _permits = self.limits.acquire(&row.node, storage.as_deref()).await;
        let cx = self.cx(
            &row.id,
            &label,
            &row.node,
            spec.clone().ok().flatten(),
            progress,
        );
        if let Ok(f) = job::load_facts(&self.journal, &row.id) {
            cx.update_facts(|x| *x = f);
        }
        let paused = |cx: &JobCx, error: String| {
            let _ = self
                .journal
                .set_job_state(&cx.job_id, JobState::Paused, Some(&error));
            report(cx, row.kind, Outcome::Paused { error })
        };
        if let Err(e) = spec {
            return paused(
                &cx,
                format!(
                    "the spec stored with job {} cannot be read by this felhom ({e}); nothing was done and nothing will be undone: run it with the felhom version that wrote it, or tear the guest down",
                    row.id
                ),
            );
        }
        if let Some(vmid) = cx.facts().vmid.and_then(|v| Vmid::try_from(v).ok()) {
            if let Err(e) = self.journal.acquire_lease(vmid, &row.id) {
                return paused(&cx, format!("cannot re-take the lease on VMID {vmid}: {e}"));
            }
        }
        let outcome = match row.kind {
            JobKind::Bringup => job::run(&cx, &bringup::STEPS, true).await,
            JobKind::Repair => job::run(&cx, &bringup::STEPS, false).await,
            JobKind::Teardown => job::run(&cx, &teardown::STEPS, false).await,
            JobKind::Publish => job::run(&cx, &crate::publish::STEPS, true).await,
        };
        if row.kind == JobKind::Repair && outcome == Outcome::Succeeded {
            if let Some(vmid) = cx.facts().vmid.and_then(|v| Vmid::try_from(v).ok()) {
                let _ = self.journal.release_lease(vmid, &row.id);
            }
        }
        report(&cx, row.kind, outcome)
    }

    /// Start a teardown job per target (a VMID or an identity `customer/name`). A target
    /// felhom has no live record of, and PVE no guest at, is `absent` (done, exit 0). Any
    /// unfinished bring-up or repair of the same guest is superseded: it never resumes.
    pub async fn teardown(
        self: &Arc<Self>,
        vmids: Vec<Vmid>,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<JobReport>, OpsError> {
        let targets = vmids.into_iter().map(Target::Vmid).collect();
        self.teardown_targets(targets, progress).await
    }

    pub async fn teardown_targets(
        self: &Arc<Self>,
        targets: Vec<Target>,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<JobReport>, OpsError> {
        let mut rows = Vec::new();
        let mut reports = Vec::new();
        // Where each guest lives now (one cluster read): a teardown acts on the node that
        // holds the guest, never on a stale one where it would look absent.
        // PVE unreachable now: the recorded node, and the job pauses as before if it stays so.
        let cluster = crate::cluster::ClusterView::read(&self.client)
            .await
            .unwrap_or_default();
        for t in targets {
            let rec = match &t {
                Target::Vmid(vmid) => {
                    if !self.config.vmid_range.contains(*vmid) {
                        return Err(OpsError::Invalid(format!(
                            "VMID {vmid} is outside felhom's range {}; refusing to touch it",
                            self.config.vmid_range
                        )));
                    }
                    self.journal
                        .guest(vmid.get())?
                        .filter(|g| g.state != "torn_down")
                }
                Target::Identity(id) => {
                    let mut recs = self.journal.guests_by_identity(&id.customer, &id.name)?;
                    if recs.len() > 1 {
                        return Err(OpsError::Invalid(format!(
                            "{} felhom guests carry identity {id} (VMIDs {}); name the VMID to tear down",
                            recs.len(),
                            recs.iter().map(|g| g.vmid.to_string()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                    recs.pop()
                }
            };
            let Some(rec) = rec else {
                if let Target::Vmid(vmid) = &t {
                    // No record: absent only if no guest holds the VMID anywhere in the
                    // cluster (`nextid?vmid=` answers that, reference §8).
                    match self.client.next_id(Some(*vmid)).await {
                        Ok(_) => {}
                        Err(ApiError::Param { .. }) => {
                            return Err(OpsError::Invalid(format!("felhom has no live record of guest {vmid}; refusing to destroy a guest it did not make")));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                reports.push(JobReport::decided(
                    &t.to_string(),
                    t.vmid(),
                    Outcome::Absent,
                ));
                continue;
            };
            let vmid = Vmid::try_from(rec.vmid).map_err(|e| OpsError::Invalid(e.to_string()))?;
            let node = cluster.node_of(rec.vmid).unwrap_or(&rec.node).to_string();
            if node != rec.node {
                self.journal.set_guest_node(rec.vmid, &node)?;
            }
            let id = new_job_id(JobKind::Teardown);
            self.journal.create_job(
                &id,
                JobKind::Teardown,
                &node,
                Some(&rec.hostname),
                &json!({ "vmid": vmid.get() }),
            )?;
            self.journal
                .set_job_identity(&id, &rec.customer, &rec.name)?;
            self.journal.set_job_vmid(&id, vmid)?;
            self.journal.record(
                &id,
                "job",
                0,
                Phase::Note,
                &json!({ "facts": Facts { vmid: Some(vmid.get()), ..Facts::default() } }),
            )?;
            // A teardown wins over any unfinished bring-up or repair of this guest.
            for j in self
                .journal
                .unfinished_jobs_for_identity(&rec.customer, &rec.name)?
                .into_iter()
                .chain(
                    self.journal
                        .jobs()?
                        .into_iter()
                        .filter(|j| j.vmid == Some(vmid.get()) && !j.state.is_final()),
                )
            {
                if j.id == id || j.kind == JobKind::Teardown {
                    continue;
                }
                if let Err(e) = self.journal.supersede(&j.id, &id) {
                    let _ = self
                        .journal
                        .set_job_state(&id, JobState::Failed, Some(&e.to_string()));
                    return Err(OpsError::Invalid(format!(
                        "guest {vmid} is being worked on by job {}: {e}; try again when it has finished",
                        j.id
                    )));
                }
            }
            rows.push(self.journal.job(&id)?);
        }
        let mut handles = Vec::new();
        for row in rows {
            let me = self.clone();
            let progress = progress.clone();
            handles.push(tokio::spawn(async move { me.run_job(row, progress).await }));
        }
        reports.extend(collect(handles).await?);
        self.remember_durations();
        Ok(reports)
    }

    /// Resume one job, or every job a crash left unfinished. Superseded jobs never resume.
    pub async fn resume(
        self: &Arc<Self>,
        job: Option<&str>,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<JobReport>, OpsError> {
        // Guests migrated while their jobs waited are followed first (one cluster read).
        if let Ok(cluster) = crate::cluster::ClusterView::read(&self.client).await {
            self.follow_guests(&cluster)?;
        }
        let jobs = match job {
            Some(id) => {
                let row = self.journal.job(id)?;
                if !(row.state.is_resumable() || row.state == JobState::RollbackIncomplete) {
                    return Err(OpsError::Invalid(format!(
                        "job {id} is {} and has nothing left to do",
                        row.state.as_str()
                    )));
                }
                vec![row]
            }
            None => self.journal.resumable_jobs()?,
        };
        let mut handles = Vec::new();
        for row in jobs {
            self.journal.claim_job(&row.id)?;
            if row.state == JobState::RollbackIncomplete {
                // A person looked and asks to try the rollback again.
                self.journal
                    .set_job_state(&row.id, JobState::RollingBack, None)?;
            }
            let me = self.clone();
            let progress = progress.clone();
            handles.push(tokio::spawn(async move { me.run_job(row, progress).await }));
        }
        let reports = collect(handles).await;
        self.remember_durations();
        reports
    }

    /// Compare each guest felhom owns with its spec and the journal, and say what drifted.
    pub async fn status(
        &self,
        vmids: &[Vmid],
    ) -> Result<Vec<crate::status::GuestStatus>, OpsError> {
        crate::status::status(self, vmids).await
    }

    /// Observe every step of a job without acting (used by `jobs --verbose` and tests).
    pub async fn observe_steps(
        &self,
        spec: GuestSpec,
        job: &str,
    ) -> Vec<(String, Result<bool, String>)> {
        let cx = self.cx(
            job,
            spec.hostname.as_str(),
            spec.node.as_str(),
            Some(spec.clone()),
            Arc::new(job::Quiet),
        );
        if let Ok(f) = job::load_facts(&self.journal, job) {
            cx.update_facts(|x| *x = f);
        }
        let mut out = Vec::new();
        for s in bringup::STEPS
            .iter()
            .filter(|s| **s != BringupStep::Reserve)
        {
            let r = s
                .observe(&cx)
                .await
                .map(|o| matches!(o, Observed::Done(_)))
                .map_err(|e| e.to_string());
            out.push((s.name().to_string(), r));
        }
        out
    }
}

impl JobReport {
    /// A report for a guest `apply` or `teardown` decided about without running a job.
    pub fn decided(label: &str, vmid: Option<u32>, outcome: Outcome) -> JobReport {
        JobReport {
            job: String::new(),
            kind: JobKind::Bringup,
            label: label.to_string(),
            vmid,
            outcome,
            ip: None,
            mac: None,
            ssh_fingerprint: None,
        }
    }
}

fn report(cx: &JobCx, kind: JobKind, outcome: Outcome) -> JobReport {
    crate::metrics::job_finished(kind, &outcome);
    let f = cx.facts();
    JobReport {
        job: cx.job_id.clone(),
        kind,
        label: cx.label.clone(),
        vmid: f.vmid,
        outcome,
        ip: f.ip,
        mac: f.mac,
        ssh_fingerprint: f.ssh_fingerprint,
    }
}

pub(crate) async fn collect(
    handles: Vec<tokio::task::JoinHandle<JobReport>>,
) -> Result<Vec<JobReport>, OpsError> {
    let mut out = Vec::new();
    for h in handles {
        out.push(
            h.await
                .map_err(|e| OpsError::Invalid(format!("job task panicked: {e}")))?,
        );
    }
    Ok(out)
}

/// Used by callers that want a JSON view of the jobs table.
pub fn job_summary(journal: &Journal) -> Result<Vec<Value>, OpsError> {
    Ok(journal
        .jobs()?
        .into_iter()
        .map(|j| {
            let identity = match (&j.customer, &j.name) {
                (Some(c), Some(n)) => Value::String(format!("{c}/{n}")),
                _ => Value::Null,
            };
            // `state` as people need it: a job whose process died mid-run is `interrupted`.
            json!({ "job": j.id, "kind": j.kind, "vmid": j.vmid, "node": j.node, "hostname": j.hostname, "identity": identity, "state": j.display_state(), "stored_state": j.state, "error": j.error, "superseded_by": j.superseded_by, "created_at": j.created_at, "updated_at": j.updated_at, "started_at": j.started_at, "ended_at": j.ended_at })
        })
        .collect())
}
