//! Prove a guest's SSH host key with a real SSH handshake (bring-up step 8, finding F3).
//!
//! The key exchange only completes if the server signs the exchange hash with the private
//! half of the host key it presents, so a completed handshake proves the guest holds that
//! key. felhom authenticates nothing and disconnects right after the key exchange: it only
//! learns the host key's SHA-256 fingerprint (as `ssh-keygen -lf` prints it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no SSH server answers at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("SSH handshake with {addr} failed: {message}")]
    Handshake { addr: String, message: String },
}

struct KeyCatcher {
    key: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for KeyCatcher {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        Ok(true)
    }
}

/// The host key an SSH server at `host:port` proves it holds, as `SHA256:…`.
pub async fn host_key_fingerprint(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let addr = format!("{host}:{port}");
    let caught = Arc::new(Mutex::new(None));
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(timeout),
        ..Default::default()
    });
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| ProbeError::Unreachable {
            addr: addr.clone(),
            message: "connect timed out".into(),
        })?
        .map_err(|e| ProbeError::Unreachable {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
    let handshake = client::connect_stream(
        config,
        stream,
        KeyCatcher {
            key: caught.clone(),
        },
    );
    let handle = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ProbeError::Handshake {
            addr: addr.clone(),
            message: "timed out".into(),
        })?
        .map_err(|e| ProbeError::Handshake {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            "felhom host-key probe",
            "en",
        )
        .await;
    let key = caught.lock().unwrap_or_else(|p| p.into_inner()).take();
    let key = key.ok_or_else(|| ProbeError::Handshake {
        addr: addr.clone(),
        message: "server presented no host key".into(),
    })?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}
