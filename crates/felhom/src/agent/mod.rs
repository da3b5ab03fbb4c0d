//! `felhom agent`: the long-running service a controller calls. It keeps the wanted guests
//! converged with `apply` semantics, serves an HTTP API to change what is wanted and watch
//! the jobs, and repairs drift every interval.
//!
//! | module | what is in it |
//! |---|---|
//! | `settings.rs` | `[agent]` of the config with defaults, checked before anything starts (exit 2) |
//! | `desired.rs` | the wanted guests: spec directory (the operator's; wins) + API specs (journal) |
//! | `reconcile.rs` | one slot per identity, `apply`/`teardown`/`resume`, bounded concurrency, the interval pass |
//! | `events.rs` | the progress sink: logs (job, identity, VMID), per-job history, broadcast for SSE |
//! | `api.rs` | the axum routes, their OpenAPI 3.1 document, bearer auth |
//! | `problem.rs` | RFC 9457 problem+json for every error |
//! | `metrics.rs`, `page.rs` | `/metrics` and the status page (h-agentx) |
//!
//! Lifecycle ([`run`]): the settings are checked and the listener bound (a bad setting or a
//! busy port is exit 2); the wanted guests are read; unfinished jobs are resumed (a wanted
//! identity's by its first `apply`, which continues it; anyone else's, a teardown say, by
//! `resume`); then a first pass applies every wanted guest. The spec directory is watched
//! (`notify`, debounced), and every `interval` the guests' status is read and every wanted
//! guest applied again (drift repaired). `READY=1` goes to systemd once the API serves
//! (`NOTIFY_SOCKET`). SIGHUP reloads the config's token and interval and re-reads the spec
//! directory. SIGTERM (or SIGINT) stops taking work (new PUT/DELETE: 503), lets running jobs go
//! on for up to [`STOP_GRACE`], and exits 0; a job cut mid-step is resumed on the next start,
//! as every act is journaled before it happens.

pub mod api;
pub mod desired;
pub mod events;
pub mod metrics;
pub mod page;
pub mod problem;
pub mod reconcile;
pub mod settings;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use felhom_core::ops::Felhom;
use felhom_core::spec::Identity;
use pve_api::Secret;
use tokio::signal::unix::{signal, SignalKind};

use desired::Desired;
use events::Bus;
use reconcile::{Reconciler, Work};
use settings::Settings;

/// Worker threads of the API's own runtime.
const API_THREADS: usize = 2;

/// How long SIGTERM waits for running jobs before the process exits.
pub const STOP_GRACE: Duration = Duration::from_secs(8);

/// What the handlers share.
pub struct Agent {
    pub rec: Arc<Reconciler>,
    token: std::sync::RwLock<Arc<Secret>>,
}

impl Agent {
    pub fn token(&self) -> Arc<Secret> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why the agent could not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting is wrong, or the address cannot be bound: exit 2.
    Invalid(String, Vec<felhom_core::spec::FieldError>),
}

