//! The DHCP server of one simulated bridge: dnsmasq inside the bridge's network namespace,
//! DHCP only (its DNS is off), its lease file under the state dir. A guest's address is
//! whatever its own DHCP client got from it, as on a PVE host with a DHCP server on the LAN.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::netns;
use super::proc::{alive, cmd, describe};
use super::{io_err, RuntimeError};

/// Stop the dnsmasq a killed simulator left for a bridge (found by its pid file, and only if
/// that process serves `lease_file`: a recycled pid is left alone), and remove the pid file.
fn stop_left_over(pid_file: &Path, lease_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    if let Ok(pid) = text.trim().parse::<i32>() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*lease_file.to_string_lossy());
        if ours {
            // SAFETY: kill has no memory-safety preconditions; the process is our dnsmasq.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Stop every dnsmasq a killed simulator left in `dir` for a bridge not in `keep`.
pub fn stop_left_over_except(dir: &Path, keep: &[String]) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(bridge) = name.strip_suffix(".pid") else {
            continue;
        };
        if !keep.iter().any(|k| k == bridge) {
            stop_left_over(&e.path(), &dir.join(format!("{bridge}.leases")));
        }
    }
}

/// One lease line of dnsmasq's lease file: `expiry mac ip hostname client-id`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub expiry: u64,
    /// Lower case, as dnsmasq writes it.
    pub mac: String,
    pub ip: String,
    pub hostname: String,
}

/// The addresses one bridge hands out: `10.<second>.0.0/16`, the server on `.0.1`.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    pub second: u8,
}

impl Subnet {
    pub fn gateway_cidr(self) -> String {
        format!("10.{}.0.1/16", self.second)
    }
    fn range(self) -> String {
        format!("10.{s}.0.2,10.{s}.255.254,255.255.0.0,12h", s = self.second)
    }
}

pub struct Dnsmasq {
    ns: String,
    bridge: String,
    subnet: Subnet,
    pub lease_file: PathBuf,
    pid_file: PathBuf,
    log_file: PathBuf,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Start dnsmasq for `bridge` in `ns`, first stopping one a killed simulator left behind
    /// (found by its pid file and its lease file on its command line).
    pub fn start(
        dir: &Path,
        ns: &str,
        bridge: &str,
        subnet: Subnet,
    ) -> Result<Dnsmasq, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut d = Dnsmasq {
            ns: ns.into(),
            bridge: bridge.into(),
            subnet,
            lease_file: dir.join(format!("{bridge}.leases")),
            pid_file: dir.join(format!("{bridge}.pid")),
            log_file: dir.join(format!("{bridge}.log")),
            child: None,
        };
        d.stop_stale();
        d.spawn()?;
        Ok(d)
    }

    fn stop_stale(&self) {
        stop_left_over(&self.pid_file, &self.lease_file);
    }

    fn spawn(&mut self) -> Result<(), RuntimeError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io_err(format!("open {}", self.log_file.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(format!("open {}", self.log_file.display())))?;
        let mut c = cmd("nsenter");
        c.arg(format!("--net={}", netns::path(&self.ns).display()))
            .arg("--")
            .arg("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                // DHCP only: no DNS, no /etc/hosts, no upstream servers.
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--except-interface=lo",
                "--dhcp-authoritative",
                // Every address here is handed out by this server alone, so the ping it
                // would send before offering one (and the 3 s wait for an answer, which
                // makes the client retransmit) protects nothing.
                "--no-ping",
                "--log-dhcp",
                "--log-facility=-",
                "--user=root",
                "--group=root",
            ])
            .arg(format!("--interface={}", self.bridge))
            .arg(format!("--dhcp-range={}", self.subnet.range()))
            .arg(format!("--dhcp-leasefile={}", self.lease_file.display()))
            .arg(format!("--pid-file={}", self.pid_file.display()))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let mut child = c
            .spawn()
            .map_err(io_err(format!("start `{}`", describe(&c))))?;
        // dnsmasq binds at once; if it cannot (bad interface, port in use) it exits at once.
        std::thread::sleep(Duration::from_millis(30));
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(RuntimeError::Command {
                command: describe(&c),
                status: status.to_string(),
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stop the server (SIGTERM, then wait).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill has no memory-safety preconditions; the child is ours.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            for _ in 0..200 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Forget the leases of `macs` (a destroyed guest's NICs). dnsmasq keeps its leases in
    /// memory and rewrites the file from there, so it is stopped, the lines are removed, and
    /// it is started again: a few milliseconds in which a DHCP request goes unanswered and is
    /// retried by the client.
    pub fn purge(&mut self, macs: &[String]) -> Result<(), RuntimeError> {
        let has = read_leases(&self.lease_file)
            .iter()
            .any(|l| macs.iter().any(|m| m.eq_ignore_ascii_case(&l.mac)));
        if !has {
            return Ok(());
        }
        self.stop();
        let text = std::fs::read_to_string(&self.lease_file).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|line| {
                let mac = line.split_whitespace().nth(1).unwrap_or("");
                !macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&self.lease_file, kept)
            .map_err(io_err(format!("rewrite {}", self.lease_file.display())))?;
        self.spawn()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The leases in a dnsmasq lease file (missing file: none).
pub fn read_leases(path: &Path) -> Vec<Lease> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let expiry = f.next()?.parse().ok()?;
            let mac = f.next()?.to_ascii_lowercase();
            let ip = f.next()?.to_string();
            let hostname = f.next().unwrap_or("*").to_string();
            // IPv6 lease lines (`duid …`) have no MAC in the second field.
            mac.contains(':').then_some(Lease {
                expiry,
                mac,
                ip,
                hostname,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(
            &p,
            "1795630520 bc:24:11:00:00:01 10.77.105.123 acme-app ff:11:00:00:01\nduid 00:01:00:01\n1795630521 BC:24:11:00:00:02 10.77.0.7 * *\n",
        )
        .unwrap();
        let l = read_leases(&p);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].ip, "10.77.105.123");
        assert_eq!(l[0].hostname, "acme-app");
        assert_eq!(l[1].mac, "bc:24:11:00:00:02");
        assert!(read_leases(&dir.path().join("missing")).is_empty());
    }
}
