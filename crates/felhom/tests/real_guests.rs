//! Real guests, end to end (issue 9): a real golden from `felhom golden build`, the
//! simulator with its lxc runtime (`felhom sim serve --guests lxc`), and the real `felhom`
//! binary provisioning three customer guests that boot as unprivileged LXC containers with
//! systemd as PID 1. Everything is then checked from outside, on the guests' disks, inside
//! their namespaces and in dnsmasq's lease file, not only through the simulator's own
//! summary: systemd reached `running`, machine-ids are distinct, the SSH host key felhom
//! proved is the key file on that guest's disk, each guest leased its own address on the MAC
//! felhom chose, and the hostname inside is the spec's. A golden without the first-boot
//! unit must fail felhom's SSH step and roll back without a trace, and teardown plus a
//! simulator stop leave nothing behind.
//!
//! Needs root, mmdebstrap (for the goldens, cached by input hash under
//! `target/felhom-test-cache/` and shared with `golden_build.rs`) and the runtime's tools;
//! without them it fails, naming what to install (`scripts/test` installs them).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use felhom_core::golden_build::{BuildOptions, DockerChoice};
use serde_json::Value;
use sha2::Digest;

/// Root, mmdebstrap and every tool of the lxc runtime, or a failure naming the package.
fn require_real_guest_host() {
    require_build_host();
    if let Err(e) = pve_sim::runtime::lxc::preflight() {
        panic!("{e} (scripts/test installs the tools the tests drive when run as root)");
    }
}

/// A running guest's init pid, from the simulator's state dump.
fn sim_guest_pid(sim: &Sim, vmid: &str) -> u64 {
    let s = sim.state();
    guest(&s, vmid.parse().unwrap()).unwrap()["lxc"]["init_pid"]
        .as_u64()
        .expect("init pid")
}

