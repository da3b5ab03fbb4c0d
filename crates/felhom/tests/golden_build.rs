//! `felhom golden build` through the real binary.
//!
//! Bad inputs and broken hosts are checked against a stand-in `mmdebstrap` that records
//! whether (and with what) it was run. The real builds need root and mmdebstrap (CI's
//! `.ci/run` installs it) and reach only the Debian mirror; each is cached under
//! `target/felhom-test-cache/` by its `input_hash`, so only a first run pays for it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use felhom_core::golden;
use felhom_core::golden_build::{BuildOptions, DockerChoice, DEFAULT_MIRROR};

fn felhom(args: &[&str], path_env: Option<&Path>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

/// A stand-in `mmdebstrap` in its own PATH directory: it records its arguments (one per
/// line) and the finish script it was given, then fails like mmdebstrap does.
fn fake_mmdebstrap(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{d}/args'\nprintf '%s' \"$FELHOM_GUEST_FINISH\" > '{d}/finish'\necho 'I: chroot architecture amd64 is equal to the native architecture' >&2\necho 'E: fake mmdebstrap: cannot reach the mirror' >&2\nexit 1\n",
        d = dir.display()
    );
    let p = bin.join("mmdebstrap");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn bad_inputs_are_refused_before_mmdebstrap_runs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_mmdebstrap(dir.path());
    let out = dir.path().join("g.tar.zst");
    let out_s = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--suite", "trixie;reboot"], "--suite"),
        (&["--suite", "Trixie"], "--suite"),
        (
            &["--mirror", "http://deb.debian.org/debian $(reboot)"],
            "--mirror",
        ),
        (&["--mirror", "http://deb.debian.org/debian'"], "--mirror"),
        (&["--mirror", "ftp://deb.debian.org/debian"], "--mirror"),
        (
            &["--mirror", "http://user:pw@mirror.example/debian"],
            "--mirror",
        ),
        (&["--packages", "vim,curl;reboot"], "--packages"),
        (&["--packages=--help"], "--packages"),
        (&["--packages", "?name(vim)"], "--packages"),
        (&["--packages", "./evil.deb"], "--packages"),
    ];
    for (args, field) in cases {
        let mut a = vec!["golden", "build", "--out", out_s];
        a.extend_from_slice(args);
        let o = felhom(&a, Some(&bin));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", both(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{field}:")) && err.contains("nothing was run"),
            "{args:?} names {field}: {err}"
        );
        assert!(
            !dir.path().join("args").exists(),
            "{args:?}: mmdebstrap ran"
        );
        assert!(!out.exists());
    }
    // Every bad field at once, as JSON: each named with its rule.
    let o = felhom(
        &[
            "--output",
            "json",
            "golden",
            "build",
            "--out",
            "/nonexistent/g.tar.zst",
            "--suite",
            "x y",
            "--mirror",
            "gopher://x",
            "--packages",
            "A,b;c",
        ],
        Some(&bin),
    );
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["--out", "--suite", "--mirror", "--packages", "--packages"]
    );
    assert!(v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| !f["rule"].as_str().unwrap().is_empty()));
    // An unknown --docker value is refused by the argument parser.
    let o = felhom(
        &["golden", "build", "--out", out_s, "--docker", "ce"],
        Some(&bin),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!dir.path().join("args").exists());
}

#[test]
fn a_host_that_cannot_build_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.tar.zst");
    // No mmdebstrap anywhere in PATH.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = felhom(
        &["golden", "build", "--out", out.to_str().unwrap()],
        Some(&empty),
    );
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        stderr(&o).contains("apt-get install mmdebstrap"),
        "{}",
        stderr(&o)
    );

    // Not root: the same binary as nobody (copied where nobody can run it).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = shared.path().join("felhom");
    std::fs::copy(BIN, &bin).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["golden", "build", "--out"])
        .arg(shared.path().join("g.tar.zst"))
        .output()
        .expect("setpriv (util-linux) runs the not-root case");
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(stderr(&o).contains("must run as root"), "{}", stderr(&o));
}

