//! The HTTP client: reqwest over rustls (ring), PVE's URL layout and envelope, error
//! classification, request counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde::de::DeserializeOwned;
use url::Url;

use crate::auth::ApiToken;
use crate::error::{classify, ApiError};
use crate::transport::{tls_config, TlsTrust};

/// Where PVE is and how to talk to it.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:8006` (no path); plain http is refused.
    pub base_url: Url,
    pub token: ApiToken,
    pub trust: TlsTrust,
    pub timeout: Duration,
    /// The most bytes one answer's body (a task log page included) may have; a longer one
    /// fails with [`ApiError::BodyTooLarge`] after reading at most this much
    /// ([`DEFAULT_MAX_BODY_BYTES`] unless a caller chose otherwise).
    pub max_body_bytes: u64,
}

/// 16 MiB: the biggest answer felhom reads is a task log page or a storage's content list,
/// well under 1 MiB on a real host; the cap only stops a hostile or broken server from
/// streaming gigabytes into memory within the request timeout.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;

/// The cap for the simulator's side channel (`/felhom-sim/*`: state dumps and request logs
/// of a whole benchmark run, tens of MB), which is test tooling, not PVE.
pub(crate) const OUTSIDE_API_MAX_BODY_BYTES: u64 = 1 << 30;

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("token", &self.token)
            .field("trust", &self.trust)
            .field("timeout", &self.timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Requests sent since the client was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    pub gets: u64,
    pub task_polls: u64,
    pub writes: u64,
}

impl ClientStats {
    /// The requests sent after `earlier` was taken.
    pub fn since(&self, earlier: &ClientStats) -> ClientStats {
        ClientStats {
            gets: self.gets - earlier.gets,
            task_polls: self.task_polls - earlier.task_polls,
            writes: self.writes - earlier.writes,
        }
    }
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    task_polls: AtomicU64,
    writes: AtomicU64,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    token_id: String,
    counters: Counters,
    durations: crate::durations::TaskDurations,
    watchers: crate::watch::Watchers,
    max_body: u64,
    /// The certificate refusal this client met, once it met one: from then on it sends
    /// nothing to that server (every call fails with the same error at once), so a man in
    /// the middle gets one handshake, never a retry or a parallel request.
    refused: std::sync::Mutex<Option<ApiError>>,
    observer: RwLock<Option<Arc<dyn crate::observe::Observer>>>,
    /// The per-node request budget, when one is set.
    budget: RwLock<Option<Arc<crate::budget::Budget>>>,
}

/// A PVE API client. Cheap to clone (shared connection pool and counters).
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
}

impl PveClient {
    /// The token this client authenticates as (`user@realm!name`): a token task's UPID
    /// names it as its user.
    pub(crate) fn token_id(&self) -> &str {
        &self.inner.token_id
    }
}

impl fmt::Debug for PveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClient")
            .field("base", &self.inner.base.as_str())
            .field("token_id", &self.inner.token_id)
            .finish_non_exhaustive()
    }
}

