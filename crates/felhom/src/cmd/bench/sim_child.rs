//! The simulator as a child process of the benchmark, so felhom's own RSS and CPU are
//! measured alone, and so the reliability soak can kill and restart it like a crashed host
//! daemon (same port, same state dir).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use felhom_core::config::Config;
use serde_json::Value;

pub struct SimChild {
    child: Option<Child>,
    dir: tempfile::TempDir,
    time_scale: f64,
    faults: String,
    /// `sim serve --nodes`: a count (1: the single node `pve`; N > 1: `pve1`..`pveN`).
    nodes: usize,
    /// The port of the first start, kept across restarts so running felhoms see one URL.
    port: Option<u16>,
    client: Option<pve_api::PveClient>,
}

impl SimChild {
    pub fn start(time_scale: f64, faults: &str) -> anyhow::Result<SimChild> {
        SimChild::start_cluster(time_scale, faults, 1)
    }

    /// A simulated cluster of `nodes` nodes (`pve1`..`pveN`; one node is `pve`).
    pub fn start_cluster(time_scale: f64, faults: &str, nodes: usize) -> anyhow::Result<SimChild> {
        SimChild::start_in(None, time_scale, faults, nodes)
    }

    /// [`SimChild::start_cluster`] with its directory (the simulator's state, the config it
    /// writes, the journal the config names) under `base`, else the system's temp dir.
    pub fn start_in(
        base: Option<&Path>,
        time_scale: f64,
        faults: &str,
        nodes: usize,
    ) -> anyhow::Result<SimChild> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("felhom-bench-");
        let dir = match base {
            Some(b) => builder.tempdir_in(b)?,
            None => builder.tempdir()?,
        };
        let mut sim = SimChild {
            child: None,
            dir,
            time_scale,
            faults: faults.to_string(),
            nodes: nodes.max(1),
            port: None,
            client: None,
        };
        sim.spawn()?;
        Ok(sim)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let cfg = self.config();
        let _ = std::fs::remove_file(&cfg);
        let listen = format!("127.0.0.1:{}", self.port.unwrap_or(0));
        let child = Command::new(std::env::current_exe()?)
            .env_clear()
            .envs(felhom_core::secrets::minimal_vars(&["RUST_LOG"]))
            .args(["sim", "serve", "--listen", &listen, "--time-scale"])
            .arg(self.time_scale.to_string())
            .arg("--faults")
            .arg(&self.faults)
            .arg("--nodes")
            .arg(self.nodes.to_string())
            .arg("--state-dir")
            .arg(self.dir.path().join("sim"))
            .arg("--write-config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the simulator")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cfg.exists() {
            anyhow::ensure!(Instant::now() < deadline, "simulator did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let config = Config::load(Some(&cfg))?;
        self.port = config.client.base_url.port();
        self.client = Some(pve_api::PveClient::new(config.client)?);
        Ok(())
    }

    /// SIGKILL the simulator and start it again on the same port and state dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The felhom config the simulator wrote (URL, pin, token file, a journal beside it).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("felhom.toml")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The simulator process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `felhom --config <ours> ARGS` as a child process, with extra environment.
    pub fn felhom_cmd(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let mut c = Command::new(std::env::current_exe()?);
        felhom_core::secrets::minimal_env(&mut c, &["RUST_LOG"]);
        c.arg("--config").arg(self.config()).args(args);
        c.env_remove("FELHOM_CRASH_AT");
        c.envs(env.iter().copied());
        c.stdin(Stdio::null());
        Ok(c)
    }

    pub fn felhom(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
        self.felhom_cmd(args, env)?
            .output()
            .context("run felhom as a child process")
    }

    /// The side-channel secret the running simulator wrote into its state dir (a new one
    /// at every start).
    pub fn side_secret(&self) -> anyhow::Result<String> {
        Ok(pve_sim::read_side_channel_secret(
            &self.dir.path().join("sim"),
        )?)
    }

    /// `GET /felhom-sim/<what>` over the same pinned HTTPS felhom uses, with the
    /// side-channel secret.
    pub async fn get(&self, what: &str) -> anyhow::Result<Value> {
        let client = self.client.as_ref().context("simulator not running")?;
        Ok(client
            .side_channel_get::<Value>(&format!("/felhom-sim/{what}"), &self.side_secret()?)
            .await?)
    }

    /// `POST /felhom-sim/<what>` with a JSON body (e.g. `faults`, `{"set": "node_down:pve2"}`),
    /// like [`SimChild::get`].
    pub async fn post(&self, what: &str, body: &Value) -> anyhow::Result<Value> {
        let client = self.client.as_ref().context("simulator not running")?;
        Ok(client
            .side_channel_post::<Value>(&format!("/felhom-sim/{what}"), body, &self.side_secret()?)
            .await?)
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        self.kill();
    }
}