/// `SHA256:…` of an OpenSSH public key line, as `ssh-keygen -lf` prints it.
fn fingerprint(pub_line: &str) -> String {
    let blob = pub_line
        .split_whitespace()
        .nth(1)
        .expect("an OpenSSH public key line");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .expect("base64 key blob");
    let digest = sha2::Sha256::digest(raw);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Run a command inside a guest's namespaces (`nsenter -a`), its stdout.
fn in_guest(pid: u64, args: &[&str]) -> String {
    let o = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-a", "--"])
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Bytes a directory tree takes on disk (its blocks, hard links once).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn netns_list() -> String {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn links_in(ns: &str) -> Vec<String> {
    let o = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show"])
        .output()
        .unwrap();
    assert!(o.status.success(), "ip -n {ns}: {}", both(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// dnsmasq's lease file: (mac, ip) per line.
fn leases(file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.to_ascii_lowercase(), f.get(2)?.to_string()))
        })
        .collect()
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Docker inside a provisioned guest (seed F5/F6: nesting=1,keyctl=1): the daemon came up
/// with the overlay2 driver, and an image imported offline (a busybox rootfs; no registry is
/// reachable) runs, on Docker's own bridge. Returns what the container printed.
fn docker_runs_in(pid: u64) -> String {
    let driver = in_guest(pid, &["docker", "info", "--format", "{{.Driver}}"]);
    assert_eq!(driver, "overlay2", "docker's storage driver in the guest");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static on the host (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    std::fs::copy(busybox, dir.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.path().join("bin/sh")).unwrap();
    let tar = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-cf",
            "-",
            "-C",
        ])
        .arg(dir.path())
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-a", "--"])
        .args(["docker", "import", "-", "felhom-tiny:1"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let o = import.wait_with_output().unwrap();
    assert!(o.status.success(), "docker import: {}", both(&o));
    in_guest(
        pid,
        &[
            "docker",
            "run",
            "--rm",
            "felhom-tiny:1",
            "/bin/sh",
            "-c",
            "echo docker-ok; ip -4 -o addr show eth0",
        ],
    )
}

const CUSTOMERS: [(&str, &str); 3] = [("acme", "1400"), ("globex", "1401"), ("initech", "1402")];
const NO_UNIT_GOLDEN: &str = "vzdump-lxc-9101-2026_06_09-20_41_10.tar.zst";

#[test]
fn three_real_guests_boot_with_their_own_identity_and_leave_nothing() {
    require_real_guest_host();
    let started = Instant::now();
    // The production golden (Debian's Docker, the first-boot unit) and the defective one:
    // the same builds `golden_build.rs` checks, so one cache serves both tests.
    let (golden, _) = cached_golden(&BuildOptions::new("unused.tar.zst"), &[]);
    let no_unit = BuildOptions {
        docker: DockerChoice::None,
        first_boot_unit: false,
        ..BuildOptions::new("unused.tar.zst")
    };
    let (bad_golden, _) = cached_golden(
        &no_unit,
        &["--docker", "none", "--defect", "no-first-boot-unit"],
    );
    let goldens_secs = started.elapsed().as_secs_f64();

    let mut sim = Sim::lxc(&golden, 0.05);
    std::fs::hard_link(
        &bad_golden,
        pve_sim::dump_dir(&sim.state_dir, "local").join(NO_UNIT_GOLDEN),
    )
    .or_else(|_| {
        std::fs::copy(
            &bad_golden,
            pve_sim::dump_dir(&sim.state_dir, "local").join(NO_UNIT_GOLDEN),
        )
        .map(|_| ())
    })
    .unwrap();
    let state = sim.state();
    assert_eq!(state["runtime"], "lxc");
    let sim_id = state["lxc"]["sim_id"].as_str().unwrap().to_string();
    let ns = format!("felhom-sim-{sim_id}-vmbr0");

    // ---- three guests through the real binary ----
    let specs: Vec<PathBuf> = CUSTOMERS
        .iter()
        .map(|(c, v)| sim.write_spec(&format!("{c}.toml"), &spec(c, v, MOUNT)))
        .collect();
    let mut args = vec!["--output", "json", "provision"];
    args.extend(specs.iter().map(|p| p.to_str().unwrap()));
    let t = Instant::now();
    let out = sim.felhom(&args);
    let provision_secs = t.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);

    let state = sim.state();
    assert_clean_invariants(&state);
    let lease_file = PathBuf::from(
        state["lxc"]["bridges"]["vmbr0"]["lease_file"]
            .as_str()
            .unwrap(),
    );
    let lease_lines = leases(&lease_file);
    let status = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", both(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();

    let (mut mids, mut keys, mut ips) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (customer, vmid) in CUSTOMERS {
        let vmid: u64 = vmid.parse().unwrap();
        let job = jobs.iter().find(|j| j["vmid"] == vmid).unwrap();
        assert_eq!(job["outcome"], "succeeded", "{job}");
        let hostname = format!("{customer}-app");
        let mac = job["mac"].as_str().unwrap().to_ascii_lowercase();
        // systemd's own answer once boot finished (the runtime waits with
        // `is-system-running --wait`), then asked again here, from outside.
        let g = wait_for(
            &format!("guest {vmid}'s systemd to finish booting"),
            Duration::from_secs(90),
            || {
                let s = sim.state();
                let g = guest(&s, vmid)?.clone();
                g["lxc"]["boot"]["systemd_state"].as_str()?;
                Some(g)
            },
        );
        let lx = &g["lxc"];
        assert_eq!(
            lx["boot"]["systemd_state"], "running",
            "guest {vmid}: failed units {}",
            lx["failed_units"]
        );
        let pid = lx["init_pid"].as_u64().expect("init pid");
        assert_eq!(
            in_guest(pid, &["systemctl", "is-system-running"]),
            "running"
        );
        assert_eq!(in_guest(pid, &["systemctl", "is-active", "ssh"]), "active");
        // The hostname inside: the kernel's (UTS) and the file PVE's setup wrote.
        assert_eq!(in_guest(pid, &["uname", "-n"]), hostname);
        let rootfs = PathBuf::from(lx["rootfs"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
            format!("{hostname}\n")
        );
        assert!(
            !rootfs.join("etc/vzdump/pct.conf").exists(),
            "the archived config is deleted from the rootfs as PVE does"
        );
        // Unprivileged: the guest's root is uid 100000 on the host.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(rootfs.join("etc/ssh/sshd_config"))
                .unwrap()
                .uid(),
            100_000
        );
        // machine-id: written by systemd at this boot, on the guest's disk.
        let mid = std::fs::read_to_string(rootfs.join("etc/machine-id")).unwrap();
        let mid = mid.trim().to_string();
        assert!(
            mid.len() == 32 && mid.bytes().all(|b| b.is_ascii_hexdigit()),
            "{mid:?}"
        );
        assert_eq!(g["machine_id"], mid.as_str());
        mids.insert(mid);
        // The host key felhom proved by a handshake is the key file on this guest's disk.
        let on_disk = fingerprint(
            &std::fs::read_to_string(rootfs.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        );
        assert_eq!(job["ssh_fingerprint"], on_disk.as_str(), "guest {vmid}");
        let st = status["guests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vmid"] == vmid)
            .expect("felhom status lists the guest");
        assert_eq!(st["ssh_fingerprint"], on_disk.as_str());
        assert_eq!(st["drift"], serde_json::json!([]), "{st}");
        keys.insert(on_disk);
        // The lease: dnsmasq's file has one for the MAC felhom set, with the IP felhom saw
        // on eth0, which the guest carries with that MAC.
        let leased: Vec<&(String, String)> =
            lease_lines.iter().filter(|(m, _)| *m == mac).collect();
        assert_eq!(leased.len(), 1, "{mac} in {lease_lines:?}");
        assert_eq!(job["ip"], leased[0].1.as_str());
        ips.insert(leased[0].1.clone());
        let eth0: Value =
            serde_json::from_str(&in_guest(pid, &["ip", "-j", "addr", "show", "dev", "eth0"]))
                .unwrap();
        assert_eq!(eth0[0]["address"], mac.as_str());
        assert!(
            eth0[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["local"] == leased[0].1.as_str()),
            "{eth0}"
        );
        // The mount point felhom added is there inside, owned by the guest's root.
        assert!(
            in_guest(pid, &["findmnt", "-n", "-o", "TARGET", "/srv/data"]).contains("/srv/data")
        );
        eprintln!(
            "guest {vmid} {hostname}: ip {}, machine-id {}, key {}, restore→running: lease {:.2}s, systemd {:.2}s after lxc-start; rootfs {} MB on disk",
            leased[0].1,
            g["machine_id"].as_str().unwrap(),
            job["ssh_fingerprint"].as_str().unwrap(),
            lx["boot"]["lease_secs"].as_f64().unwrap_or(-1.0),
            lx["boot"]["systemd_secs"].as_f64().unwrap_or(-1.0),
            disk_usage(&rootfs) / 1_000_000
        );
    }
    let first_pid = sim_guest_pid(&sim, CUSTOMERS[0].1);
    let t = Instant::now();
    let docker = docker_runs_in(first_pid);
    assert!(docker.starts_with("docker-ok"), "{docker}");
    eprintln!(
        "docker in guest {}: overlay2, an imported image ran in {:.2}s: {}",
        CUSTOMERS[0].1,
        t.elapsed().as_secs_f64(),
        docker.replace('\n', " | ")
    );
    assert_eq!(mids.len(), 3, "three distinct machine-ids: {mids:?}");
    assert_eq!(keys.len(), 3, "three distinct host keys: {keys:?}");
    assert_eq!(ips.len(), 3, "three distinct leases: {ips:?}");
    for t in state["tasks"].as_array().unwrap() {
        if matches!(t["type"].as_str(), Some("vzrestore" | "vzstart")) {
            eprintln!(
                "task {} {}: {} ms",
                t["type"].as_str().unwrap(),
                t["id"].as_str().unwrap(),
                t["end_ms"].as_u64().unwrap() - t["start_ms"].as_u64().unwrap()
            );
        }
    }

    // ---- a golden without the first-boot unit: no host keys, so no sshd ----
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut cfg: toml::Table = text.parse().unwrap();
    cfg["felhom"]["ssh_timeout_secs"] = toml::Value::Integer(8);
    std::fs::write(&sim.config, toml::to_string(&cfg).unwrap()).unwrap();
    let bad = sim.write_spec(
        "keyless.toml",
        &spec("keyless", "1410", "").replace(GOLDEN, &format!("local:backup/{NO_UNIT_GOLDEN}")),
    );
    let out = sim.felhom(&["--output", "json", "provision", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains("no SSH host key served"),
        "felhom's SSH step names the cause: {}",
        both(&out)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad_mac = rep["jobs"][0]["mac"].as_str().unwrap().to_ascii_lowercase();
    let state = sim.state();
    assert!(guest(&state, 1410).is_none(), "rolled back");
    let lx = &state["lxc"];
    assert!(
        !lx["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "1410"),
        "{lx}"
    );
    assert!(
        !lx["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().contains("vm-1410-")),
        "{lx}"
    );
    assert!(!links_in(&ns).iter().any(|l| l.contains("1410")));
    assert!(
        !leases(&lease_file).iter().any(|(m, _)| *m == bad_mac),
        "the rolled-back guest's lease is gone"
    );
    assert_eq!(lx["host_peers"], serde_json::json!([]));

    // ---- teardown, then the simulator's stop: nothing left ----
    let t = Instant::now();
    let out = sim.felhom(&["teardown", "1400", "1401", "1402"]);
    let teardown_secs = t.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert_eq!(state["guests"], serde_json::json!([]));
    assert_eq!(state["volumes"], serde_json::json!([]));
    assert_eq!(links_in(&ns), ["lo", "vmbr0"], "no veth left on the bridge");
    assert!(leases(&lease_file).is_empty(), "{:?}", leases(&lease_file));
    let lxc_dir = sim.state_dir.join("lxc");
    assert!(entries(&lxc_dir.join("ct")).is_empty());
    assert!(entries(&lxc_dir.join("volumes")).is_empty());
    let dnsmasq = state["lxc"]["bridges"]["vmbr0"]["dnsmasq_pid"]
        .as_u64()
        .unwrap();
    let status = sim.stop().expect("the simulator was running");
    assert!(status.success(), "sim stopped cleanly: {status}");
    assert!(!netns_list().contains(&ns), "{}", netns_list());
    assert!(
        !Path::new(&format!("/proc/{dnsmasq}")).exists(),
        "dnsmasq stopped"
    );
    let o = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let host_links: Value = serde_json::from_slice(&o.stdout).unwrap();
    let peers: Vec<&str> = host_links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("fh") && n.len() == 15)
        .collect();
    assert!(peers.is_empty(), "{peers:?}");
    assert!(entries(&lxc_dir.join("ct")).is_empty());
    assert!(entries(&lxc_dir.join("volumes")).is_empty());
    assert!(
        entries(&lxc_dir.join("run/lxc/lock")).is_empty(),
        "no LXC lock files"
    );
    eprintln!(
        "real guests: goldens ready {goldens_secs:.1}s, 3 guests provisioned in {provision_secs:.1}s, torn down in {teardown_secs:.1}s, whole test {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `felhom demo --real`: the README's real-guest demo, end to end through the binary, once
/// restored and once as linked clones of the published template (`--strategy
/// restore,linked-clone`). Every guest it reports booted systemd to `running`, with its own
/// machine-id, and the host key read off its disk is the one felhom proved by its SSH
/// handshake; the report puts both strategies' times side by side.
#[test]
fn the_real_demo_boots_guests_and_shows_their_identity() {
    require_real_guest_host();
    let (golden, _) = cached_golden(&BuildOptions::new("unused.tar.zst"), &[]);
    let out = Command::new(BIN)
        .args(["demo", "--real", "--guests", "2", "--time-scale", "0.05"])
        .args(["--strategy", "restore,linked-clone"])
        .arg("--golden")
        .arg(&golden)
        .output()
        .expect("run felhom");
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "ok      acme-app   vmid 1000   ip … mac … ssh SHA256:…" from felhom's own report.
    let proved: BTreeSet<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ok "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("SHA256:")))
        .collect();
    // "  1000 acme-app: systemd running, machine-id …, host key SHA256:…, lease …" from the
    // guest's disk and namespaces.
    let inside: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": systemd "))
        .collect();
    assert_eq!(inside.len(), 4, "two guests per strategy: {stdout}");
    let field = |l: &str, key: &str| -> String {
        l.split(", ")
            .find_map(|f| f.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {l}"))
            .to_string()
    };
    let mut mids = BTreeSet::new();
    for l in &inside {
        assert!(l.contains(": systemd running,"), "{l}");
        mids.insert(field(l, "machine-id "));
        let key = field(l, "host key ");
        assert!(proved.contains(key.as_str()), "{key} not in {proved:?}");
    }
    assert_eq!(mids.len(), 4, "{mids:?}");
    assert_eq!(proved.len(), 4, "{proved:?}");
    // "demo: 2 real guest(s) up in 9.81s (restore), 4.02s (linked-clone), …"
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo: 2 real guest(s) up in "))
        .unwrap_or_else(|| panic!("{stdout}"));
    for strategy in ["restore", "linked-clone"] {
        let time = summary
            .split(", ")
            .find_map(|p| p.strip_suffix(&format!("s ({strategy})")))
            .and_then(|p| p.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {strategy} time in {summary}"));
        assert!(time.parse::<f64>().unwrap() > 0.0, "{summary}");
    }
    // The side-by-side table: the template's publish, and the bring-up's wall per strategy.
    let publish = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("publish (once)"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(publish.split_whitespace().nth(2), Some("-"), "{publish}");
    assert!(stdout.contains("bring-up (wall)"), "{stdout}");
}

/// Issue 17 with real guests: the lxc runtime serves a cluster (its nodes share one set of
/// bridges). Two guests placed by felhom land on the two nodes and boot; one, stopped and
/// migrated offline by someone else (as `pct migrate` would), is followed by `apply` —
/// started on its new node, not made again — and keeps its identity there: the same MAC,
/// lease, hostname and SSH host key, proved again by a handshake. Teardown finds both on
/// whatever node they live on and leaves nothing.
#[test]
fn real_guests_on_a_cluster_are_placed_followed_and_keep_their_identity() {
    require_real_guest_host();
    let (golden, _) = cached_golden(&BuildOptions::new("unused.tar.zst"), &[]);
    let sim = Sim::lxc_cluster(&golden, 0.05, 2);
    let specs: Vec<PathBuf> = ["north", "south"]
        .iter()
        .map(|c| {
            let text = spec(c, "\"auto\"", "").replacen("node = \"pve\"", "node = \"auto\"", 1);
            assert!(text.contains("node = \"auto\""), "{text}");
            sim.write_spec(&format!("{c}.toml"), &text)
        })
        .collect();
    let apply = |sim: &Sim| {
        let mut args = vec!["--output", "json", "apply"];
        args.extend(specs.iter().map(|p| p.to_str().unwrap()));
        let out = sim.felhom(&args);
        assert_eq!(out.status.code(), Some(0), "{}", both(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let jobs = apply(&sim);
    let node_of = |vmid: u64| -> String {
        guest(&sim.state(), vmid).unwrap()["node"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let vmids: Vec<u64> = jobs.iter().map(|j| j["vmid"].as_u64().unwrap()).collect();
    let nodes: BTreeSet<String> = vmids.iter().map(|v| node_of(*v)).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["pve1".to_string(), "pve2".to_string()]),
        "placement spreads the two guests"
    );
    // Booted for real, each on its node: systemd running, the key felhom proved on its disk.
    let booted = |vmid: u64| -> (u64, String) {
        let g = wait_for(
            &format!("guest {vmid}'s systemd to finish booting"),
            Duration::from_secs(90),
            || {
                let s = sim.state();
                let g = guest(&s, vmid)?.clone();
                g["lxc"]["boot"]["systemd_state"].as_str()?;
                Some(g)
            },
        );
        assert_eq!(g["lxc"]["boot"]["systemd_state"], "running", "guest {vmid}");
        let rootfs = PathBuf::from(g["lxc"]["rootfs"].as_str().unwrap());
        let key = fingerprint(
            &std::fs::read_to_string(rootfs.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        );
        (g["lxc"]["init_pid"].as_u64().expect("init pid"), key)
    };
    for j in &jobs {
        let (_, key) = booted(j["vmid"].as_u64().unwrap());
        assert_eq!(j["ssh_fingerprint"], key.as_str(), "{j}");
    }

    // Someone stops the first guest and migrates it to the other node.
    let moved = &jobs[0];
    let vmid = moved["vmid"].as_u64().unwrap();
    let from = node_of(vmid);
    let to = if from == "pve1" { "pve2" } else { "pve1" };
    let client = sim.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let v = pve_api::Vmid::try_from(vmid as u32).unwrap();
        let upid = client.lxc_stop(&from, v).await.unwrap();
        client
            .wait_task(&upid, &pve_api::WaitOptions::default())
            .await
            .expect("the stop task ends well");
    });
    sim.migrate(vmid as u32, to).unwrap();
    assert_eq!(node_of(vmid), to);

    // apply follows it: started where it now lives, the same guest, the same identity.
    let again = apply(&sim);
    let after = again.iter().find(|j| j["vmid"] == vmid).unwrap();
    assert_eq!(
        after["outcome"], "succeeded",
        "the stopped guest is started: {after}"
    );
    assert_eq!(again.len(), 2);
    assert_eq!(
        sim.state()["guests"].as_array().unwrap().len(),
        2,
        "not made again"
    );
    assert_eq!(node_of(vmid), to, "not moved back");
    let (pid, key) = booted(vmid);
    assert_eq!(after["ssh_fingerprint"], key.as_str(), "{after}");
    assert_eq!(
        after["ssh_fingerprint"], moved["ssh_fingerprint"],
        "the same host key"
    );
    assert_eq!(after["mac"], moved["mac"]);
    assert_eq!(
        after["ip"], moved["ip"],
        "the same lease on the shared bridge"
    );
    assert_eq!(in_guest(pid, &["uname", "-n"]), format!("{}-app", "north"));
    let status = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(status.status.code(), Some(0), "no drift: {}", both(&status));
    assert_clean_invariants(&sim.state());

    // Teardown finds both wherever they live; nothing is left.
    let args: Vec<String> = vmids.iter().map(u64::to_string).collect();
    let mut targs = vec!["--output", "json", "teardown"];
    targs.extend(args.iter().map(String::as_str));
    let out = sim.felhom(&targs);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert!(state["guests"].as_array().unwrap().is_empty(), "{state}");
    assert_clean_invariants(&state);
}

/// A live process (a zombie, dead but not yet reaped by init, is not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}

/// The simulator SIGKILLed with a real guest running. As PVE's guests outlive its daemons,
/// the container, its bridge's dnsmasq and network namespace keep running; the next start
/// on the same state dir adopts the guest (the same init process: `apply` finds it
/// unchanged with zero writes, `status` finds no drift through a new SSH forward) and
/// removes this simulator's namespaces no adopted guest uses. A guest that died while the
/// simulator was down is not adopted: its bridge's dnsmasq and namespace go, and `apply`
/// starts it again (FIFOs its disk holds at `/etc/hosts` and `/etc/hostname` fail that start
/// naming the file and leave the state dump answering, instead of hanging both). A clean
/// stop then leaves no container, dnsmasq, namespace or veth.
#[test]
fn a_killed_simulator_leaves_guests_the_next_start_adopts_and_a_stop_removes_all() {
    require_real_guest_host();
    let (golden, _) = cached_golden(&BuildOptions::new("unused.tar.zst"), &[]);
    let mut sim = Sim::lxc(&golden, 0.05);
    let sim_id = sim.state()["lxc"]["sim_id"].as_str().unwrap().to_string();
    let ns = format!("felhom-sim-{sim_id}-vmbr0");
    let spec_file = sim.write_spec("acme.toml", &spec("acme", "1420", ""));
    let spec_file = spec_file.to_str().unwrap();
    let out = sim.felhom(&["--output", "json", "apply", spec_file]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    let init = sim_guest_pid(&sim, "1420");
    let dnsmasq = state["lxc"]["bridges"]["vmbr0"]["dnsmasq_pid"]
        .as_u64()
        .unwrap();

    // ---- SIGKILL: the guest and its network outlive the simulator ----
    sim.crash();
    assert!(alive(init), "the container kept running");
    assert!(alive(dnsmasq), "its bridge's dnsmasq kept running");
    assert!(netns_list().contains(&ns), "{}", netns_list());
    // A namespace a killed run left for a bridge nothing uses now.
    let stale = format!("felhom-sim-{sim_id}-vmbr9");
    let o = Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", both(&o));

    // ---- the next start adopts the guest and sweeps the rest ----
    sim.revive();
    let state = sim.state();
    let g = guest(&state, 1420).unwrap();
    assert_eq!(g["status"], "running", "{g}");
    assert_eq!(
        g["lxc"]["init_pid"].as_u64(),
        Some(init),
        "adopted, not rebooted"
    );
    assert!(!netns_list().contains(&stale), "{}", netns_list());
    assert!(netns_list().contains(&ns));
    let dnsmasq2 = state["lxc"]["bridges"]["vmbr0"]["dnsmasq_pid"]
        .as_u64()
        .unwrap();
    assert!(
        alive(dnsmasq2) && !alive(dnsmasq),
        "one dnsmasq per bridge: the new run's"
    );
    let out = sim.felhom(&["--output", "json", "apply", spec_file]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        json(&out)["jobs"][0]["outcome"],
        "unchanged",
        "{}",
        both(&out)
    );
    assert_eq!(sim.write_count(), 0, "an adopted guest needs no write");
    let status = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", both(&status));

    // ---- killed again, and the guest dies while the simulator is down ----
    sim.crash();
    // SAFETY: kill has no memory-safety preconditions; the pid is the guest's init.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    wait_for("the guest's init to die", Duration::from_secs(30), || {
        (!alive(init)).then_some(())
    });
    sim.revive();
    let state = sim.state();
    let g = guest(&state, 1420).unwrap();
    assert_eq!(g["status"], "stopped");
    assert!(
        !netns_list().contains(&ns),
        "an unused bridge's namespace is removed"
    );
    assert!(!alive(dnsmasq2), "and its dnsmasq stopped");

    // ---- FIFOs the guest left at files the dump and the start read: no hang ----
    let rootfs = PathBuf::from(g["lxc"]["rootfs"].as_str().unwrap());
    for f in ["etc/hosts", "etc/hostname"] {
        std::fs::remove_file(rootfs.join(f)).unwrap();
        let o = Command::new("mkfifo").arg(rootfs.join(f)).output().unwrap();
        assert!(o.status.success(), "{}", both(&o));
    }
    let state = sim.state();
    assert_eq!(
        guest(&state, 1420).unwrap()["lxc"]["hostname_file"],
        Value::Null
    );
    let out = sim.felhom(&["--output", "json", "apply", spec_file]);
    assert_ne!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        both(&out).contains("/etc/hosts is a FIFO, not a regular file"),
        "the start names the file: {}",
        both(&out)
    );
    std::fs::remove_file(rootfs.join("etc/hosts")).unwrap();
    std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::os::unix::fs::chown(rootfs.join("etc/hosts"), Some(100_000), Some(100_000)).unwrap();
    let out = sim.felhom(&["--output", "json", "apply", spec_file]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let init2 = sim_guest_pid(&sim, "1420");
    assert_ne!(init2, init);
    let dnsmasq3 = sim.state()["lxc"]["bridges"]["vmbr0"]["dnsmasq_pid"]
        .as_u64()
        .unwrap();

    // ---- a clean stop: nothing left running ----
    let st = sim.stop().expect("the simulator was running");
    assert!(st.success(), "{st}");
    assert!(!alive(init2), "the container stopped with the simulator");
    assert!(!alive(dnsmasq3), "dnsmasq stopped");
    assert!(
        !netns_list().contains(&format!("felhom-sim-{sim_id}-")),
        "{}",
        netns_list()
    );
    let o = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let host_links: Value = serde_json::from_slice(&o.stdout).unwrap();
    let peers: Vec<&str> = host_links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("fh") && n.len() == 15)
        .collect();
    assert!(peers.is_empty(), "{peers:?}");
    assert!(
        entries(&sim.state_dir.join("lxc/run/lxc/lock")).is_empty(),
        "no LXC lock files"
    );
}