/// Percent-encode one path segment (a UPID contains ':' and '!').
pub(crate) fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `reqwest::Error` with its source chain (rustls's pin mismatch lives deep in it).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl PveClient {
    /// A request that did not complete: a refused certificate (remembered, see
    /// [`PveClient::refused_certificate`]) or a transport failure.
    fn request_error(&self, e: &reqwest::Error) -> ApiError {
        if let Some(r) = crate::transport::cert_rejection(e) {
            let err = ApiError::Certificate {
                expected: r.expected,
                presented: r.presented,
                reason: r.reason,
            };
            *self.inner.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.clone());
            return err;
        }
        ApiError::Transport {
            message: chain(e),
            maybe_sent: !e.is_connect(),
        }
    }

    /// The [`ApiError::Certificate`] this client met, if it met one: it then sends nothing
    /// more, every call failing with this error without connecting.
    pub fn refused_certificate(&self) -> Option<ApiError> {
        self.inner
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn new(cfg: ClientConfig) -> Result<PveClient, ApiError> {
        if cfg.base_url.scheme() != "https" {
            return Err(ApiError::InvalidInput {
                field: "url".into(),
                message: format!(
                    "must be https:// (plain HTTP would send the token in clear); got {}",
                    cfg.base_url.scheme()
                ),
            });
        }
        if cfg.base_url.host().is_none() {
            return Err(ApiError::InvalidInput {
                field: "url".into(),
                message: "has no host".into(),
            });
        }
        if !cfg.base_url.username().is_empty() || cfg.base_url.password().is_some() {
            return Err(ApiError::InvalidInput {
                field: "url".into(),
                message: "must not carry credentials; the API token authenticates".into(),
            });
        }
        let tls = tls_config(&cfg.trust)?;
        let mut auth = HeaderValue::from_str(&cfg.token.header_value()).map_err(|_| {
            ApiError::InvalidInput {
                field: "token".into(),
                message: "the token contains characters not allowed in an HTTP header".into(),
            }
        })?;
        // Marked sensitive so no layer below prints it.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // PVE never redirects an API call; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ApiError::Transport {
                message: chain(&e),
                maybe_sent: false,
            })?;
        // `{base}/api2/json/{path}`: keep a path prefix (PVE behind a reverse proxy at
        // `https://host/pve/`), drop any query or fragment.
        let mut base = cfg.base_url.clone();
        let prefix = base.path().trim_end_matches('/').to_string();
        base.set_path(&prefix);
        base.set_query(None);
        base.set_fragment(None);
        Ok(PveClient {
            inner: Arc::new(Inner {
                http,
                base,
                token_id: cfg.token.id().to_string(),
                counters: Counters::default(),
                durations: Default::default(),
                watchers: Default::default(),
                max_body: cfg.max_body_bytes,
                refused: Default::default(),
                observer: RwLock::new(None),
                budget: RwLock::new(None),
            }),
        })
    }

    /// What this client learned of task durations (shared by its clones); a caller may
    /// persist it and feed it to the next client for the same host.
    pub fn durations(&self) -> &crate::durations::TaskDurations {
        &self.inner.durations
    }

    /// The shared task watch of `node` ([`crate::watch`]).
    pub(crate) fn node_watch(&self, node: &str) -> Arc<crate::watch::NodeWatch> {
        self.inner.watchers.node(node)
    }

    /// The user part of the token id (`felhom@pve` of `felhom@pve!agent`): what PVE's task
    /// list calls a task's `user`.
    pub(crate) fn token_user(&self) -> &str {
        let id = self.inner.token_id.as_str();
        id.split_once('!').map_or(id, |(u, _)| u)
    }

    /// At most `per_second` API requests to any one node in any one second (a sliding
    /// window, [`crate::budget`]); `None` (the default) sends at once. `entry_node`: the
    /// node whose pveproxy this client talks to (its cluster-wide requests spend from that
    /// node's window). Shared by this client's clones. A value that is not a positive
    /// number is ignored.
    pub fn set_request_budget(&self, per_second: Option<f64>, entry_node: Option<&str>) {
        let budget = per_second.filter(|r| r.is_finite() && *r > 0.0).map(|r| {
            Arc::new(crate::budget::Budget::new(
                r,
                entry_node.map(str::to_string),
            ))
        });
        *self.inner.budget.write().unwrap_or_else(|p| p.into_inner()) = budget;
    }

    /// Tell `observer` of every request and learned task duration from now on, for this
    /// client and all its clones (replacing any observer set before).
    pub fn set_observer(&self, observer: Arc<dyn crate::observe::Observer>) {
        *self
            .inner
            .observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    pub(crate) fn observer(&self) -> Option<Arc<dyn crate::observe::Observer>> {
        self.inner
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One request ended (`status` None: no answer).
    fn observe(&self, method: &Method, path: &str, status: Option<u16>, started: Instant) {
        if let Some(o) = self.observer() {
            let endpoint = crate::observe::endpoint_template(method.as_str(), path);
            o.request(&endpoint, status, started.elapsed());
        }
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            gets: c.gets.load(Ordering::Relaxed),
            task_polls: c.task_polls.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The connection pool (TLS trust, timeouts, the token header) for requests made
    /// outside this module (`side_channel.rs`).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn url(&self, full_path: &str) -> Result<Url, ApiError> {
        if !full_path.starts_with('/')
            || full_path.contains("..")
            || full_path.contains(['\n', '\r', '#', '?'])
        {
            return Err(ApiError::InvalidInput {
                field: "path".into(),
                message: format!("bad API path {full_path:?}"),
            });
        }
        let mut u = self.inner.base.clone();
        let joined = format!(
            "{}{full_path}",
            self.inner.base.path().trim_end_matches('/')
        );
        u.set_path(&joined);
        Ok(u)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        full_path: &str,
        params: &[(&str, String)],
        envelope: bool,
    ) -> Result<T, ApiError> {
        let url = self.url(full_path)?;
        if let Some(e) = self.refused_certificate() {
            return Err(e);
        }
        if full_path.starts_with("/api2/") {
            let budget = self
                .inner
                .budget
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(b) = budget {
                b.take(
                    b.key(full_path),
                    crate::budget::Class::of(&method, full_path),
                )
                .await;
            }
        }
        crate::budget::note_sent();
        let mut req = self.inner.http.request(method.clone(), url);
        if method == Method::GET || method == Method::DELETE {
            if !params.is_empty() {
                req = req.query(params);
            }
        } else {
            req = req.form(params);
        }
        // Method and path only: headers (the token) never reach a log.
        tracing::debug!(%method, path = full_path, "PVE request");
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| {
            self.observe(&method, full_path, None, started);
            self.request_error(&e)
        })?;
        let status = resp.status();
        self.observe(&method, full_path, Some(status.as_u16()), started);
        // PVE's own text is the reason phrase (`Permission check failed (…)`); hyper keeps a
        // non-canonical one as an extension, the canonical one is the fallback.
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok())
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let limit = if full_path.starts_with("/api2/") {
            self.inner.max_body
        } else {
            OUTSIDE_API_MAX_BODY_BYTES
        };
        let body = read_capped(resp, &method, full_path, limit).await?;
        if !status.is_success() {
            return Err(classify(status.as_u16(), &reason, &body));
        }
        if envelope {
            #[derive(serde::Deserialize)]
            struct Envelope<T> {
                data: T,
            }
            serde_json::from_slice::<Envelope<T>>(&body)
                .map(|e| e.data)
                .map_err(|e| ApiError::Decode {
                    message: format!("{full_path}: {e}"),
                })
        } else {
            serde_json::from_slice::<T>(&body).map_err(|e| ApiError::Decode {
                message: format!("{full_path}: {e}"),
            })
        }
    }

    pub(crate) async fn get_counted<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        task_poll: bool,
    ) -> Result<T, ApiError> {
        let c = if task_poll {
            &self.inner.counters.task_polls
        } else {
            &self.inner.counters.gets
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.send(Method::GET, &format!("/api2/json{path}"), query, true)
            .await
    }

    /// `GET /api2/json{path}` decoded whole, for the answers with fields beside `data`
    /// (the task log's `total`). Counted as a GET.
    pub(crate) async fn get_whole<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.inner.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.send(Method::GET, &format!("/api2/json{path}"), query, false)
            .await
    }

    /// `GET /api2/json{path}`; returns the envelope's `data`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.get_counted(path, query, false).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.write(Method::POST, path, form).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.write(Method::PUT, path, form).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.write(Method::DELETE, path, query).await
    }

    /// A request that may change PVE (counted in [`crate::ClientStats::writes`]).
    async fn write<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.send(method, &format!("/api2/json{path}"), params, true)
            .await
    }

    /// `POST {path}` with a JSON body outside `/api2` (a simulator's side channel), without
    /// the envelope.
    pub async fn post_outside_api<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        if path.starts_with("/api2") {
            return Err(ApiError::InvalidInput {
                field: "path".into(),
                message: "use post() for /api2 paths".into(),
            });
        }
        let url = self.url(path)?;
        if let Some(e) = self.refused_certificate() {
            return Err(e);
        }
        let started = Instant::now();
        let resp = self
            .inner
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                self.observe(&Method::POST, path, None, started);
                self.request_error(&e)
            })?;
        let status = resp.status();
        self.observe(&Method::POST, path, Some(status.as_u16()), started);
        let bytes = read_capped(resp, &Method::POST, path, OUTSIDE_API_MAX_BODY_BYTES).await?;
        if !status.is_success() {
            return Err(classify(
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &bytes,
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            message: format!("{path}: {e}"),
        })
    }

    /// `GET {path}` outside `/api2` on the same server and TLS trust, without the envelope:
    /// for a simulator's side channel (its state dump, a guest's loopback SSH port).
    pub async fn get_outside_api<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        if path.starts_with("/api2") {
            return Err(ApiError::InvalidInput {
                field: "path".into(),
                message: "use get() for /api2 paths".into(),
            });
        }
        self.send(Method::GET, path, &[], false).await
    }
}