#[test]
fn mmdebstrap_gets_plain_arguments_and_its_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_mmdebstrap(dir.path());
    let outdir = dir.path().join("out dir");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("g.tar.zst");
    let o = felhom(
        &[
            "golden",
            "build",
            "--out",
            out.to_str().unwrap(),
            "--packages",
            "vim,g++",
            "--mirror",
            "https://deb.debian.org/debian",
        ],
        Some(&bin),
    );
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = stderr(&o);
    assert!(
        err.contains("mmdebstrap failed")
            && err.contains("E: fake mmdebstrap: cannot reach the mirror"),
        "{err}"
    );
    assert!(
        err.contains("golden build: mmdebstrap: chroot architecture"),
        "progress lines: {err}"
    );
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let dd = args.iter().position(|a| *a == "--").unwrap();
    assert_eq!(args[dd + 1], "trixie");
    assert!(
        args[dd + 2].starts_with(outdir.to_str().unwrap()),
        "one argument, spaces and all: {args:?}"
    );
    assert_eq!(args[dd + 3], "https://deb.debian.org/debian");
    assert!(
        args.iter()
            .any(|a| a.starts_with("--include=") && a.ends_with(",docker.io,docker-cli,vim,g++")),
        "{args:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("finish")).unwrap(),
        golden::guest_finish_script(golden::GuestFinish::default()),
        "the hook runs the recipe's own finish script"
    );
    // Nothing left behind: no archive, no build directory.
    let left: Vec<_> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn inspect(p: &Path) -> (Option<i32>, serde_json::Value) {
    let o = felhom(
        &["--output", "json", "golden", "inspect", p.to_str().unwrap()],
        None,
    );
    (
        o.status.code(),
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

struct Entry {
    info: vzdump::EntryInfo,
    text: Option<String>,
}

/// Every entry of the archive, with the text of the few files the assertions read.
fn entries(p: &Path) -> BTreeMap<String, Entry> {
    let mut all = BTreeMap::new();
    let wanted = [
        vzdump::PCT_CONF,
        "var/lib/dpkg/status",
        "etc/docker/daemon.json",
        "etc/resolv.conf",
    ];
    let unit = golden::first_boot_unit_path();
    vzdump::scan_path(p, |e, r| {
        let text =
            (wanted.contains(&e.path.as_str()) || format!("/{}", e.path) == unit).then(|| {
                let mut s = String::new();
                r.read_to_string(&mut s).unwrap();
                s
            });
        all.insert(
            e.path.clone(),
            Entry {
                info: e.clone(),
                text,
            },
        );
        Ok(vzdump::Flow::Continue)
    })
    .unwrap();
    all
}

fn installed(status: &str, pkg: &str) -> bool {
    status.split("\n\n").any(|s| {
        s.lines().any(|l| l == format!("Package: {pkg}"))
            && s.lines().any(|l| l == "Status: install ok installed")
    })
}

/// The default build (Debian's Docker): inspection clean, and the archive holds what PVE's
/// restore and a first boot need.
#[test]
fn real_golden_is_clean_and_complete() {
    let opts = BuildOptions::new("unused.tar.zst");
    let (archive, report) = cached_golden(&opts, &[]);
    let (code, v) = inspect(&archive);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        v["report"]["findings"],
        serde_json::json!([]),
        "not even warnings"
    );

    // PVE lists the archive with `tar tf` and takes the first member matching this.
    let o = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .expect("GNU tar");
    assert!(o.status.success(), "{}", both(&o));
    let list = stdout(&o);
    let pve = regex::Regex::new(r"(\./etc/vzdump/(pct|vps)\.conf)$").unwrap();
    let first_file = list.lines().find(|l| !l.ends_with('/')).unwrap();
    assert!(pve.is_match(first_file), "first file {first_file}");
    assert!(list.lines().all(|l| l.starts_with("./")));

    let all = entries(&archive);
    assert_eq!(
        report["archive_bytes"].as_u64(),
        Some(std::fs::metadata(&archive).unwrap().len())
    );
    let conf = vzdump::parse_pct_conf(all[vzdump::PCT_CONF].text.as_deref().unwrap()).unwrap();
    assert_eq!(conf.get("unprivileged"), Some("1"));
    assert_eq!(conf.get("features"), Some("keyctl=1,nesting=1"));
    assert_eq!(conf.get("ostype"), Some("debian"));
    assert_eq!(conf.get("arch"), Some("amd64"));
    assert_eq!(conf.get("hostname"), Some(golden::GOLDEN_HOSTNAME));
    assert!(conf.get("rootfs").is_some());
    let net0 = conf.get("net0").unwrap();
    assert_eq!(
        net0,
        format!(
            "name=eth0,bridge=vmbr0,hwaddr={},ip=dhcp,type=veth",
            opts.hwaddr()
        )
    );
    assert!(opts.hwaddr().starts_with("02:"), "locally administered");

    let unit = &all[golden::first_boot_unit_path().trim_start_matches('/')];
    assert_eq!(unit.text.as_deref(), Some(golden::FIRST_BOOT_UNIT));
    assert_eq!((unit.info.mode, unit.info.uid), (0o644, 0));
    let wants = &all[golden::first_boot_unit_wants_link().trim_start_matches('/')];
    assert_eq!(wants.info.kind, vzdump::EntryKind::Symlink);
    assert_eq!(
        wants.info.link_target.as_deref(),
        Some(golden::first_boot_unit_path().as_str())
    );

    let mid = &all["etc/machine-id"];
    assert_eq!((mid.info.kind, mid.info.size), (vzdump::EntryKind::File, 0));
    let dbus = &all["var/lib/dbus/machine-id"];
    assert_eq!(dbus.info.kind, vzdump::EntryKind::Symlink);
    assert_eq!(dbus.info.link_target.as_deref(), Some("/etc/machine-id"));
    assert!(
        !all.keys().any(|k| k.starts_with("etc/ssh/ssh_host_")),
        "no host keys"
    );
    assert!(all.contains_key("etc/ssh/sshd_config"));
    assert!(
        !all.contains_key("etc/hostname"),
        "the build host's name is not shipped"
    );
    assert_eq!(
        all["etc/resolv.conf"].text.as_deref(),
        Some(""),
        "nor its DNS servers"
    );
    assert!(
        !all.keys()
            .any(|k| k.starts_with("tmp/") || k.starts_with("var/tmp/") || k.starts_with("dev/")),
        "vzdump's excludes"
    );
    assert!(
        !all.keys()
            .any(|k| k.starts_with("var/lib/apt/lists/") && k.ends_with("_Packages")),
        "no apt lists"
    );
    assert!(
        !all.keys()
            .any(|k| k.starts_with("var/cache/apt/archives/") && k.ends_with(".deb")),
        "no apt cache"
    );

    let status = all["var/lib/dpkg/status"].text.as_deref().unwrap();
    for pkg in [
        "systemd",
        "systemd-sysv",
        "dbus",
        "iproute2",
        "openssh-server",
        "ifupdown",
        "isc-dhcp-client",
        "docker.io",
        "docker-cli",
    ] {
        assert!(installed(status, pkg), "{pkg} installed");
    }
    assert_eq!(
        all["etc/docker/daemon.json"].text.as_deref(),
        Some(golden::DOCKER_DAEMON_JSON)
    );
    assert_eq!(all["usr/sbin/dockerd"].info.kind, vzdump::EntryKind::File);
    assert_eq!(
        all["usr/bin/docker"].info.kind,
        vzdump::EntryKind::File,
        "the CLI too"
    );
    assert_eq!(
        all["usr/sbin/init"].info.link_target.as_deref(),
        Some("../lib/systemd/systemd")
    );

    // The rootfs was archived as it is, not flattened: owners other than root, hard links.
    let journal = &all["var/log/journal"];
    assert_ne!(journal.info.gid, 0, "systemd-journal group kept");
    assert!(all
        .values()
        .any(|e| e.info.kind == vzdump::EntryKind::Hardlink));
    assert!(report["files"].as_u64().unwrap() > 5000, "{report}");
    assert!(
        report["uncompressed_bytes"].as_u64().unwrap() > 150_000_000,
        "{report}"
    );
    assert_eq!(report["docker"], "debian");
    assert_eq!(report["mirror"], DEFAULT_MIRROR);
}

/// The failure tests' golden: no first-boot unit (and no Docker, the quicker build).
#[test]
fn golden_without_the_first_boot_unit_is_caught() {
    let opts = BuildOptions {
        docker: DockerChoice::None,
        first_boot_unit: false,
        ..BuildOptions::new("unused.tar.zst")
    };
    let (archive, report) = cached_golden(
        &opts,
        &["--docker", "none", "--defect", "no-first-boot-unit"],
    );
    assert_eq!(report["first_boot_unit"], false);
    let (code, v) = inspect(&archive);
    assert_eq!(code, Some(1), "{v}");
    let mut errors: Vec<&str> = v["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    errors.sort();
    assert_eq!(errors, ["docker-missing", "first-boot-unit-missing"]);
    let all = entries(&archive);
    assert!(!all.contains_key(golden::first_boot_unit_path().trim_start_matches('/')));
    assert!(!all.contains_key(golden::first_boot_unit_wants_link().trim_start_matches('/')));
    // Everything else of the identity clean still ran.
    assert_eq!(all["etc/machine-id"].info.size, 0);
    assert!(!all.keys().any(|k| k.starts_with("etc/ssh/ssh_host_")));
    assert!(!all.contains_key("etc/docker/daemon.json"));
}

/// The finish script runs as-is in two places (`pct exec` and mmdebstrap's chroot); inside
/// the recipe it is here-document data that shellcheck does not look into, so it is checked
/// on its own, in every variant.
#[test]
fn finish_script_passes_shellcheck() {
    for docker_daemon_json in [true, false] {
        for first_boot_unit in [true, false] {
            let script = golden::guest_finish_script(golden::GuestFinish {
                docker_daemon_json,
                first_boot_unit,
            });
            let mut sc = Command::new("shellcheck")
                .args(["-s", "sh", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("shellcheck is required (CI installs it: apt-get install shellcheck)");
            std::io::Write::write_all(sc.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
            let res = sc.wait_with_output().unwrap();
            assert!(
                res.status.success(),
                "shellcheck:\n{}\n{script}",
                String::from_utf8_lossy(&res.stdout)
            );
        }
    }
}
