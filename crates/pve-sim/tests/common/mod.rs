//! Shared test setup: an in-process simulator over real HTTPS, the real client pinned to
//! its certificate, and golden archives written with the real vzdump writer.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use pve_api::{
    ApiToken, CertFingerprint, ClientConfig, PveClient, Secret, TlsTrust, Vmid, WaitOptions,
};
use pve_sim::{SimConfig, SimHandle};

pub const GOLDEN: &str = "vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst";
pub const GOLDEN_VOLID: &str = "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst";
pub const GOLDEN_MAC: &str = "BC:24:11:63:43:F4";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim: Option<SimHandle>,
    pub client: PveClient,
    pub time_scale: f64,
}

pub fn pct_conf(extra: &str) -> String {
    format!("arch: amd64\ncores: 2\nfeatures: keyctl=1,nesting=1\nhostname: felhom-golden\nmemory: 2048\nnet0: name=eth0,bridge=vmbr0,hwaddr={GOLDEN_MAC},ip=dhcp,type=veth\nostype: debian\nrootfs: local-lvm:vm-9100-disk-0,size=8G\nswap: 512\nunprivileged: 1\n{extra}")
}

/// A golden archive: `keygen_unit` adds an enabled first-boot key unit, `key` bakes a host key.
pub fn write_golden(path: &Path, conf: &str, keygen_unit: bool, key: Option<&str>) {
    let mut w =
        vzdump::ArchiveWriter::create(path, vzdump::Compression::from_path(path).unwrap()).unwrap();
    w.pct_conf(conf).unwrap();
    w.dir("etc/ssh", 0o755).unwrap();
    w.file("etc/machine-id", 0o444, b"").unwrap();
    if keygen_unit {
        w.file("etc/systemd/system/keys.service", 0o644, b"[Unit]\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n[Install]\nWantedBy=multi-user.target\n").unwrap();
        w.symlink(
            "etc/systemd/system/multi-user.target.wants/keys.service",
            "/etc/systemd/system/keys.service",
        )
        .unwrap();
    }
    if let Some(k) = key {
        w.file("etc/ssh/ssh_host_ed25519_key", 0o600, k.as_bytes())
            .unwrap();
    }
    w.finish().unwrap();
}

pub fn client_for(sim: &SimHandle, token: &str, secret: &str) -> PveClient {
    PveClient::new(ClientConfig {
        base_url: sim.url.clone(),
        token: ApiToken::new(token.parse().unwrap(), Secret::new(secret.into())),
        trust: TlsTrust::Pinned(sim.fingerprint.parse::<CertFingerprint>().unwrap()),
        timeout: Duration::from_secs(30),
        max_body_bytes: pve_api::DEFAULT_MAX_BODY_BYTES,
    })
    .unwrap()
}

impl Env {
    pub async fn start(time_scale: f64, faults: &str) -> Env {
        Self::start_cluster(time_scale, faults, 1).await
    }