/// A response body, read chunk by chunk and given up as soon as it passes `limit` bytes (a
/// `Content-Length` above it is refused before any byte is read), so a hostile server can
/// never make the client hold more than `limit` plus one chunk.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    method: &Method,
    full_path: &str,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::BodyTooLarge {
        endpoint: endpoint_template(method.as_str(), full_path),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(64 << 10) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| ApiError::Transport {
        message: chain(&e),
        maybe_sent: true,
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `GET /nodes/{node}/lxc/{vmid}/config` for `GET /api2/json/nodes/pve/lxc/101/config`: the
/// route, never the values (no query either), so an error naming it carries nothing a caller
/// passed in.
pub(crate) fn endpoint_template(method: &str, full_path: &str) -> String {
    let path = full_path.strip_prefix("/api2/json").unwrap_or(full_path);
    let segs: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let prev = if i > 0 { segs[i - 1] } else { "" };
        let var = match prev {
            "nodes" => Some("{node}"),
            "lxc" | "qemu" | "guests" => Some("{vmid}"),
            "tasks" => Some("{upid}"),
            "storage" => Some("{storage}"),
            "pools" => Some("{poolid}"),
            "content" => Some("{volume}"),
            _ => None,
        };
        out.push(match var {
            Some(v) if !seg.is_empty() => v.to_string(),
            _ if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => "{id}".into(),
            _ => seg.to_string(),
        });
    }
    format!("{method} {}", out.join("/"))
}

/// Checks for path parameters, so that a hostile value never reaches a URL.
pub(crate) fn check_node(node: &str) -> Result<(), ApiError> {
    let ok = node
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && node.len() <= 63
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidInput {
            field: "node".into(),
            message: "must match [a-zA-Z0-9][a-zA-Z0-9-]*".into(),
        })
    }
}

