//! `felhom golden …` through the real binary, on real archives built in a temp dir.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use felhom_core::golden::{build_golden_archive, Defect, GoldenBuildOptions};

fn build(dir: &Path, name: &str, defects: &[Defect]) -> PathBuf {
    let p = dir.join(name);
    build_golden_archive(
        &p,
        &GoldenBuildOptions {
            defects: defects.to_vec(),
            padding_bytes: 0,
        },
    )
    .unwrap();
    p
}

fn inspect(p: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(BIN)
        .args(["--output", "json", "golden", "inspect"])
        .arg(p)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, both(&out))
}

fn error_ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn clean_golden_and_one_archive_per_defect() {
    let dir = tempfile::tempdir().unwrap();
    let clean = build(
        dir.path(),
        "vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst",
        &[],
    );
    let (code, v, out) = inspect(&clean);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["report"]["findings"].as_array().unwrap().len(), 0, "{v}");

    let cases: &[(Defect, &[&str])] = &[
        (
            Defect::SshKeysLeftIn,
            &["ssh-host-keys-present", "ssh-host-keys-present"],
        ),
        (Defect::NoFirstBootUnit, &["first-boot-unit-missing"]),
        (
            Defect::FirstBootUnitConditionedOnFirstBoot,
            &["first-boot-unit-wrong-condition"],
        ),
        (
            Defect::FirstBootUnitNotEnabled,
            &["first-boot-unit-not-enabled"],
        ),
        (Defect::MachineIdMissing, &["machine-id-missing"]),
        (Defect::MachineIdNonEmpty, &["machine-id-not-empty"]),
        (Defect::NestingOff, &["nesting-off"]),
        (Defect::KeyctlOff, &["keyctl-off"]),
        (Defect::Privileged, &["privileged"]),
        (Defect::DockerMissing, &["docker-missing"]),
        (Defect::HistoryLeftIn, &["shell-history"]),
        (Defect::NoDhcpClient, &["no-dhcp-client"]),
        (Defect::NoIfupdown, &["no-ifupdown"]),
    ];
    for (i, (defect, want)) in cases.iter().enumerate() {
        // Each compression the archive reader supports takes a turn.
        let ext = ["tar.zst", "tar.gz", "tar"][i % 3];
        let p = build(
            dir.path(),
            &format!("vzdump-lxc-9100-2026_06_09-20_41_{i:02}.{ext}"),
            &[*defect],
        );
        let (code, v, out) = inspect(&p);
        assert_eq!(code, Some(1), "{defect:?}: {out}");
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(error_ids(&v), want, "{defect:?}");
        for f in v["report"]["findings"].as_array().unwrap() {
            assert!(
                f["path"].as_str().is_some_and(|p| !p.is_empty())
                    && f["fix"].as_str().is_some_and(|x| !x.is_empty()),
                "{f}"
            );
        }
    }
}

#[test]
fn unreadable_archives_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.tar.zst");
    std::fs::write(&garbage, b"definitely not zstd").unwrap();
    let good = build(
        dir.path(),
        "vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst",
        &[],
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.tar.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let plain = dir.path().join("plain.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&plain).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        b.finish().unwrap();
    }
    let wrong_ext = dir.path().join("golden.zip");
    std::fs::copy(&good, &wrong_ext).unwrap();
    for p in [
        &garbage,
        &truncated,
        &plain,
        &wrong_ext,
        &dir.path().join("missing.tar.zst"),
    ] {
        let (code, v, out) = inspect(p);
        assert_eq!(code, Some(2), "{}: {out}", p.display());
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: {v}",
            p.display()
        );
    }
    let (_, v, _) = inspect(&plain);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no etc/vzdump/pct.conf"),
        "{v}"
    );
}

