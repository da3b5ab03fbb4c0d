//! Test harness: a real `felhom sim serve` child process on loopback with its own state dir,
//! the real `felhom` binary run against it, and the simulator's state dump to assert on.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use felhom_core::golden_build::BuildOptions;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_felhom");
pub const GOLDEN: &str = "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst";

pub struct Sim {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    faults: String,
    time_scale: f64,
    /// More `sim serve` arguments (`--guests lxc --golden …`).
    extra: Vec<String>,
    /// Stopped with SIGTERM (the lxc runtime cleans up on a clean stop), not SIGKILL.
    graceful: bool,
    /// The port of the first start, reused on restart so a running felhom sees the same URL.
    port: Option<u16>,
}

impl Sim {
    /// A simulator with no faults, fast modelled time.
    pub fn start() -> Sim {
        Sim::with("", 0.02)
    }

    pub fn with(faults: &str, time_scale: f64) -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("felhom-it-")
            .tempdir()
            .expect("tempdir");
        Sim::spawn_in(dir, faults, time_scale, Vec::new(), false)
    }

    /// A simulator serving a cluster of `nodes` nodes (`sim serve --nodes N`: `pve` for 1,
    /// `pve1`..`pveN` otherwise); the golden on `local` is readable from every node.
    pub fn cluster(nodes: usize, faults: &str, time_scale: f64) -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("felhom-it-")
            .tempdir()
            .expect("tempdir");
        let extra = vec!["--nodes".into(), nodes.to_string()];
        Sim::spawn_in(dir, faults, time_scale, extra, false)
    }

    /// Set a cluster fault at run time: `node_down:<node>` (that node's calls answer 595 with
    /// an empty body, its guests are `unknown` in `/cluster/resources`, its tasks pause) or
    /// `no_quorum` (create/restore/clone/start die with `cluster not ready - no quorum?`,
    /// config writes fail). Answers `{"node_down": [...], "no_quorum": bool}`.
    pub fn fault_set(&self, fault: &str) -> Value {
        self.post("faults", &serde_json::json!({ "set": fault }))
    }

    /// Clear a cluster fault set by [`Sim::fault_set`] (or by `--faults` at start).
    pub fn fault_clear(&self, fault: &str) -> Value {
        self.post("faults", &serde_json::json!({ "clear": fault }))
    }

    /// Offline-migrate a stopped guest to `node` as `pct migrate` would (someone else's
    /// migration). `Err` carries the simulator's refusal (a running guest: PVE's
    /// `can't migrate running container without --online or --restart`).
    pub fn migrate(&self, vmid: u32, node: &str) -> Result<Value, String> {
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(client.side_channel_post::<Value>(
            "/felhom-sim/migrate",
            &serde_json::json!({ "vmid": vmid, "node": node }),
            &self.side_secret(),
        ))
        .map_err(|e| e.to_string())
    }

    /// A simulator whose guests are real LXC containers restored from `golden` (placed as
    /// the seed golden, [`GOLDEN`]). Its directory is reachable by the guests' shifted root
    /// (mode 0711), which LXC needs to mount their rootfs.
    pub fn lxc(golden: &Path, time_scale: f64) -> Sim {
        Sim::lxc_cluster(golden, time_scale, 1)
    }

    /// [`Sim::lxc`] serving a cluster of `nodes` nodes (`pve1`..`pveN`; 1: the node `pve`),
    /// whose real guests share one set of bridges.
    pub fn lxc_cluster(golden: &Path, time_scale: f64, nodes: usize) -> Sim {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("felhom-it-lxc-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the test dir");
        let mut extra = vec![
            "--guests".into(),
            "lxc".into(),
            "--golden".into(),
            golden.display().to_string(),
        ];
        if nodes > 1 {
            extra.extend(["--nodes".into(), nodes.to_string()]);
        }
        Sim::spawn_in(dir, "", time_scale, extra, true)
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        faults: &str,
        time_scale: f64,
        extra: Vec<String>,
        graceful: bool,
    ) -> Sim {
        let state_dir = dir.path().join("sim");
        let config = dir.path().join("felhom.toml");
        let mut sim = Sim {
            child: None,
            dir,
            config,
            state_dir,
            faults: faults.into(),
            time_scale,
            extra,
            graceful,
            port: None,
        };
        sim.spawn();
        sim
    }

    /// Stop the simulator as a supervisor would (SIGTERM) and wait for it; its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions; the child is ours.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let listen = format!("127.0.0.1:{}", self.port.unwrap_or(0));
        let child = Command::new(BIN)
            .args(["sim", "serve", "--listen", &listen, "--state-dir"])
            .arg(&self.state_dir)
            .arg("--write-config")
            .arg(&self.config)
            .args([
                "--faults",
                &self.faults,
                "--time-scale",
                &self.time_scale.to_string(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn felhom sim serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.config.exists() {
            assert!(
                Instant::now() < deadline,
                "simulator did not write its config within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let url: toml::Table = text.parse().expect("config is TOML");
        let url = url["pve"]["url"].as_str().expect("pve.url").to_string();
        self.port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok());
    }

    /// Kill the simulator (SIGKILL, like a crash) and start it again on the same state dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the simulator (SIGKILL, like PVE's API dying) and leave it down.
    pub fn crash(&mut self) {
        self.kill();
    }

    /// Start a crashed simulator again on the same state dir and port.
    pub fn revive(&mut self) {
        assert!(self.child.is_none(), "the simulator is still running");
        self.spawn();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("FELHOM_CRASH_AT");
        c
    }

    pub fn felhom(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run felhom")
    }

    pub fn felhom_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run felhom")
    }

    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write spec");
        p
    }

    pub fn client(&self) -> pve_api::PveClient {
        client_for(&self.config)
    }

    /// A client with an administrator's token holding `privs` on `/` (minted through the
    /// side channel): someone other than felhom changing PVE.
    pub fn admin(&self, privs: &[&str]) -> pve_api::PveClient {
        use std::os::unix::fs::PermissionsExt;
        let reply = self.post(
            "tokens",
            &serde_json::json!({ "userid": "admin@pve", "tokenid": "root", "privsep": false,
                                 "acl": [{ "path": "/", "privs": privs }] }),
        );
        let secret = self.dir.path().join("admin.token");
        std::fs::write(&secret, reply["secret"].as_str().expect("token secret")).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut t: toml::Table = std::fs::read_to_string(&self.config)
            .unwrap()
            .parse()
            .unwrap();
        t["pve"]["token_id"] = toml::Value::String("admin@pve!root".into());
        t["pve"]["token_secret_file"] = toml::Value::String(secret.display().to_string());
        let p = self.dir.path().join("admin.toml");
        std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
        client_for(&p)
    }

    /// The side-channel secret the running simulator wrote into its state dir (new at every
    /// start).
    pub fn side_secret(&self) -> String {
        pve_sim::read_side_channel_secret(&self.state_dir).expect("the side-channel secret")
    }

    /// `GET /felhom-sim/<what>` over the same pinned HTTPS as felhom uses, with the
    /// side-channel secret.
    pub fn get(&self, what: &str) -> Value {
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(
            client.side_channel_get::<Value>(&format!("/felhom-sim/{what}"), &self.side_secret()),
        )
        .expect("sim state endpoint")
    }

    /// `POST /felhom-sim/<what>` with a JSON body and the side-channel secret.
    pub fn post(&self, what: &str, body: &Value) -> Value {
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(client.side_channel_post::<Value>(
            &format!("/felhom-sim/{what}"),
            body,
            &self.side_secret(),
        ))
        .expect("sim side channel")
    }

    pub fn state(&self) -> Value {
        self.get("state")
    }

    /// Count of write requests (POST/PUT/DELETE) under /api2 the simulator has received.
    pub fn write_count(&self) -> usize {
        let reqs = self.get("requests");
        reqs.as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| matches!(r["method"].as_str(), Some("POST" | "PUT" | "DELETE")))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Set `felhom.strategy` in the config felhom runs with (`restore`, `restore-resize`).
    #[allow(dead_code)]
    pub fn set_strategy(&self, strategy: &str) {
        self.set_config("felhom", "strategy", toml::Value::String(strategy.into()));
    }

    /// Set `<section>.<key>` in the config felhom runs with.
    #[allow(dead_code)]
    pub fn set_config(&self, section: &str, key: &str, value: toml::Value) {
        let mut t: toml::Table = std::fs::read_to_string(&self.config)
            .expect("read config")
            .parse()
            .expect("config is TOML");
        t[section]
            .as_table_mut()
            .unwrap_or_else(|| panic!("[{section}]"))
            .insert(key.into(), value);
        std::fs::write(&self.config, toml::to_string(&t).expect("TOML")).expect("write config");
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("felhom-journal.db")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.graceful {
            self.stop();
        }
        self.kill();
    }
}

