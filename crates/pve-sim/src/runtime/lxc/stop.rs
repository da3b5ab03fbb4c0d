//! Stop and shutdown: `systemctl poweroff` in the guest, `lxc-stop -k` after the grace; whether
//! LXC considers a container stopped, and waiting for it.

use super::*;

impl Lxc {
    // ---- stop ---------------------------------------------------------------------------

    /// Power a guest off: `systemctl poweroff` inside, then `lxc-stop -k` if it is still up
    /// after `grace`. Unplugs its NICs. Returns the task log.
    pub fn stop(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        grace: Duration,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut log = Vec::new();
        if let Some(pid) = self.running_pid(vmid) {
            let t = Instant::now();
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-a", "--", "systemctl", "poweroff"]);
            let asked = run(&mut c).is_ok();
            while asked && alive(pid) && t.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(25));
            }
            if alive(pid) {
                log.push(format!(
                    "{}; lxc-stop -k",
                    if asked {
                        format!("still running after {:.0}s", grace.as_secs_f64())
                    } else {
                        "systemctl poweroff failed".to_string()
                    }
                ));
                self.kill(vmid)?;
            } else {
                log.push(format!(
                    "powered off in {:.2}s (systemctl poweroff)",
                    t.elapsed().as_secs_f64()
                ));
            }
            if !self.wait_stopped(vmid, Duration::from_secs(15)) {
                self.kill(vmid)?;
            }
        }
        lock(&self.pids).remove(&vmid);
        self.unplug(vmid, conf);
        Ok(log)
    }

    /// Is the container stopped as far as LXC is concerned (monitor gone)?
    fn stopped(&self, vmid: u32) -> bool {
        let Ok(mut c) = self.lxc_cmd("lxc-info", vmid) else {
            return true;
        };
        c.arg("-sH");
        match run(&mut c) {
            Ok(s) => s.trim() == "STOPPED",
            Err(_) => true,
        }
    }

    pub(super) fn wait_stopped(&self, vmid: u32, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.stopped(vmid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub(super) fn kill(&self, vmid: u32) -> Result<(), RuntimeError> {
        let mut c = self.lxc_cmd("lxc-stop", vmid)?;
        c.arg("-k");
        if let Err(e) = run(&mut c) {
            if !self.stopped(vmid) {
                return Err(e);
            }
        }
        Ok(())
    }
}
