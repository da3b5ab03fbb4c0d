//! A real SSH server per running guest that has host keys, on a loopback port: felhom's
//! bring-up proves the guest's key with a real handshake against it. Every authentication
//! is refused; only the key exchange matters.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

struct Refuse;

impl server::Handler for Refuse {
    type Error = russh::Error;
}

pub struct SshEndpoint {
    pub port: u16,
    task: JoinHandle<()>,
}

impl SshEndpoint {
    /// An endpoint whose accept loop is `task` (aborted when the endpoint is dropped).
    pub fn new(port: u16, task: JoinHandle<()>) -> SshEndpoint {
        SshEndpoint { port, task }
    }
}

impl Drop for SshEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(key: PrivateKey) -> std::io::Result<SshEndpoint> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let config = Arc::new(server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        inactivity_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(session) = server::run_stream(config, stream, Refuse).await {
                    let _ = session.await;
                }
            });
        }
    });
    Ok(SshEndpoint::new(port, task))
}
