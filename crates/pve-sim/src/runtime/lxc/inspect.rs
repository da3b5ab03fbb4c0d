//! What the API and the state dump read of real guests: init pids, `/interfaces` (`ip
//! --json addr` reshaped as PVE shows it), SSH endpoints, per-guest facts and the runtime's
//! summary.

use super::*;

impl Lxc {
    // ---- state --------------------------------------------------------------------------

    /// `lxc-info -pH`: the container's init pid, if it runs.
    pub(super) fn query_pid(&self, vmid: u32) -> Option<i32> {
        if !self.ct_dir(vmid).join("config").exists() {
            return None;
        }
        let mut c = self.lxc_cmd("lxc-info", vmid).ok()?;
        c.arg("-pH");
        run(&mut c).ok()?.trim().parse().ok()
    }

    /// The init pid of a running guest.
    pub fn running_pid(&self, vmid: u32) -> Option<i32> {
        if let Some(pid) = lock(&self.pids).get(&vmid).copied() {
            if alive(pid) {
                return Some(pid);
            }
        }
        let pid = self.query_pid(vmid);
        let mut pids = lock(&self.pids);
        match pid {
            Some(p) => {
                pids.insert(vmid, p);
            }
            None => {
                pids.remove(&vmid);
            }
        }
        pid
    }

    /// The cached init pid (no process is run: for `status/current`).
    pub fn cached_pid(&self, vmid: u32) -> Option<i32> {
        lock(&self.pids).get(&vmid).copied().filter(|p| alive(*p))
    }

    // ---- what the API and the state dump show ------------------------------------------

    /// `GET …/interfaces` of a running guest: `ip --json addr` inside its network
    /// namespace, reshaped as PVE does (pve-container `src/PVE/LXC.pm`; `docs/pve-fidelity.md`). `None` when it does not run.
    pub fn interfaces(&self, vmid: u32) -> Option<Value> {
        let pid = self.running_pid(vmid)?;
        let mut c = cmd("nsenter");
        c.args([
            "-t",
            &pid.to_string(),
            "-n",
            "--",
            "ip",
            "--json",
            "addr",
            "show",
        ]);
        let out = run(&mut c).ok()?;
        let links: Vec<Value> = serde_json::from_str(&out).ok()?;
        Some(Value::Array(links.iter().map(reshape_interface).collect()))
    }

    /// The leases of a guest's NICs in its bridges' lease files.
    fn leases_of(&self, conf: &BTreeMap<String, String>) -> Vec<Value> {
        nets(conf)
            .into_iter()
            .filter_map(|(_, n)| Some((n.bridge?, n.hwaddr?.to_string().to_ascii_lowercase())))
            .flat_map(|(bridge, mac)| {
                dhcp::read_leases(&self.dhcp_dir.join(format!("{bridge}.leases")))
                    .into_iter()
                    .filter(move |l| l.mac == mac)
                    .map(move |l| json!({ "bridge": bridge, "mac": l.mac, "ip": l.ip, "hostname": l.hostname, "expiry": l.expiry }))
            })
            .collect()
    }

    /// The static or leased IP of a guest's first NIC that has one, and the namespace it
    /// lives in (the SSH forward's target).
    pub fn ssh_target(
        &self,
        conf: &BTreeMap<String, String>,
    ) -> Option<(PathBuf, std::net::IpAddr)> {
        nets(conf).into_iter().find_map(|(_, n)| {
            let bridge = n.bridge?;
            let ns = netns::path(&netns::name(&self.sim_id, &bridge));
            // A static address is the guest's from boot (reachable when it lies in the
            // bridge's subnet); otherwise the lease.
            if let Some(ip) =
                n.ip.as_deref()
                    .and_then(|c| c.split_once('/'))
                    .and_then(|(a, _)| a.parse().ok())
            {
                return Some((ns, ip));
            }
            let mac = n.hwaddr?.to_string().to_ascii_lowercase();
            let lease = dhcp::read_leases(&self.dhcp_dir.join(format!("{bridge}.leases")))
                .into_iter()
                .find(|l| l.mac == mac)?;
            Some((ns, lease.ip.parse().ok()?))
        })
    }