pub(crate) fn check_storage(sid: &str) -> Result<(), ApiError> {
    let ok = sid.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && sid.len() <= 100
        && sid.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidInput {
            field: "storage".into(),
            message: "must match [a-z][a-z0-9-_.]*".into(),
        })
    }
}

pub(crate) fn check_disk(disk: &str) -> Result<(), ApiError> {
    let ok = disk == "rootfs"
        || disk.strip_prefix("mp").is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 3
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u32>().is_ok_and(|n| n <= 255)
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidInput {
            field: "disk".into(),
            message: "must be rootfs or mp0…mp255".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The client against a tiny scripted HTTPS server (tokio-rustls, ring) on loopback:
    //! pinned TLS, the exact bytes sent, reason-phrase fallback, counters. The full PVE
    //! behaviour is tested against pve-sim in that crate.
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::auth::{Secret, TokenId};
    use crate::transport::CertFingerprint;
    use crate::{Upid, Vmid, WaitOptions};

    const SECRET: &str = "5f0c7a1e-0d7b-4c55-9a64-2b1de3c0ffee";

    struct Server {
        url: Url,
        fingerprint: CertFingerprint,
        seen: Arc<Mutex<Vec<String>>>,
    }

    /// Serves each scripted raw response to one connection, in order, recording requests.
    async fn serve(responses: Vec<String>) -> Server {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        serve_with(cert, key, responses).await
    }

    /// A TLS acceptor serving `cert` (the test servers' one TLS setup).
    fn acceptor(
        cert: rustls::pki_types::CertificateDer<'static>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> tokio_rustls::TlsAcceptor {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }

    async fn serve_with(
        cert: rustls::pki_types::CertificateDer<'static>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        responses: Vec<String>,
    ) -> Server {
        let fingerprint = CertFingerprint::of(cert.as_ref());
        let acceptor = acceptor(cert, key);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            for resp in responses {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen2
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).to_string());
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        Server {
            url: format!("https://localhost:{}", addr.port())
                .parse()
                .unwrap(),
            fingerprint,
            seen,
        }
    }

    /// A server that answers every connection with `head` (status line and headers, no
    /// blank line) and then an endless chunked body of `x`s, until the client goes away;
    /// returns its URL, pin and the body bytes it managed to write.
    async fn serve_endless(head: &'static str) -> (Url, CertFingerprint, Arc<AtomicU64>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let fingerprint = CertFingerprint::of(cert.as_ref());
        let acceptor = acceptor(cert, key);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let w = w.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let chunked = head.contains("chunked");
                    if tls
                        .write_all(format!("{head}\r\n\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let data = vec![b'x'; 64 << 10];
                    let piece = if chunked {
                        [
                            format!("{:x}\r\n", data.len()).into_bytes(),
                            data,
                            b"\r\n".to_vec(),
                        ]
                        .concat()
                    } else {
                        data
                    };
                    while tls.write_all(&piece).await.is_ok() {
                        w.fetch_add(64 << 10, Ordering::Relaxed);
                    }
                });
            }
        });
        let url = format!("https://localhost:{port}").parse().unwrap();
        (url, fingerprint, written)
    }

    #[tokio::test]
    async fn endless_bodies_stop_at_the_cap() {
        const CAP: u64 = 1 << 20;
        let chunked =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked";
        let (url, pin, written) = serve_endless(chunked).await;
        let mut cfg = config(url, TlsTrust::Pinned(pin));
        cfg.max_body_bytes = CAP;
        let c = PveClient::new(cfg).unwrap();
        let e = c.version().await.unwrap_err();
        assert_eq!(
            e,
            ApiError::BodyTooLarge {
                endpoint: "GET /version".into(),
                limit: CAP
            }
        );
        assert!(!e.is_transient());
        let shown = e.to_string();
        assert!(
            shown.contains("GET /version") && shown.contains("1048576"),
            "{shown}"
        );

        // A task log the same way, named by its route, never the UPID.
        let upid: Upid = "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzrestore:123:felhom@pve!agent:"
            .parse()
            .unwrap();
        let e = c.task_log(&upid, 0, 50).await.unwrap_err();
        assert_eq!(
            e,
            ApiError::BodyTooLarge {
                endpoint: "GET /nodes/{node}/tasks/{upid}/log".into(),
                limit: CAP
            }
        );
        // The client stopped reading at the cap: the server could write at most the cap, one
        // chunk and what the sockets buffer, for both requests, never the gigabytes it offered
        // within the timeout.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = written.load(Ordering::Relaxed);
        assert!(
            sent < 2 * CAP + (32 << 20),
            "the server got {sent} bytes out"
        );

        // A Content-Length above the cap is refused before the body is read.
        let (url, pin, written) = serve_endless(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1099511627776",
        )
        .await;
        let mut cfg = config(url, TlsTrust::Pinned(pin));
        cfg.max_body_bytes = CAP;
        let c = PveClient::new(cfg).unwrap();
        let vmid = Vmid::try_from(101).unwrap();
        let e = c.lxc_config("pve", vmid).await.unwrap_err();
        assert_eq!(
            e,
            ApiError::BodyTooLarge {
                endpoint: "GET /nodes/{node}/lxc/{vmid}/config".into(),
                limit: CAP
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(written.load(Ordering::Relaxed) < CAP + (32 << 20));
    }

    #[test]
    fn endpoint_templates_name_routes_not_values() {
        for (path, want) in [
            ("/api2/json/version", "GET /version"),
            (
                "/api2/json/nodes/pve-2/lxc/1100/status/current",
                "GET /nodes/{node}/lxc/{vmid}/status/current",
            ),
            (
                "/api2/json/nodes/pve/storage/local-lvm/content/local%3Abackup%2Fx",
                "GET /nodes/{node}/storage/{storage}/content/{volume}",
            ),
            ("/api2/json/pools/customers", "GET /pools/{poolid}"),
            ("/api2/json/cluster/nextid", "GET /cluster/nextid"),
            (
                "/felhom-sim/guests/1100/ssh",
                "GET /felhom-sim/guests/{vmid}/ssh",
            ),
        ] {
            assert_eq!(endpoint_template("GET", path), want);
        }
    }

    fn http(status_line: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn config(url: Url, trust: TlsTrust) -> ClientConfig {
        ClientConfig {
            base_url: url,
            token: ApiToken::new(
                "felhom@pve!agent".parse::<TokenId>().unwrap(),
                Secret::new(SECRET.into()),
            ),
            trust,
            timeout: Duration::from_secs(10),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    #[test]
    fn nothing_prints_the_secret() {
        let cfg = config(
            "https://pve.example:8006".parse().unwrap(),
            TlsTrust::Pinned(CertFingerprint([7; 32])),
        );
        let client = PveClient::new(cfg.clone()).unwrap();
        let shown = format!(
            "{cfg:?} {client:?} {:?} {} {:?}",
            cfg.token,
            Secret::new(SECRET.into()),
            Secret::new(SECRET.into())
        );
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("felhom@pve!agent"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn plain_http_and_credentials_in_url_are_refused() {
        let e = PveClient::new(config(
            "http://pve.example:8006".parse().unwrap(),
            TlsTrust::Pinned(CertFingerprint([7; 32])),
        ))
        .unwrap_err();
        assert!(
            matches!(&e, ApiError::InvalidInput { field, .. } if field == "url"),
            "{e}"
        );
        let e = PveClient::new(config(
            "https://root:pw@pve.example:8006".parse().unwrap(),
            TlsTrust::Pinned(CertFingerprint([7; 32])),
        ))
        .unwrap_err();
        assert!(matches!(e, ApiError::InvalidInput { .. }));
    }

    #[test]
    fn path_inputs_are_checked() {
        assert!(check_node("pve").is_ok() && check_node("pve-2").is_ok());
        for bad in ["", "-pve", "pve/../x", "pve node", "pve%2F", "ü"] {
            assert!(check_node(bad).is_err(), "{bad}");
        }
        assert!(check_storage("local-lvm").is_ok() && check_storage("nfs.backup_1").is_ok());
        for bad in ["", "Local", "1local", "local/x", "local lvm"] {
            assert!(check_storage(bad).is_err(), "{bad}");
        }
        assert!(
            check_disk("rootfs").is_ok()
                && check_disk("mp0").is_ok()
                && check_disk("mp255").is_ok()
        );
        for bad in ["mp", "mp256", "mp-1", "net0", "rootfs2", "mp01x"] {
            assert!(check_disk(bad).is_err(), "{bad}");
        }
        assert_eq!(
            encode_segment("UPID:pve:0000:a!b@c:"),
            "UPID%3Apve%3A0000%3Aa%21b%40c%3A"
        );
    }

    #[tokio::test]
    async fn invalid_path_inputs_send_nothing() {
        let srv = serve(vec![]).await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        let vmid = Vmid::try_from(100).unwrap();
        assert!(matches!(
            c.lxc_status("pve/..", vmid).await,
            Err(ApiError::InvalidInput { .. })
        ));
        assert!(matches!(
            c.storage_status("pve", "Bad!").await,
            Err(ApiError::InvalidInput { .. })
        ));
        assert!(matches!(
            c.lxc_resize("pve", vmid, "net0", "8G").await,
            Err(ApiError::InvalidInput { .. })
        ));
        for size in ["8 G", "++8G", "8g", "-1G", "8G,mp=/x"] {
            assert!(
                matches!(
                    c.lxc_resize("pve", vmid, "rootfs", size).await,
                    Err(ApiError::InvalidInput { .. })
                ),
                "{size}"
            );
        }
        assert_eq!(c.stats(), ClientStats::default());
        assert!(srv.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn requests_over_pinned_tls() {
        let upid = "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzdestroy:123:felhom@pve!agent:";
        let srv = serve(vec![
            http("200 OK", r#"{"data":"101"}"#),
            http("200 OK", &format!(r#"{{"data":"{upid}"}}"#)),
            http("200 OK", r#"{"data":null}"#),
            // An old PVE: the message only in the reason phrase, empty body.
            http("403 Permission check failed (/vms/123, VM.Allocate)", ""),
            http("401 Authentication failed!", ""),
            http("200 OK", r#"{"data":{"status":"stopped","exitstatus":"WARNINGS: 2"}}"#),
            http("200 OK", r#"{"data":{"digest":"abc","hostname":"web1","memory":512,"net0":"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth"}}"#),
            http("200 OK", r#"{"data":null}"#),
            http("200 OK", "not json"),
        ])
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        let vmid = Vmid::try_from(123).unwrap();

        assert_eq!(c.next_id(None).await.unwrap().get(), 101);
        let u = c.lxc_delete("pve", vmid, true, false).await.unwrap();
        assert_eq!(u.to_string(), upid);
        c.lxc_update_config(
            "pve",
            vmid,
            &[
                ("hostname".into(), "web 1&x".into()),
                ("onboot".into(), "1".into()),
            ],
            Some("abc"),
        )
        .await
        .unwrap();
        let e = c
            .lxc_create("pve", &[("vmid".into(), "123".into())])
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ApiError::Permission {
                path: Some("/vms/123".into()),
                privilege: Some("VM.Allocate".into()),
                message: "Permission check failed (/vms/123, VM.Allocate)".into()
            }
        );
        let e = c.version().await.unwrap_err();
        assert_eq!(
            e,
            ApiError::Auth {
                reason: "Authentication failed!".into()
            }
        );
        let st = c.task_status(&u).await.unwrap();
        assert_eq!(st.exitstatus.as_deref(), Some("WARNINGS: 2"));
        let cfg = c.lxc_config("pve", vmid).await.unwrap();
        assert_eq!(cfg.digest.as_deref(), Some("abc"));
        assert_eq!(cfg.hostname(), Some("web1"));
        assert_eq!(cfg.get_string("memory").as_deref(), Some("512"));
        assert_eq!(
            cfg.net(0).unwrap().unwrap().bridge.as_deref(),
            Some("vmbr0")
        );
        assert_eq!(
            c.lxc_interfaces("pve", vmid).await.unwrap(),
            None,
            "stopped CT: data null"
        );
        assert!(matches!(c.pools().await, Err(ApiError::Decode { .. })));

        assert_eq!(
            c.stats(),
            ClientStats {
                gets: 5,
                task_polls: 1,
                writes: 3
            }
        );
        let seen = srv.seen.lock().unwrap().clone();
        let auth = format!("authorization: PVEAPIToken=felhom@pve!agent={SECRET}");
        for r in &seen {
            assert!(
                r.to_ascii_lowercase().contains(&auth.to_ascii_lowercase()),
                "{r}"
            );
        }
        assert!(
            seen[0].starts_with("GET /api2/json/cluster/nextid HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with(
                "DELETE /api2/json/nodes/pve/lxc/123?purge=1&destroy-unreferenced-disks=0 HTTP/1.1"
            ),
            "{}",
            seen[1]
        );
        assert!(seen[2].starts_with("PUT /api2/json/nodes/pve/lxc/123/config HTTP/1.1"));
        assert!(seen[2]
            .to_ascii_lowercase()
            .contains("content-type: application/x-www-form-urlencoded"));
        assert!(
            seen[2].ends_with("\r\n\r\nhostname=web+1%26x&onboot=1&digest=abc"),
            "{}",
            seen[2]
        );
        assert!(
            seen[5].starts_with(
                "GET /api2/json/nodes/pve/tasks/UPID%3Apve%3A0003A2F1%3A0B8C9D12%3A66A1B2C3%3Avzdestroy%3A123%3Afelhom%40pve%21agent%3A/status HTTP/1.1"
            ),
            "{}",
            seen[5]
        );
    }

    #[tokio::test]
    async fn base_path_prefix_is_kept() {
        let srv = serve(vec![http(
            "200 OK",
            r#"{"data":{"version":"9.1.1","release":"9.1","repoid":"abc"}}"#,
        )])
        .await;
        let mut url = srv.url.clone();
        url.set_path("/pve/");
        let c = PveClient::new(config(url, TlsTrust::Pinned(srv.fingerprint))).unwrap();
        assert_eq!(c.version().await.unwrap().version, "9.1.1");
        let seen = srv.seen.lock().unwrap().clone();
        assert!(
            seen[0].starts_with("GET /pve/api2/json/version HTTP/1.1"),
            "{}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn pin_mismatch_fails_closed_naming_both() {
        let srv = serve(vec![http("200 OK", r#"{"data":{"version":"9"}}"#)]).await;
        let wrong = CertFingerprint([0xAB; 32]);
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(wrong))).unwrap();
        let e = c.version().await.unwrap_err();
        let ApiError::Certificate {
            expected,
            presented,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!((*expected, *presented), (Some(wrong), srv.fingerprint));
        assert!(!e.is_transient(), "a refused certificate is never retried");
        let message = e.to_string();
        assert!(message.contains(&wrong.to_string()), "{message}");
        assert!(message.contains(&srv.fingerprint.to_string()), "{message}");
        assert!(message.contains("pvenode cert info"), "{message}");
        assert!(
            srv.seen.lock().unwrap().is_empty(),
            "no request reached the server"
        );
        // The client sends nothing more to that server: the same error, no new connection
        // (the scripted server would have answered a second one).
        let srv2 = serve(vec![http("200 OK", r#"{"data":{"version":"9"}}"#)]).await;
        assert_eq!(c.refused_certificate(), Some(e.clone()));
        assert_eq!(
            c.task_status(
                &"UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzdestroy:123:felhom@pve!agent:"
                    .parse()
                    .unwrap()
            )
            .await
            .unwrap_err(),
            e
        );
        drop(srv2);
    }

    #[tokio::test]
    async fn connect_refused_is_not_sent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url: Url = format!("https://127.0.0.1:{port}").parse().unwrap();
        let c = PveClient::new(config(url, TlsTrust::Pinned(CertFingerprint([1; 32])))).unwrap();
        let e = c.version().await.unwrap_err();
        assert!(
            matches!(
                e,
                ApiError::Transport {
                    maybe_sent: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_transient());
    }

    /// Records what an observer is told.
    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(String, Option<u16>)>>,
        tasks: Mutex<Vec<(String, crate::durations::Bracket)>>,
    }
    impl crate::observe::Observer for Seen {
        fn request(&self, endpoint: &str, status: Option<u16>, _: Duration) {
            self.requests
                .lock()
                .unwrap()
                .push((endpoint.to_string(), status));
        }
        fn task_duration(&self, task_type: &str, expected: crate::durations::Bracket) {
            self.tasks
                .lock()
                .unwrap()
                .push((task_type.to_string(), expected));
        }
    }

    #[tokio::test]
    async fn the_observer_sees_route_templates_statuses_and_task_durations() {
        let upid = "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzstart:1103:felhom@pve!agent:";
        let srv = serve(vec![
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("500 got timeout", ""),
            http("200 OK", &format!(r#"{{"data":"{upid}"}}"#)),
            http(
                "200 OK",
                r#"{"data":{"status":"stopped","exitstatus":"OK"}}"#,
            ),
        ])
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        let seen = Arc::new(Seen::default());
        c.clone().set_observer(seen.clone());
        let vmid = Vmid::try_from(1103).unwrap();
        c.lxc_status("pve", vmid).await.unwrap();
        assert!(c.lxc_status("pve", vmid).await.is_err());
        let u = c.lxc_start("pve", vmid).await.unwrap();
        let fast = WaitOptions {
            first_poll: Duration::from_millis(1),
            min_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            ..WaitOptions::default()
        };
        c.wait_task(&u, &fast).await.unwrap();
        // Nothing listens: a request that got no answer has no status.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url: Url = format!("https://127.0.0.1:{port}").parse().unwrap();
        let closed = PveClient::new(config(url, TlsTrust::Pinned(srv.fingerprint))).unwrap();
        closed.set_observer(seen.clone());
        assert!(closed.version().await.is_err());
        let requests = seen.requests.lock().unwrap().clone();
        let want = |e: &str, s: Option<u16>| (e.to_string(), s);
        assert_eq!(
            requests[..4],
            [
                want("GET /nodes/{node}/lxc/{vmid}/status/current", Some(200)),
                want("GET /nodes/{node}/lxc/{vmid}/status/current", Some(500)),
                want("POST /nodes/{node}/lxc/{vmid}/status/start", Some(200)),
                want("GET /nodes/{node}/tasks/{upid}/status", Some(200)),
            ]
        );
        assert_eq!(requests.len(), 5, "{requests:?}");
        assert_eq!(requests[4], want("GET /version", None));
        let tasks = seen.tasks.lock().unwrap().clone();
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0].0, "vzstart");
        assert_eq!(Some(tasks[0].1), c.durations().expected("vzstart"));
    }

    #[tokio::test]
    async fn wait_task_outcomes() {
        let upid: Upid = "UPID:pve:0003A2F1:0B8C9D12:66A1B2C3:vzrestore:123:felhom@pve!agent:"
            .parse()
            .unwrap();
        let fast = WaitOptions {
            first_poll: Duration::from_millis(1),
            min_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            ..WaitOptions::default()
        };
        // Not visible yet (400), a lock-free 503, running, then WARNINGS = success.
        let srv = serve(vec![
            http("400 Parameter verification failed.", r#"{"data":null,"errors":{"upid":"no such task\n"},"message":"Parameter verification failed.\n"}"#),
            http("503 Service Unavailable", ""),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"stopped","exitstatus":"WARNINGS: 1"}}"#),
        ])
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        let before = std::time::Instant::now();
        let out = c.wait_task(&upid, &fast).await.unwrap();
        assert_eq!(
            (out.exitstatus.as_str(), out.warnings, out.polls),
            ("WARNINGS: 1", 1, 4)
        );
        assert!(out.ended_by > before && out.ended_by <= std::time::Instant::now());
        assert_eq!(c.stats().task_polls, 4);

        // Failure: the log tail comes along; a long log is read from its end.
        let lines: Vec<String> = (1..=20)
            .map(|n| format!(r#"{{"n":{n},"t":"line {n}"}}"#))
            .collect();
        let srv = serve(vec![
            http(
                "200 OK",
                r#"{"data":{"status":"stopped","exitstatus":"unable to restore CT 123 - boom"}}"#,
            ),
            http("200 OK", r#"{"data":[{"n":1,"t":"first"}],"total":5000}"#),
            http(
                "200 OK",
                &format!(r#"{{"data":[{}],"total":5000}}"#, lines.join(",")),
            ),
        ])
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        let e = c.wait_task(&upid, &fast).await.unwrap_err();
        let ApiError::TaskFailed {
            exitstatus,
            log_tail,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(exitstatus, "unable to restore CT 123 - boom");
        assert_eq!(log_tail.len(), 20);
        assert_eq!(log_tail[19], "line 20");
        let seen = srv.seen.lock().unwrap().clone();
        assert!(seen[1].contains("/log?start=0&limit=200 "), "{}", seen[1]);
        assert!(seen[2].contains("/log?start=4980&limit=20 "), "{}", seen[2]);

        // A permission error ends the wait at once; a deadline ends an endless task.
        let srv = serve(vec![
            http("403 Permission check failed (/nodes/pve, Sys.Audit)", ""),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
            http("200 OK", r#"{"data":{"status":"running"}}"#),
        ])
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::Pinned(srv.fingerprint))).unwrap();
        assert!(matches!(
            c.wait_task(&upid, &fast).await,
            Err(ApiError::Permission { .. })
        ));
        let short = WaitOptions {
            first_poll: Duration::from_millis(1),
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(20),
            deadline: Duration::from_millis(70),
            ..WaitOptions::default()
        };
        let e = c.wait_task(&upid, &short).await.unwrap_err();
        assert!(matches!(e, ApiError::TaskTimeout { .. }), "{e:?}");
        assert!(!e.is_transient());
    }

    #[tokio::test]
    async fn ca_file_trust() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pve-api-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let srv = serve_with(
            leaf.der().clone(),
            key,
            vec![http("200 OK", r#"{"data":{"version":"9.1.1"}}"#)],
        )
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::CaFile(ca_path.clone()))).unwrap();
        assert_eq!(c.version().await.unwrap().version, "9.1.1");

        // A CA that did not sign the server's certificate: refused, nothing sent.
        let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
        let other_path = dir.join("other.pem");
        std::fs::write(&other_path, other.cert.pem()).unwrap();
        let srv = serve_with(
            leaf.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            vec![http("200 OK", r#"{"data":{"version":"9.1.1"}}"#)],
        )
        .await;
        let c = PveClient::new(config(srv.url.clone(), TlsTrust::CaFile(other_path))).unwrap();
        let e = c.version().await.unwrap_err();
        assert!(
            matches!(
                &e,
                ApiError::Certificate {
                    expected: None,
                    presented,
                    ..
                } if *presented == CertFingerprint::of(leaf.der())
            ),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert!(e.to_string().contains("pvenode cert info"), "{e}");
        assert!(srv.seen.lock().unwrap().is_empty());

        // Missing and empty CA files are refused at construction.
        let missing = PveClient::new(config(
            srv.url.clone(),
            TlsTrust::CaFile(dir.join("nope.pem")),
        ));
        assert!(matches!(missing, Err(ApiError::InvalidInput { .. })));
        let empty_path = dir.join("empty.pem");
        std::fs::write(&empty_path, "").unwrap();
        let empty = PveClient::new(config(srv.url.clone(), TlsTrust::CaFile(empty_path)));
        assert!(matches!(empty, Err(ApiError::InvalidInput { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
