//! The loopback SSH endpoint of a real guest: a port on 127.0.0.1 whose connections are
//! forwarded to the guest's own sshd on port 22, so felhom's SSH step keeps its contract
//! (`GET /felhom-sim/guests/{vmid}/ssh` → `{"host":"127.0.0.1","port":N}`) and does a real
//! handshake with the key the guest made for itself.
//!
//! The guest's address exists only inside the bridge's network namespace. Each connection
//! is made by a short-lived thread that enters that namespace (`setns`) and connects; a
//! socket stays in the namespace it was created in, so the thread hands it back and exits,
//! and no thread of the async runtime ever changes namespace.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::ssh::SshEndpoint;

/// Where a guest's sshd is right now: the bridge namespace and the leased address. Asked
/// again for every connection (the lease may arrive after the endpoint is up).
pub type Target = Arc<dyn Fn() -> Option<(PathBuf, std::net::IpAddr)> + Send + Sync>;

/// Connect to `addr` from inside the network namespace pinned at `ns`.
fn connect_in(ns: PathBuf, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    std::thread::Builder::new()
        .name("felhom-sim-netns-connect".into())
        .spawn(move || {
            let f = std::fs::File::open(&ns)?;
            // SAFETY: a valid namespace descriptor; only this short-lived thread changes
            // namespace, and it exits right after the connect.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns connect thread panicked"))?
}

/// Serve a forwarding endpoint on a fresh loopback port.
pub async fn serve(target: Target) -> std::io::Result<SshEndpoint> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let target = target.clone();
            tokio::spawn(async move {
                // No lease yet, or sshd not listening: the client sees the connection close,
                // as it would when the guest's port 22 refuses it.
                let Some((ns, ip)) = target() else {
                    return;
                };
                let addr = SocketAddr::new(ip, 22);
                let Ok(Ok(outbound)) =
                    tokio::task::spawn_blocking(move || connect_in(ns, addr)).await
                else {
                    return;
                };
                if outbound.set_nonblocking(true).is_err() {
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    Ok(SshEndpoint::new(port, task))
}