/// A spec for one guest; `extra` is appended (e.g. mount tables).
pub fn spec(customer: &str, vmid: &str, extra: &str) -> String {
    felhom_core::adversarial::base_spec(customer, vmid, GOLDEN, extra)
}

pub const MOUNT: &str = felhom_core::adversarial::BASE_MOUNT;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Invariants the simulator state must always satisfy after felhom is done: no volume
/// without a guest, no two guests with one MAC, IP or SSH key (`pve_sim::invariants`).
pub fn assert_clean_invariants(state: &Value) {
    let v = pve_sim::invariants::check(state);
    assert!(v.is_clean(), "invariants violated: {v:?}");
}

pub fn guest(state: &Value, vmid: u64) -> Option<&Value> {
    state["guests"]
        .as_array()?
        .iter()
        .find(|g| g["vmid"].as_u64() == Some(vmid))
}

/// Root and mmdebstrap, or a failure that says what is missing (never a silent skip).
pub fn require_build_host() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("building a real golden needs root (mmdebstrap's root mode); run the tests as root, as CI does");
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mmdebstrap").is_file()))
        .unwrap_or(false);
    if !found {
        panic!(
            "mmdebstrap is not installed: apt-get install mmdebstrap (CI's .ci/run installs it)"
        );
    }
}

