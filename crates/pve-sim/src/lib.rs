//! `pve-sim`: a faithful Proxmox VE API simulator — a real HTTPS server speaking PVE 9's API
//! with its envelopes, status lines and error texts, token privileges with privilege
//! separation, async tasks with real UPIDs and logs, the per-guest config lock (10 s, then
//! PVE's 500), restore semantics read from real vzdump archives, and a guest model (DHCP
//! lease after start, machine-id, SSH host keys served by a real SSH server on loopback).
//!
//! It is the default target of felhom's demo, tests and benchmarks (omicron's simulated
//! sled-agent idea: the simulator implements the same interface as the real thing). What it
//! does not model yet is listed in `api/mod.rs`.

mod admin;
mod api;
mod archive;
mod auth;
mod clone;
mod error;
mod faults;
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
    pub node: String,
    pub faults: FaultSpec,
    /// Multiplies every modelled duration (tasks, DHCP, lock timeouts, the 401 delay).
    pub time_scale: f64,
    /// What the guests are (`runtime/mod.rs`): modelled records (the default) or real LXC
    /// containers.
    pub guests: RuntimeKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator state: {0}")]
    State(String),
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

    /// Which runtime the guests use.
    pub fn guests(&self) -> RuntimeKind {
        self.sim.runtime.kind()
    }
}

/// Where vzdump archives of a `dir` storage live (as `/var/lib/vz/dump` for `local`).
pub fn dump_dir(state_dir: &Path, storage: &str) -> PathBuf {
    state_dir.join("storage").join(storage).join("dump")
}

/// Start a simulator: load (or bootstrap) the state, finish tasks a previous run left, and
/// serve HTTPS.
pub async fn start(cfg: SimConfig) -> Result<SimHandle, SimError> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| SimError::State(format!("{}: {e}", cfg.state_dir.display())))?;
    std::fs::create_dir_all(dump_dir(&cfg.state_dir, "local"))
        .map_err(|e| SimError::State(e.to_string()))?;
    let cert = tls::load_or_create(&cfg.state_dir).map_err(SimError::Tls)?;
    let (kind, dir) = (cfg.guests, cfg.state_dir.clone());
    let runtime = tokio::task::spawn_blocking(move || runtime::open(kind, &dir))
        .await
        .map_err(|e| SimError::State(e.to_string()))??;
    let sim = sim::Sim::open(cfg.clone(), runtime).map_err(SimError::State)?;
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