    /// A simulator of `nodes` nodes (`pve` for 1, `pve1`..`pveN` otherwise; `--nodes N`),
    /// with the golden on `local` (readable from every node).
    pub async fn start_cluster(time_scale: f64, faults: &str, nodes: usize) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let dump = pve_sim::dump_dir(dir.path(), "local");
        std::fs::create_dir_all(&dump).unwrap();
        write_golden(&dump.join(GOLDEN), &pct_conf(""), true, None);
        let names = pve_sim::cluster_node_names(&nodes.to_string()).unwrap();
        Self::boot(dir, time_scale, faults, names).await
    }

    async fn boot(
        dir: tempfile::TempDir,
        time_scale: f64,
        faults: &str,
        nodes: Vec<String>,
    ) -> Env {
        let sim = pve_sim::start(SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().to_path_buf(),
            node: "pve".into(),
            nodes,
            faults: faults.parse().unwrap(),
            time_scale,
            guests: Default::default(),
        })
        .await
        .unwrap();
        let secret = std::fs::read_to_string(dir.path().join("felhom-agent.token")).unwrap();
        let client = client_for(&sim, "felhom@pve!agent", secret.trim());
        Env {
            dir,
            sim: Some(sim),
            client,
            time_scale,
        }
    }

    pub fn sim(&self) -> &SimHandle {
        self.sim.as_ref().unwrap()
    }

    /// Stop and start the simulator on the same state dir.
    pub async fn restart(self) -> Env {
        self.restart_with("").await
    }

    /// Stop and start the simulator on the same state dir with these injected faults.
    pub async fn restart_with(mut self, faults: &str) -> Env {
        let sim = self.sim.take().unwrap();
        let (dir, ts) = (self.dir, self.time_scale);
        let nodes = sim_nodes(&sim);
        sim.shutdown().await;
        Self::boot(dir, ts, faults, nodes).await
    }

    /// Stop the simulator, let `edit` change its state dir, start it again.
    pub async fn restart_editing(mut self, edit: impl FnOnce(&Path)) -> Env {
        let sim = self.sim.take().unwrap();
        let nodes = sim_nodes(&sim);
        sim.shutdown().await;
        edit(self.dir.path());
        let (dir, ts) = (self.dir, self.time_scale);
        Self::boot(dir, ts, "", nodes).await
    }

    pub async fn state(&self) -> serde_json::Value {
        self.client
            .side_channel_get("/felhom-sim/state", self.sim().side_channel_secret())
            .await
            .unwrap()
    }

    pub async fn requests(&self) -> serde_json::Value {
        self.client
            .side_channel_get("/felhom-sim/requests", self.sim().side_channel_secret())
            .await
            .unwrap()
    }

    /// A token made through the simulator's side channel, with these grants.
    pub async fn token(&self, tokenid: &str, acl: serde_json::Value) -> PveClient {
        let body = serde_json::json!({ "userid": "narrow@pve", "tokenid": tokenid, "privsep": true, "acl": acl });
        let reply: serde_json::Value = self
            .client
            .side_channel_post(
                "/felhom-sim/tokens",
                &body,
                self.sim().side_channel_secret(),
            )
            .await
            .unwrap();
        client_for(
            self.sim(),
            &format!("narrow@pve!{tokenid}"),
            reply["secret"].as_str().unwrap(),
        )
    }

    /// Set a cluster fault through the side channel: `node_down:<node>` or `no_quorum`
    /// (`POST /felhom-sim/faults {"set": …}`). Answers the faults in force.
    pub async fn fault_set(&self, fault: &str) -> serde_json::Value {
        self.fault("set", fault).await
    }

    /// Clear a cluster fault (`POST /felhom-sim/faults {"clear": …}`).
    pub async fn fault_clear(&self, fault: &str) -> serde_json::Value {
        self.fault("clear", fault).await
    }

    async fn fault(&self, op: &str, fault: &str) -> serde_json::Value {
        self.client
            .side_channel_post(
                "/felhom-sim/faults",
                &serde_json::json!({ op: fault }),
                self.sim().side_channel_secret(),
            )
            .await
            .unwrap()
    }

    /// Offline-migrate a guest as `pct migrate` would (`POST /felhom-sim/migrate`).
    pub async fn migrate(
        &self,
        vmid: u32,
        node: &str,
    ) -> Result<serde_json::Value, pve_api::ApiError> {
        self.client
            .side_channel_post(
                "/felhom-sim/migrate",
                &serde_json::json!({ "vmid": vmid, "node": node }),
                self.sim().side_channel_secret(),
            )
            .await
    }

    /// [`Env::restore`] on a given node.
    pub async fn restore_on(
        &self,
        node: &str,
        vmid: u32,
        extra: &[(&str, &str)],
    ) -> Result<pve_api::TaskOutcome, pve_api::ApiError> {
        let mut params: Vec<(String, String)> = vec![
            ("vmid".into(), vmid.to_string()),
            ("ostemplate".into(), GOLDEN_VOLID.into()),
            ("restore".into(), "1".into()),
            ("storage".into(), "local-lvm".into()),
        ];
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let upid = self.client.lxc_create(node, &params).await?;
        self.client.wait_task(&upid, &WaitOptions::default()).await
    }

    pub async fn restore(
        &self,
        vmid: u32,
        extra: &[(&str, &str)],
    ) -> Result<pve_api::TaskOutcome, pve_api::ApiError> {
        self.restore_on("pve", vmid, extra).await
    }
}

/// The node names a running simulator serves.
pub fn sim_nodes(sim: &SimHandle) -> Vec<String> {
    sim.nodes()
}

pub fn vmid(n: u32) -> Vmid {
    Vmid::try_from(n).unwrap()
}
