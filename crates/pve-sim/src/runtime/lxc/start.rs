//! Start: the bridges and NICs a guest is plugged into, the start-time setup, the LXC
//! config PVE's `update_lxc_config` would write (rendered here), `lxc-start`, and the boot
//! watcher that records when the guest reached its milestones.

use super::*;

impl Lxc {
    // ---- networks -----------------------------------------------------------------------

    pub(super) fn ensure_bridge(
        &self,
        bridge: &str,
        idx: usize,
    ) -> Result<(String, Subnet), RuntimeError> {
        if !safe_name(bridge) || bridge.len() > 15 {
            return Err(RuntimeError::Guest(format!(
                "bridge '{bridge}' cannot be an interface name"
            )));
        }
        let mut b = lock(&self.bridges);
        if let Some(x) = b.get(bridge) {
            return Ok((x.ns.clone(), x.subnet));
        }
        let ns = netns::name(&self.sim_id, bridge);
        let subnet = Subnet {
            second: u8::try_from(77 + idx).unwrap_or(255),
        };
        netns::ensure(&ns, bridge, &subnet.gateway_cidr())?;
        let dhcp = Dnsmasq::start(&self.dhcp_dir, &ns, bridge, subnet)?;
        b.insert(
            bridge.to_string(),
            BridgeNet {
                ns: ns.clone(),
                subnet,
                dhcp,
            },
        );
        Ok((ns, subnet))
    }

    fn take_nics(&self, vmid: u32, conf: &BTreeMap<String, String>) -> Vec<StartedNic> {
        if let Some(n) = lock(&self.nics).remove(&vmid) {
            return n;
        }
        nets(conf)
            .into_iter()
            .filter_map(|(n, net)| {
                let bridge = net.bridge.clone()?;
                Some(StartedNic {
                    ns: netns::name(&self.sim_id, &bridge),
                    bridge,
                    host_end: format!("veth{vmid}i{n}"),
                    peer: self.peer_name(vmid, n),
                    mac: net.hwaddr?.to_string(),
                })
            })
            .collect()
    }

    pub(super) fn unplug(&self, vmid: u32, conf: &BTreeMap<String, String>) {
        for n in self.take_nics(vmid, conf) {
            netns::del_veth(&n.ns, &n.host_end, &n.peer);
        }
    }

    // ---- start --------------------------------------------------------------------------

