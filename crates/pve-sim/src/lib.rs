//! `pve-sim`: a faithful Proxmox VE API simulator — a real HTTPS server speaking PVE 9's API
//! with its envelopes, status lines and error texts, token privileges with privilege
//! separation, async tasks with real UPIDs and logs, the per-guest config lock (10 s, then
//! PVE's 500), restore semantics read from real vzdump archives, and a guest model (DHCP
//! lease after start, machine-id, SSH host keys served by a real SSH server on loopback).
//!
//! It is the default target of felhom's demo, tests and benchmarks (omicron's simulated
//! sled-agent idea: the simulator implements the same interface as the real thing). What it
//! does not model yet is listed in `api/mod.rs`.
//!
//! It can be a cluster ([`SimConfig::nodes`], `felhom sim serve --nodes N|a,b,c`): one port
//! serves every node, and the path's node decides where a call runs. Guests, node-local
//! volumes and tasks belong to a node; storages are cluster-wide definitions, node-local
//! (`local`, `local-lvm`: each node its own volumes and space) or `shared`. VMIDs are
//! reserved cluster-wide by the placeholder config. `docs/pve-fidelity.md` §2 (c) lists what
//! follows PVE and what does not.
//!
//! | module | what is here |
//! |---|---|
//! | `api/` | the PVE request pipeline and one module per endpoint family; `api/cluster.rs`: `/nodes`, `/cluster/status`, `/cluster/resources`, `/cluster/nextid` |
//! | `state.rs` | the persistent state: nodes, storages, guests (each with its `node`), volumes (each with its `node`), tasks, users, ACLs; an old single-node `state.json` loads as that node (`State::normalize`) |
//! | `sim.rs` | the engine: state under a lock with group commit, the fault RNG, the cluster faults in force (`node_down`, `no_quorum`) and the down-node clock (`sleep_while_up`) |
//! | `tasks.rs` `locks.rs` | UPID tasks on the node of their guest; the config flock per node and VMID |
//! | `faults.rs` | `--faults`: `lock500`, `http503`, `task_fail:<type>`, `post_effect_595[:<kind>]`, `latency`, `dhcp_delay`, `taken_before_create=<vmid>`, `seed`, `node_down:<node>`, `no_quorum` |
//! | `admin.rs` | the side channel `/felhom-sim/*` (loopback, the run's secret): `state`, `requests`, `tokens`, `storages` (`{"id","type","content","shared"?,"nodes"?,"total_gib"?}`), `faults` (`{"set": "node_down:pve2"}`, `{"clear": "no_quorum"}`: answers `{"node_down": [...], "no_quorum": bool}`), `migrate` (`{"vmid": 105, "node": "pve3"}`: offline, as `pct migrate`; refusals 409 with PVE's text in `message`), `guests/{vmid}/ssh` |
//! | `invariants.rs` | what must never hold of a dump: leaked/detached volumes, duplicate MACs, IPs, host keys, a VMID on two nodes, a node-local volume away from its owner's node |
//! | `runtime/` | what guests are: modelled records or real LXC containers (with several nodes, one shared set of bridges: see `runtime/mod.rs`) |

mod admin;
mod api;
mod archive;
mod auth;
mod clone;
mod error;
mod faults;
mod files;
mod guest;
pub mod invariants;
mod locks;
pub mod runtime;
mod sim;
mod ssh;
mod state;
mod tasks;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use api::routes;
pub use faults::FaultSpec;
pub use runtime::{RuntimeError, RuntimeKind};
pub use state::{State, FELHOM_AGENT_PRIVS};

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The node of a single-node simulator (`pve`); ignored when `nodes` is not empty.
    pub node: String,
    /// The cluster's nodes ([`cluster_node_names`]); empty: just `node`.
    pub nodes: Vec<String>,
    pub faults: FaultSpec,
    /// Multiplies every modelled duration (tasks, DHCP, lock timeouts, the 401 delay).
    pub time_scale: f64,
    /// What the guests are (`runtime/mod.rs`): modelled records (the default) or real LXC
    /// containers.
    pub guests: RuntimeKind,
}