    /// What the state dump shows of one guest, read from outside: its rootfs and files on
    /// disk, its init process, systemd's state inside, its leases. Runs a few short
    /// processes when the guest is running.
    pub fn facts(&self, vmid: u32, conf: &BTreeMap<String, String>) -> Value {
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf).ok();
        let root = rootfs
            .as_deref()
            .filter(|p| p.is_dir())
            .and_then(|p| GuestRoot::open(p, uid, gid).ok());
        let read = |p: &str| {
            root.as_ref()
                .and_then(|r| r.read(p).ok().flatten())
                .map(|s| s.trim().to_string())
        };
        let machine_id = read("etc/machine-id").filter(|m| !m.is_empty());
        let host_key = read("etc/ssh/ssh_host_ed25519_key.pub").and_then(|k| {
            russh::keys::PublicKey::from_openssh(&k)
                .ok()
                .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
        });
        let pid = self.running_pid(vmid);
        let in_guest = |args: &[&str]| -> Option<String> {
            let pid = pid?;
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-a", "--"]).args(args);
            proc::output(&mut c)
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let system_state = in_guest(&["systemctl", "is-system-running"]);
        let failed: Vec<String> = in_guest(&[
            "systemctl",
            "list-units",
            "--failed",
            "--plain",
            "--no-legend",
            "--no-pager",
        ])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
        let uts = pid.and_then(|pid| {
            let mut c = cmd("nsenter");
            c.args(["-t", &pid.to_string(), "-u", "--", "uname", "-n"]);
            run(&mut c).ok().map(|s| s.trim().to_string())
        });
        let veths: Vec<String> = nets(conf)
            .into_iter()
            .filter_map(|(n, net)| {
                let ns = netns::name(&self.sim_id, net.bridge.as_deref()?);
                let name = format!("veth{vmid}i{n}");
                netns::links(&ns).contains(&name).then_some(name)
            })
            .collect();
        let boot = lock(&self.boots).get(&vmid).cloned();
        json!({
            "container": vmid.to_string(),
            "config_dir": self.ct_dir(vmid),
            "config_exists": self.ct_dir(vmid).join("config").exists(),
            "rootfs": rootfs,
            "rootfs_exists": rootfs.as_deref().is_some_and(Path::is_dir),
            "unprivileged": unprivileged,
            "init_pid": pid,
            "system_state": system_state,
            "failed_units": failed,
            "uts_hostname": uts,
            "hostname_file": read("etc/hostname"),
            "machine_id": machine_id,
            "host_key_fingerprint": host_key,
            "leases": self.leases_of(conf),
            "veths": veths,
            "boot": boot,
        })
    }

    /// The runtime's own state for the dump: namespaces, DHCP servers and their leases,
    /// what is left in the container and volume directories.
    pub fn summary(&self) -> Value {
        let bridges: BTreeMap<String, Value> = lock(&self.bridges)
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    json!({
                        "netns": b.ns,
                        "subnet": format!("10.{}.0.0/16", b.subnet.second),
                        "dnsmasq_pid": b.dhcp.pid(),
                        "lease_file": b.dhcp.lease_file,
                        "links": netns::links(&b.ns),
                        "leases": dhcp::read_leases(&b.dhcp.lease_file),
                    }),
                )
            })
            .collect();
        let list = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let volumes: Vec<String> = list(&self.vol_dir)
            .into_iter()
            .flat_map(|s| {
                list(&self.vol_dir.join(&s))
                    .into_iter()
                    .map(move |v| format!("{s}:{v}"))
            })
            .collect();
        let peers: Vec<String> = {
            let out = run(cmd("ip").args(["-j", "link", "show"])).unwrap_or_default();
            serde_json::from_str::<Vec<Value>>(&out)
                .unwrap_or_default()
                .iter()
                .filter_map(|l| l["ifname"].as_str())
                .filter(|n| n.starts_with("fh") && n.len() == 15)
                .map(str::to_string)
                .collect()
        };
        json!({
            "sim_id": self.sim_id,
            "dir": self.root,
            "lxc_path": self.lxc_path,
            "run_dir": self.run_dir,
            "volumes_dir": self.vol_dir,
            "dhcp_dir": self.dhcp_dir,
            "bridges": bridges,
            "containers": list(&self.lxc_path),
            "volumes": volumes,
            "host_peers": peers,
        })
    }
}

/// One interface of `ip --json addr` as PVE's `/interfaces` shows it.
fn reshape_interface(l: &Value) -> Value {
    let name = l["ifname"].as_str().unwrap_or("");
    let mac = l["address"].as_str().unwrap_or("");
    let mut v = json!({ "name": name, "hwaddr": mac, "hardware-address": mac });
    let mut addrs = Vec::new();
    for a in l["addr_info"].as_array().into_iter().flatten() {
        let (Some(family), Some(local), Some(prefix)) = (
            a["family"].as_str(),
            a["local"].as_str(),
            a["prefixlen"].as_u64(),
        ) else {
            continue;
        };
        if family != "inet" && family != "inet6" {
            continue;
        }
        // The last address of each family, as PVE keeps it.
        v[family] = json!(format!("{local}/{prefix}"));
        addrs.push(json!({ "ip-address": local, "ip-address-type": family, "prefix": prefix }));
    }
    v["ip-addresses"] = json!(addrs);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_reshaped_as_pve_does() {
        let ip: Value = serde_json::from_str(r#"[{"ifindex":5,"ifname":"eth0","address":"bc:24:11:00:00:01","addr_info":[{"family":"inet","local":"10.77.105.123","prefixlen":16},{"family":"inet6","local":"fe80::be24:11ff:fe00:1","prefixlen":64}]}]"#).unwrap();
        let v = reshape_interface(&ip[0]);
        assert_eq!(v["name"], "eth0");
        assert_eq!(v["hwaddr"], "bc:24:11:00:00:01");
        assert_eq!(v["hardware-address"], "bc:24:11:00:00:01");
        assert_eq!(v["inet"], "10.77.105.123/16");
        assert_eq!(v["inet6"], "fe80::be24:11ff:fe00:1/64");
        assert_eq!(v["ip-addresses"][0]["ip-address-type"], "inet");
        assert_eq!(v["ip-addresses"][1]["prefix"], 64);
        // Before the lease: no `inet` key at all.
        let bare = json!({"ifname":"eth0","address":"bc:24:11:00:00:01","addr_info":[]});
        assert!(reshape_interface(&bare).get("inet").is_none());
    }
}