#[test]
fn recipe_passes_shellcheck_and_refuses_bad_values() {
    let out = Command::new(BIN)
        .args(["golden", "recipe", "--vmid", "9100", "--bridge", "vmbr1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(
        script.contains(felhom_core::golden::FIRST_BOOT_UNIT),
        "the recipe carries the same unit the builder writes"
    );
    let sc = Command::new("shellcheck")
        .args(["-s", "sh", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut sc = sc.expect(
        "shellcheck is required for this test (CI installs it: apt-get install shellcheck)",
    );
    std::io::Write::write_all(sc.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let res = sc.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&res.stdout)
    );

    let bad = Command::new(BIN)
        .args([
            "golden",
            "recipe",
            "--bridge",
            "vmbr0;reboot",
            "--template",
            "local:vztmpl/$(id).tar.zst",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stdout(&bad).is_empty(), "nothing printed for bad input");
    assert!(
        stderr(&bad).contains("--bridge") && stderr(&bad).contains("--template"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn identity_table_and_policies() {
    let out = Command::new(BIN)
        .args(["--output", "json", "golden", "identity", "--policy", "dr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mac"], "keep_archived");
    assert_eq!(v["ssh_host_keys"], "require_same_as_recorded");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"MAC")
            && fields.contains(&"SSH host keys")
            && fields.contains(&"machine-id")
            && fields.contains(&"hostname")
    );
    let out = Command::new(BIN)
        .args(["golden", "identity", "--policy", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A golden with SSH host keys left in: the simulator's guests all share one key, and the
/// bring-up's SSH step catches it and rolls the second guest back.
#[test]
fn baked_host_keys_are_caught_by_the_bring_up() {
    let sim = Sim::start();
    let name = "vzdump-lxc-9101-2026_06_09-20_41_10.tar.zst";
    build_golden_archive(
        &pve_sim::dump_dir(&sim.state_dir, "local").join(name),
        &GoldenBuildOptions {
            defects: vec![Defect::SshKeysLeftIn],
            padding_bytes: 0,
        },
    )
    .unwrap();
    let keyed = |c: &str, v: &str| spec(c, v, "").replace(GOLDEN, &format!("local:backup/{name}"));
    let a = sim.write_spec("a.toml", &keyed("keya", "1500"));
    let out = sim.felhom(&["provision", a.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the first guest's key is unique so far: {}",
        both(&out)
    );
    let b = sim.write_spec("b.toml", &keyed("keyb", "1501"));
    let out = sim.felhom(&["provision", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let msg = both(&out);
    assert!(
        msg.contains("the same as guest 1500") && msg.contains("golden carries baked host keys"),
        "{msg}"
    );
    let state = sim.state();
    assert!(
        guest(&state, 1501).is_none(),
        "the second guest was rolled back"
    );
    assert_clean_invariants(&state);
}

/// The DR policy (from the identity table): a customer's own backup restored keeps its MAC,
/// hostname and SSH host key; a second DR restore must present the key felhom recorded.
#[test]
fn dr_restore_keeps_mac_hostname_and_key() {
    let sim = Sim::start();
    let name = "vzdump-lxc-9102-2026_06_09-20_41_10.tar.zst";
    build_golden_archive(
        &pve_sim::dump_dir(&sim.state_dir, "local").join(name),
        &GoldenBuildOptions {
            defects: vec![Defect::SshKeysLeftIn],
            padding_bytes: 0,
        },
    )
    .unwrap();
    let text = spec("dr", "1510", "")
        .replace(GOLDEN, &format!("local:backup/{name}"))
        .replace("hostname = \"dr-app\"", "hostname = \"felhom-golden\"")
        + "identity = \"dr\"\n";
    let p = sim.write_spec("dr.toml", &text);
    let out = sim.felhom(&["--output", "json", "provision", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rep["jobs"][0]["mac"], "BC:24:11:63:43:F4",
        "DR keeps the archived MAC"
    );
    let fp1 = rep["jobs"][0]["ssh_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let g = sim.state();
    assert_eq!(
        guest(&g, 1510).unwrap()["config"]["hostname"],
        "felhom-golden"
    );
    // Tear down, restore again into another VMID: same key, as recorded.
    assert_eq!(sim.felhom(&["teardown", "1510"]).status.code(), Some(0));
    let p2 = sim.write_spec("dr2.toml", &text.replace("vmid = 1510", "vmid = 1511"));
    let out = sim.felhom(&["--output", "json", "provision", p2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["jobs"][0]["ssh_fingerprint"].as_str().unwrap(), fp1);
}

/// The token secret never reaches a child, nor stays in felhom's own environment: with
/// `FELHOM_TOKEN_SECRET` set, `golden build` runs a stand-in `mmdebstrap` (first in PATH)
/// that records its environment and waits, while the test reads felhom's
/// `/proc/<pid>/environ` and core-dump limit. Needs root, as `golden build` does.
#[test]
fn the_token_secret_reaches_no_child_and_leaves_the_environment() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "`golden build` needs root; run the tests as root, as CI does"
    );
    const SECRET: &str = "5ecret-canary-7f3a9c";
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = dir.path().join("child.env");
    let fake = bin.join("mmdebstrap");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nenv > {0}.tmp && mv {0}.tmp {0}\nsleep 2\nexit 1\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(BIN)
        .args(["golden", "build", "--docker", "none", "--out"])
        .arg(dir.path().join("g.tar.zst"))
        .env("PATH", &path)
        .env("FELHOM_TOKEN_SECRET", SECRET)
        .env("FELHOM_TEST_CANARY", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !seen.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in mmdebstrap never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // felhom itself, while its child runs.
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the stand-in failed the build");
    assert!(
        environ.contains("FELHOM_TEST_CANARY=1"),
        "this is felhom's environment: {environ}"
    );
    assert!(
        !environ.contains("FELHOM_TOKEN_SECRET") && !environ.contains(SECRET),
        "the secret is still in felhom's /proc/<pid>/environ"
    );
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().skip(4).take(2).all(|v| v == "0"),
        "core dumps are off while a secret is held: {core}"
    );
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(
        !env.contains("FELHOM_TOKEN_SECRET") && !env.contains(SECRET),
        "{env}"
    );
    assert!(
        !env.contains("FELHOM_TEST_CANARY"),
        "a minimal environment: {env}"
    );
    assert!(env.lines().any(|l| l == "LANG=C.UTF-8"), "{env}");
    assert!(
        env.lines().any(|l| l.starts_with("FELHOM_GUEST_FINISH=")),
        "{env}"
    );
    assert!(env.lines().any(|l| l == format!("PATH={path}")), "{env}");
}