/// A built golden from `target/felhom-test-cache/`, built once per input hash through the real
/// binary (`felhom golden build` + `cli`, which must build what `opts` describes). A lock
/// keeps parallel test processes (golden_build, real_guests) from building one twice.
pub fn cached_golden(opts: &BuildOptions, cli: &[&str]) -> (PathBuf, serde_json::Value) {
    require_build_host();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("felhom-test-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let hash = opts.input_hash();
    let archive = cache.join(format!("golden-{}.tar.zst", &hash[..16]));
    let report = cache.join(format!("golden-{}.json", &hash[..16]));
    let lock = std::fs::File::create(cache.join(format!("golden-{}.lock", &hash[..16]))).unwrap();
    // SAFETY: a valid open descriptor; the lock is released when `lock` is dropped.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    if !(archive.exists() && report.exists()) {
        let mut args = vec![
            "--output",
            "json",
            "golden",
            "build",
            "--out",
            archive.to_str().unwrap(),
        ];
        args.extend_from_slice(cli);
        let o = Command::new(BIN).args(&args).output().expect("run felhom");
        assert_eq!(
            o.status.code(),
            Some(0),
            "golden build {cli:?}: {}",
            both(&o)
        );
        std::fs::write(&report, &o.stdout).unwrap();
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        r["input_hash"],
        hash.as_str(),
        "the CLI builds what BuildOptions describes"
    );
    eprintln!(
        "golden {cli:?}: mmdebstrap {:.1}s, archive {:.1}s, {} bytes ({} files, {} bytes uncompressed)",
        r["mmdebstrap_secs"].as_f64().unwrap(),
        r["archive_secs"].as_f64().unwrap(),
        r["archive_bytes"],
        r["files"],
        r["uncompressed_bytes"]
    );
    (archive, r)
}

/// `felhom --output json bench ARGS…` through the real binary: its JSON report, after
/// asserting exit 0 (both streams shown otherwise).
pub fn bench_report(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["--output", "json", "bench"])
        .args(args)
        .output()
        .expect("run felhom bench");
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    json(&out)
}

pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", both(o)))
}

/// Run `f` over `cases`, `parallel` at a time. A failing case does not stop the others; the
/// test then fails naming every failed case with its message.
pub fn run_concurrently<T: Sync + std::fmt::Debug>(
    cases: &[T],
    parallel: usize,
    f: impl Fn(&T) + Sync,
) {
    let next = std::sync::Mutex::new(cases.iter());
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.min(cases.len()) {
            s.spawn(|| loop {
                let Some(case) = next.lock().unwrap().next() else {
                    return;
                };
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(case))) {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.lock().unwrap().push(format!("{case:?}: {msg}"));
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// A client for the felhom config at `config`.
pub fn client_for(config: &Path) -> pve_api::PveClient {
    let text = std::fs::read_to_string(config).expect("read config");
    let cfg = felhom_core::config::Config::parse(config, &text).expect("config is valid");
    pve_api::PveClient::new(cfg.client).expect("client")
}