impl SimConfig {
    /// The nodes this simulator serves: `nodes`, or `[node]` when it is empty.
    pub fn node_names(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![self.node.clone()]
        } else {
            self.nodes.clone()
        }
    }
}

/// The node names `--nodes` means: a count N (1 → `pve`, N > 1 → `pve1`..`pveN`) or a comma
/// list of names (each `[a-zA-Z][a-zA-Z0-9-]*`, at most 63 characters, no duplicates).
pub fn cluster_node_names(spec: &str) -> Result<Vec<String>, String> {
    let spec = spec.trim();
    if let Ok(n) = spec.parse::<usize>() {
        return match n {
            0 => Err("--nodes: must be at least 1".into()),
            1 => Ok(vec!["pve".into()]),
            n if n > 64 => Err(format!("--nodes: at most 64 nodes, got {n}")),
            n => Ok((1..=n).map(|i| format!("pve{i}")).collect()),
        };
    }
    let mut out: Vec<String> = Vec::new();
    for name in spec.split(',').map(str::trim) {
        let ok = name.len() <= 63
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "--nodes: node name '{name}' must be [a-zA-Z][a-zA-Z0-9-]* (at most 63 characters)"
            ));
        }
        if out.iter().any(|x| x == name) {
            return Err(format!("--nodes: node name '{name}' given twice"));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator state: {0}")]
    State(String),
    /// The state dir is a symlink, not a directory, or another user's (bad input: nothing
    /// was started or written).
    #[error("{0}")]
    StateDir(String),
    #[error("simulator TLS: {0}")]
    Tls(String),
    #[error("simulator guest runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("simulator listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running simulator.
pub struct SimHandle {
    pub url: url::Url,
    /// SHA-256 of the certificate, `AA:BB:…`.
    pub fingerprint: String,
    pub addr: SocketAddr,
    handle: axum_server::Handle,
    server: tokio::task::JoinHandle<()>,
    sim: Arc<sim::Sim>,
}

impl SimHandle {
    /// Stop serving, then stop the guest runtime (`GuestRuntime::shutdown`: with the lxc
    /// runtime, running containers are stopped and the network namespaces and DHCP servers
    /// removed).
    pub async fn shutdown(self) {
        self.handle.shutdown();
        let _ = self.server.await;
        self.sim.shutdown();
        let rt = self.sim.runtime.clone();
        let _ = tokio::task::spawn_blocking(move || rt.shutdown()).await;
    }

    /// The state dump `GET /felhom-sim/state` serves (for in-process users such as the demo).
    pub async fn state(&self) -> serde_json::Value {
        admin::dump(&self.sim).await
    }

    /// The side-channel secret of this run (also in [`side_channel_secret_file`]), for
    /// in-process users; a request to `/felhom-sim/*` presents it in
    /// [`pve_api::SIDE_CHANNEL_HEADER`].
    pub fn side_channel_secret(&self) -> &str {
        &self.sim.side_secret
    }

    /// The cluster's node names, in order (the first is the single node of a one-node sim).
    pub fn nodes(&self) -> Vec<String> {
        self.sim
            .read(|st| st.nodes.iter().map(|n| n.name.clone()).collect())
    }

    /// Set (`on`) or clear a cluster fault, `node_down:<node>` or `no_quorum`, as
    /// `POST /felhom-sim/faults` does (for in-process users such as the demo).
    pub fn cluster_fault(&self, fault: &str, on: bool) -> Result<(), String> {
        let f: faults::ClusterFault = fault.parse()?;
        self.sim.set_cluster_fault(&f, on).map(|_| ())
    }

    /// Offline-migrate a stopped guest to `node` as `POST /felhom-sim/migrate` does; the node
    /// it came from, or the refusal (PVE's text).
    pub async fn migrate(&self, vmid: u32, node: &str) -> Result<String, String> {
        admin::migrate_guest(&self.sim, vmid, node).await
    }

    /// Which runtime the guests use.
    pub fn guests(&self) -> RuntimeKind {
        self.sim.runtime.kind()
    }
}

/// Where vzdump archives of a `dir` storage live (as `/var/lib/vz/dump` for `local`).
pub fn dump_dir(state_dir: &Path, storage: &str) -> PathBuf {
    state_dir.join("storage").join(storage).join("dump")
}

/// Where a storage's `vztmpl` templates live (PVE: `template/cache/` of a dir storage).
pub fn template_dir(state_dir: &Path, storage: &str) -> PathBuf {
    state_dir
        .join("storage")
        .join(storage)
        .join("template")
        .join("cache")
}

/// The file in the state dir holding the side-channel secret of the running simulator
/// (mode 0600, rewritten at every start): what tests, benches and scripts present in
/// [`pve_api::SIDE_CHANNEL_HEADER`] to reach `/felhom-sim/*`.
pub fn side_channel_secret_file(state_dir: &Path) -> PathBuf {
    state_dir.join(SIDE_CHANNEL_SECRET_FILE)
}

/// The name of [`side_channel_secret_file`] in the state dir.
pub const SIDE_CHANNEL_SECRET_FILE: &str = "side-channel.secret";

/// Read the side-channel secret a simulator on `state_dir` wrote (never through a symlink).
pub fn read_side_channel_secret(state_dir: &Path) -> Result<String, SimError> {
    let p = side_channel_secret_file(state_dir);
    let bytes = files::read(&p, 4096)
        .map_err(SimError::State)?
        .ok_or_else(|| {
            SimError::State(format!(
                "{}: missing (is the simulator running?)",
                p.display()
            ))
        })?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// Create the state dir private if it is missing (0700, or 0711 for the lxc runtime's
/// guests), and refuse one that is a symlink, not a directory, or another user's
/// ([`SimError::StateDir`]). [`start`] does this first; a caller that puts files in the
/// state dir before starting (a golden) calls it before that.
pub fn prepare_state_dir(state_dir: &Path, guests: RuntimeKind) -> Result<(), SimError> {
    files::prepare_state_dir(state_dir, files::state_dir_mode(guests == RuntimeKind::Lxc))
        .map_err(SimError::StateDir)
}

/// Start a simulator: check the state dir, load (or bootstrap) the state, write a fresh
/// side-channel secret, finish tasks a previous run left, and serve HTTPS.
pub async fn start(cfg: SimConfig) -> Result<SimHandle, SimError> {
    prepare_state_dir(&cfg.state_dir, cfg.guests)?;
    std::fs::create_dir_all(dump_dir(&cfg.state_dir, "local"))
        .map_err(|e| SimError::State(e.to_string()))?;
    let cert = tls::load_or_create(&cfg.state_dir).map_err(SimError::Tls)?;
    let (kind, dir) = (cfg.guests, cfg.state_dir.clone());
    let runtime = tokio::task::spawn_blocking(move || runtime::open(kind, &dir))
        .await
        .map_err(|e| SimError::State(e.to_string()))??;
    // 32 random bytes, hex: the side channel's secret for this run, readable by its owner.
    let side_secret = hex::encode(rand::random::<[u8; 32]>());
    files::write_atomic(
        &cfg.state_dir,
        SIDE_CHANNEL_SECRET_FILE,
        format!("{side_secret}\n").as_bytes(),
        0o600,
    )
    .map_err(SimError::State)?;
    let sim = sim::Sim::open(cfg.clone(), runtime, side_secret).map_err(SimError::State)?;
    sim.reconcile_runtime().await;
    sim.resume_tasks();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            {
                use rustls::pki_types::pem::PemObject;
                vec![
                    rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
                        .map_err(|e| SimError::Tls(e.to_string()))?,
                ]
            },
            {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                    .map_err(|e| SimError::Tls(e.to_string()))?
            },
        )
        .map_err(|e| SimError::Tls(e.to_string()))?;
    let mut server_cfg = server_cfg;
    server_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let rustls_cfg = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_cfg));

    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| SimError::Listen {
        addr: cfg.listen,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| SimError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let app = api::router(sim.clone());
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, rustls_cfg).handle(handle.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
        {
            tracing::error!(error = %e, "simulator server stopped");
        }
    });
    let url =
        url::Url::parse(&format!("https://{addr}")).map_err(|e| SimError::State(e.to_string()))?;
    Ok(SimHandle {
        url,
        fingerprint: cert.fingerprint,
        addr,
        handle,
        server,
        sim,
    })
}
