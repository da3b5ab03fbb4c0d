//! Destroy: a guest's container, NICs, leases and volume directories go; and the sweep of
//! volume directories the state no longer has.

use super::*;

impl Lxc {
    /// Remove everything of a guest: a running container is killed, its NICs unplugged, its
    /// leases forgotten by dnsmasq, its LXC directory and the directories of `volumes`
    /// removed.
    pub fn destroy(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        volumes: &[String],
    ) -> Result<Vec<String>, RuntimeError> {
        let mut log = Vec::new();
        if self.running_pid(vmid).is_some() {
            self.kill(vmid)?;
            self.wait_stopped(vmid, Duration::from_secs(15));
            log.push(format!("container {vmid} killed"));
        }
        lock(&self.pids).remove(&vmid);
        lock(&self.boots).remove(&vmid);
        self.unplug(vmid, conf);
        let mut by_bridge: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, net) in nets(conf) {
            if let (Some(b), Some(m)) = (net.bridge, net.hwaddr) {
                by_bridge.entry(b).or_default().push(m.to_string());
            }
        }
        for (bridge, macs) in by_bridge {
            if let Some(b) = lock(&self.bridges).get_mut(&bridge) {
                b.dhcp.purge(&macs)?;
            } else {
                // No server runs for this bridge now: edit its lease file directly.
                let file = self.dhcp_dir.join(format!("{bridge}.leases"));
                if let Ok(text) = std::fs::read_to_string(&file) {
                    let kept: String = text
                        .lines()
                        .filter(|l| {
                            let mac = l.split_whitespace().nth(1).unwrap_or("");
                            !macs.iter().any(|m| m.eq_ignore_ascii_case(mac))
                        })
                        .map(|l| format!("{l}\n"))
                        .collect();
                    std::fs::write(&file, kept)
                        .map_err(io_err(format!("rewrite {}", file.display())))?;
                }
            }
        }
        remove_tree(&self.ct_dir(vmid))?;
        let _ = std::fs::remove_file(self.lock_dir().join(format!(".{vmid}")));
        for v in volumes {
            if let Ok(d) = self.volume_dir(v) {
                remove_tree(&d)?;
                log.push(format!("removed volume {v}"));
            }
        }
        Ok(log)
    }

    /// Remove the directories of volumes the state no longer has (a failed restore, a
    /// destroy, a simulator that stopped in between), and empty storage directories.
    pub fn collect_volumes(&self, keep: &[String]) -> Result<(), RuntimeError> {
        let Ok(storages) = std::fs::read_dir(&self.vol_dir) else {
            return Ok(());
        };
        for s in storages.flatten() {
            let storage = s.file_name().to_string_lossy().into_owned();
            for v in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
                let volid = format!("{storage}:{}", v.file_name().to_string_lossy());
                if !keep.contains(&volid) {
                    remove_tree(&v.path())?;
                }
            }
            let _ = std::fs::remove_dir(s.path());
        }
        Ok(())
    }
}