/// Run until SIGTERM. `reload` reads the settings again (SIGHUP).
pub async fn run(
    felhom: Arc<Felhom>,
    settings: Settings,
    reload: impl Fn() -> Result<Settings, String> + Send + 'static,
) -> Result<(), StartError> {
    let bind_error = |e: std::io::Error| {
        StartError::Invalid(
            "cannot serve the API".into(),
            vec![felhom_core::spec::FieldError {
                field: "agent.listen".into(),
                rule: format!("cannot listen on {}: {e}", settings.listen),
            }],
        )
    };
    let listener = std::net::TcpListener::bind(settings.listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tls_config(cert, key).map_err(|rule| {
            StartError::Invalid(
                "cannot serve the API".into(),
                vec![felhom_core::spec::FieldError {
                    field: "agent.tls_cert".into(),
                    rule,
                }],
            )
        })?),
        None => None,
    };

    let bus = Bus::new(felhom.journal.clone());
    let desired = Arc::new(Mutex::new(Desired {
        dir: desired::read_dir(&settings.specs_dir),
        api: desired::read_api(&felhom.journal),
    }));
    let rec = Reconciler::new(felhom.clone(), bus, desired.clone(), settings.concurrency);
    let agent = Arc::new(Agent {
        rec: rec.clone(),
        token: std::sync::RwLock::new(settings.token.clone()),
    });

    let handle = axum_server::Handle::new();
    let app = api::router(agent.clone());
    // The API runs on a runtime of its own: the job engine writes the journal synchronously
    // (fsync per record), which would otherwise hold the workers that answer reads.
    let api_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(API_THREADS)
        .thread_name("felhom-api")
        .enable_all()
        .build()
        .map_err(|e| {
            StartError::Invalid(
                "cannot start the API runtime".into(),
                vec![felhom_core::spec::FieldError {
                    field: "agent".into(),
                    rule: e.to_string(),
                }],
            )
        })?;
    {
        let handle = handle.clone();
        let make = app.into_make_service();
        api_rt.spawn(async move {
            let r = match tls {
                Some(cfg) => {
                    axum_server::from_tcp_rustls(listener, cfg)
                        .handle(handle)
                        .serve(make)
                        .await
                }
                None => {
                    axum_server::from_tcp(listener)
                        .handle(handle)
                        .serve(make)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "the API server stopped");
            }
        });
    }
    if let Some(addr) = handle.listening().await {
        tracing::info!(%addr, tls = settings.tls.is_some(), specs_dir = %settings.specs_dir.display(), "felhom agent serving");
        // One JSON line on stdout once serving (like `sim serve`): where to reach the API.
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        crate::output::json_line(&serde_json::json!({ "url": format!("{scheme}://{addr}") }));
    }

    rec.recall_jobs();
    rec.resume_orphans();
    rec.pass();
    notify_ready();

    // The spec directory, watched; events debounced, then the directory read again.
    let (dir_tx, mut dir_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = watch_dir(&settings.specs_dir, dir_tx.clone());
    let mut interval = settings.interval;
    let debounce = settings.debounce;
    let specs_dir = settings.specs_dir.clone();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config and the spec directory");
                match reload() {
                    Ok(new) => {
                        *agent.token.write().unwrap_or_else(|p| p.into_inner()) = new.token.clone();
                        if new.interval != interval {
                            interval = new.interval;
                            ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                        }
                        if new.listen != settings.listen || new.tls != settings.tls || new.specs_dir != specs_dir || new.concurrency != settings.concurrency {
                            tracing::warn!("listen, TLS, specs_dir and concurrency take effect at the next start");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the config is not valid; keeping the running one"),
                }
                reread_dir(&rec, &desired, &specs_dir);
            }
            Some(()) = dir_rx.recv() => {
                // Debounce: wait until the directory has been quiet for `debounce`.
                while let Ok(Some(())) = tokio::time::timeout(debounce, dir_rx.recv()).await {}
                reread_dir(&rec, &desired, &specs_dir);
            }
            _ = ticker.tick() => {
                let rec = rec.clone();
                tokio::spawn(async move {
                    rec.observe_all().await;
                    rec.pass();
                });
            }
        }
    }
    tracing::info!("stopping: no new work; waiting for running jobs");
    rec.stop_accepting();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    handle.graceful_shutdown(Some(Duration::from_secs(1)));
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while rec.busy() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if rec.busy() {
        tracing::warn!("jobs still running at the deadline; they resume at the next start");
    }
    api_rt.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// Read the spec directory again and apply every identity whose spec changed or appeared.
fn reread_dir(rec: &Arc<Reconciler>, desired: &Arc<Mutex<Desired>>, dir: &std::path::Path) {
    let new = desired::read_dir(dir);
    let changed: Vec<Identity> = {
        let mut d = desired.lock().unwrap_or_else(|p| p.into_inner());
        let changed = new
            .iter()
            .filter(|(id, w)| d.dir.get(*id).map(|o| &o.spec) != Some(&w.spec))
            .map(|(id, _)| id.clone())
            .collect();
        d.dir = new;
        changed
    };
    tracing::info!(changed = changed.len(), "spec directory read");
    for id in changed {
        rec.kick(&id, Work::Apply, None);
    }
}

fn watch_dir(
    dir: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the spec directory; it is read on SIGHUP and every interval only");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot watch the spec directory");
        return None;
    }
    Some(w)
}

/// `READY=1` to systemd (only when `NOTIFY_SOCKET` is set).
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

fn tls_config(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<axum_server::tls_rustls::RustlsConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(cfg),
    ))
}
