//! The HTTP client: reqwest over rustls (ring), PVE's URL layout and envelope, error
//! classification, request counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url.as_str())
            .field("token", &self.token)
            .field("trust", &self.trust)
            .field("timeout", &self.timeout)
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
}

/// A PVE API client. Cheap to clone (shared connection pool and counters).
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
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
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
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
            }),
        })
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

    fn url(&self, full_path: &str) -> Result<Url, ApiError> {
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
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            message: chain(&e),
            maybe_sent: !e.is_connect(),
        })?;
        let status = resp.status();
        // PVE's own text is the reason phrase (`Permission check failed (…)`); hyper keeps a
        // non-canonical one as an extension, the canonical one is the fallback.
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok())
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let body = resp.bytes().await.map_err(|e| ApiError::Transport {
            message: chain(&e),
            maybe_sent: true,
        })?;
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
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.send(Method::POST, &format!("/api2/json{path}"), form, true)
            .await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.send(Method::PUT, &format!("/api2/json{path}"), form, true)
            .await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.send(Method::DELETE, &format!("/api2/json{path}"), query, true)
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
        let resp = self
            .inner
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| ApiError::Transport {
                message: chain(&e),
                maybe_sent: !e.is_connect(),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ApiError::Transport {
            message: chain(&e),
            maybe_sent: true,
        })?;
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