    /// Start a guest: NICs, start-time setup, LXC config, `lxc-start`. `bridges` is the
    /// node's bridge list (its order picks each bridge's subnet). Returns the task log.
    pub fn start(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        bridges: &[String],
    ) -> Result<Vec<String>, RuntimeError> {
        if let Some(pid) = self.running_pid(vmid) {
            // A simulator restarted while the container kept running.
            return Ok(vec![format!(
                "container {vmid} already running (pid {pid})"
            )]);
        }
        let (uid, gid, unprivileged) = Self::ids(conf);
        let rootfs = self.rootfs_dir(conf)?;
        if !rootfs.is_dir() {
            return Err(RuntimeError::Guest(format!(
                "rootfs {} does not exist",
                rootfs.display()
            )));
        }
        let hostname = conf
            .get("hostname")
            .cloned()
            .unwrap_or_else(|| format!("CT{vmid}"));
        let mut log = Vec::new();
        let mut started = Vec::new();
        let mut nic_setup = Vec::new();
        let mut net_lines = String::new();
        let result = (|| -> Result<(), RuntimeError> {
            for (n, net) in nets(conf) {
                // The workers check this before the runtime is asked (`tasks.rs`); a reboot
                // finds it here, after the stop, as PVE's `vm_start` would.
                let bridge = net.bridge.clone().unwrap_or_default();
                let idx = bridges
                    .iter()
                    .position(|b| *b == bridge)
                    .ok_or_else(|| RuntimeError::Guest(pve_api::texts::bridge_missing(&bridge)))?;
                let mac = net
                    .hwaddr
                    .as_ref()
                    .map(|m| m.to_string().to_ascii_lowercase())
                    .ok_or_else(|| RuntimeError::Guest(format!("net{n}: no hwaddr")))?;
                let mtu = net.other.get("mtu").cloned();
                let (ns, _) = self.ensure_bridge(&bridge, idx)?;
                let nic = StartedNic {
                    ns: ns.clone(),
                    bridge: bridge.clone(),
                    host_end: format!("veth{vmid}i{n}"),
                    peer: self.peer_name(vmid, n),
                    mac: mac.clone(),
                };
                netns::add_veth(&ns, &bridge, &nic.host_end, &nic.peer, &mac, mtu.as_deref())?;
                started.push(nic.clone());
                net_lines.push_str(&format!(
                    "lxc.net.{n}.type = phys\nlxc.net.{n}.link = {}\nlxc.net.{n}.name = {}\nlxc.net.{n}.hwaddr = {mac}\n",
                    nic.peer, net.name
                ));
                if let Some(m) = &mtu {
                    net_lines.push_str(&format!("lxc.net.{n}.mtu = {m}\n"));
                }
                nic_setup.push(Nic {
                    name: net.name.clone(),
                    ip: net.ip.clone(),
                    gw: net.other.get("gw").cloned(),
                    ip6: net.other.get("ip6").cloned(),
                    gw6: net.other.get("gw6").cloned(),
                });
                log.push(format!(
                    "net{n}: {} ({mac}) on {bridge} (host end {} in netns {ns})",
                    net.name, nic.host_end
                ));
            }
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let (host_search, host_ns) = setup::host_dns(&host);
            let searchdomain = conf.get("searchdomain").cloned().or(host_search);
            let nameservers = match conf.get("nameserver") {
                Some(n) => n
                    .split([' ', ',', ';'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => host_ns,
            };
            let root = GuestRoot::open(&rootfs, uid, gid)
                .map_err(io_err(format!("open {}", rootfs.display())))?;
            log.extend(
                setup::apply(
                    &root,
                    &StartSetup {
                        hostname: hostname.clone(),
                        searchdomain,
                        nameservers,
                        nics: nic_setup.clone(),
                    },
                )
                .map_err(io_err("start-time setup of the rootfs"))?,
            );
            let mounts = self.mount_entries(conf, uid, gid)?;
            let config = self.render_config(vmid, conf, &hostname, &rootfs, &net_lines, &mounts)?;
            let dir = self.ct_dir(vmid);
            mkdir(&dir, 0o755)?;
            std::fs::write(dir.join("config"), config)
                .map_err(io_err(format!("write {}", dir.join("config").display())))?;
            let _ = std::fs::remove_file(dir.join("lxc.log"));
            let mut c = self.lxc_cmd("lxc-start", vmid)?;
            c.arg("-d");
            if let Err(e) = run(&mut c) {
                let tail = std::fs::read_to_string(dir.join("lxc.log")).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(8).collect();
                return Err(RuntimeError::Guest(format!(
                    "startup for container '{vmid}' failed: {e}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            Ok(())
        })();
        if let Err(e) = result {
            for n in &started {
                netns::del_veth(&n.ns, &n.host_end, &n.peer);
            }
            return Err(e);
        }
        let pid = self.query_pid(vmid).ok_or_else(|| {
            RuntimeError::Guest(format!(
                "startup for container '{vmid}' failed: no init process after lxc-start"
            ))
        })?;
        lock(&self.pids).insert(vmid, pid);
        let lease_mac = started.first().map(|n| (n.bridge.clone(), n.mac.clone()));
        lock(&self.nics).insert(vmid, started);
        self.watch_boot(vmid, pid, lease_mac);
        log.push(format!(
            "container {vmid} started: init pid {pid}{}",
            if unprivileged { ", unprivileged" } else { "" }
        ));
        Ok(log)
    }

    /// `lxc.mount.entry` lines for the `mpN` volumes (each its own directory, owned by the
    /// guest's root when new).
    fn mount_entries(
        &self,
        conf: &BTreeMap<String, String>,
        uid: u32,
        gid: u32,
    ) -> Result<String, RuntimeError> {
        let mut out = String::new();
        let mut mps: Vec<(u32, pve_api::MountConfig)> = conf
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix("mp")?.parse().ok()?,
                    pve_api::MountConfig::parse_mp(v).ok()?,
                ))
            })
            .collect();
        mps.sort_by_key(|(n, _)| *n);
        for (n, m) in mps {
            let Some(path) = m.mp.as_deref() else {
                continue;
            };
            if path.contains(|c: char| c.is_whitespace() || c == '\\') {
                return Err(RuntimeError::Guest(format!(
                    "mp{n}: mount path '{path}' cannot be written as an lxc.mount.entry"
                )));
            }
            let src = if m.volume.starts_with('/') {
                PathBuf::from(&m.volume)
            } else {
                let d = self.volume_dir(&m.volume)?;
                if !d.exists() {
                    mkdir(&d, 0o755)?;
                    chown(&d, uid, gid)?;
                }
                d
            };
            out.push_str(&format!(
                "lxc.mount.entry = {} {} none rbind,create=dir 0 0\n",
                src.display(),
                path.trim_start_matches('/')
            ));
        }
        Ok(out)
    }

    /// The LXC config, in the order and with the keys PVE's `update_lxc_config` writes for
    /// the guest (see the module doc for the departures).
    fn render_config(
        &self,
        vmid: u32,
        conf: &BTreeMap<String, String>,
        hostname: &str,
        rootfs: &Path,
        net_lines: &str,
        mounts: &str,
    ) -> Result<String, RuntimeError> {
        let (_, _, unprivileged) = Self::ids(conf);
        let feats = features(conf);
        let word = |k: &str, dflt: &str| -> Result<String, RuntimeError> {
            let v = conf.get(k).map(String::as_str).unwrap_or(dflt);
            if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !v.is_empty() {
                Ok(v.to_string())
            } else {
                Err(RuntimeError::Guest(format!("{k} '{v}' is not supported")))
            }
        };
        let arch = word("arch", "amd64")?;
        let ostype = word("ostype", "debian")?;
        let inc = |kind: &str| {
            let p = Path::new(LXC_CONFIG_DIR).join(format!("{ostype}.{kind}.conf"));
            if p.is_file() {
                p
            } else {
                Path::new(LXC_CONFIG_DIR).join(format!("{kind}.conf"))
            }
        };
        let tty: u32 = conf.get("tty").and_then(|t| t.parse().ok()).unwrap_or(2);
        let dir = self.ct_dir(vmid);
        let mut c = format!(
            "# written by pve-sim's lxc runtime for CT {vmid}, as PVE's update_lxc_config would\nlxc.arch = {arch}\nlxc.include = {}\n",
            inc("common").display()
        );
        if unprivileged {
            c.push_str(&format!("lxc.include = {}\n", inc("userns").display()));
        }
        c.push_str("lxc.monitor.unshare = 1\n");
        if unprivileged {
            c.push_str(&format!(
                "lxc.idmap = u 0 {ID_SHIFT} {ID_COUNT}\nlxc.idmap = g 0 {ID_SHIFT} {ID_COUNT}\n"
            ));
            c.push_str("lxc.mount.auto = sys:mixed\n");
            c.push_str("lxc.cap.drop = sys_rawio sys_module\n");
        }
        if is_on(feats.get("nesting")) {
            c.push_str(&format!(
                "lxc.include = {}\nlxc.apparmor.allow_nesting = 1\n",
                Path::new(LXC_CONFIG_DIR).join("nesting.conf").display()
            ));
        }
        c.push_str("lxc.apparmor.profile = unconfined\n");
        if unprivileged && !is_on(feats.get("keyctl")) {
            // PVE's rule for unprivileged guests without keyctl=1: keyctl(2) fails ENOSYS.
            let base = std::fs::read_to_string(Path::new(LXC_CONFIG_DIR).join("common.seccomp"))
                .map_err(io_err("read LXC's common.seccomp"))?;
            let profile = dir.join("seccomp");
            mkdir(&dir, 0o755)?;
            std::fs::write(&profile, format!("{}\nkeyctl errno 38\n", base.trim_end()))
                .map_err(io_err(format!("write {}", profile.display())))?;
            c.push_str(&format!("lxc.seccomp.profile = {}\n", profile.display()));
        }
        c.push_str(&format!(
            "lxc.tty.max = {tty}\nlxc.environment = TERM=linux\nlxc.uts.name = {hostname}\nlxc.rootfs.path = dir:{}\n",
            rootfs.display()
        ));
        c.push_str(net_lines);
        c.push_str(mounts);
        // Raw lxc.* keys (only ever set by root, as PVE takes them only from root).
        for (k, v) in conf.iter().filter(|(k, _)| k.starts_with("lxc.")) {
            if v.contains(['\n', '\r']) {
                continue;
            }
            c.push_str(&format!("{k} = {v}\n"));
        }
        c.push_str(&format!(
            "lxc.log.file = {}\nlxc.log.level = WARN\n",
            dir.join("lxc.log").display()
        ));
        Ok(c)
    }

    /// Record when this boot reaches its milestones: the first lease in dnsmasq's file, and
    /// systemd's answer to `is-system-running --wait`. Two plain threads, each ending with
    /// its milestone, the guest's end, or two minutes.
    fn watch_boot(&self, vmid: u32, pid: i32, lease_mac: Option<(String, String)>) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        lock(&self.boots).insert(
            vmid,
            BootTimes {
                generation,
                started_at_ms: now_ms(),
                ..BootTimes::default()
            },
        );
        let t0 = Instant::now();
        let limit = Duration::from_secs(120);
        let record = {
            let boots = self.boots.clone();
            move |f: &dyn Fn(&mut BootTimes)| {
                if let Some(b) = lock(&boots).get_mut(&vmid) {
                    if b.generation == generation {
                        f(b);
                    }
                }
            }
        };
        if let Some((bridge, mac)) = lease_mac {
            let file = self.dhcp_dir.join(format!("{bridge}.leases"));
            let record = record.clone();
            let _ = std::thread::Builder::new()
                .name(format!("felhom-sim-lease-{vmid}"))
                .spawn(move || {
                    while t0.elapsed() < limit && alive(pid) {
                        if dhcp::read_leases(&file).iter().any(|l| l.mac == mac) {
                            let secs = t0.elapsed().as_secs_f64();
                            record(&|b| b.lease_secs = Some(secs));
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
        }
        let _ = std::thread::Builder::new()
            .name(format!("felhom-sim-boot-{vmid}"))
            .spawn(move || {
                let socket = PathBuf::from(format!("/proc/{pid}/root/run/systemd/private"));
                while !socket.exists() {
                    if t0.elapsed() > limit || !alive(pid) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let mut c = cmd("nsenter");
                c.args(["-t", &pid.to_string(), "-a", "--"])
                    .args(["systemctl", "is-system-running", "--wait"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                let Ok(mut child) = c.spawn() else {
                    return;
                };
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if t0.elapsed() < limit => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return;
                        }
                    }
                }
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut out);
                }
                let secs = t0.elapsed().as_secs_f64();
                let state = out.trim().to_string();
                record(&|b| {
                    b.systemd_secs = Some(secs);
                    b.systemd_state = Some(state.clone());
                });
            });
    }
}
