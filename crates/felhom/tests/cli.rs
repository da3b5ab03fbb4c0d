//! The command line itself, through the real binary: a reader that goes away, one JSON
//! document per command, tables with headers, completions, man pages and FELHOM_CONFIG.

mod common;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Run felhom with stdout a pipe whose reading end is already closed, so that every write
/// to stdout fails with EPIPE (deterministically: not a race with a fast `head`).
fn with_closed_stdout(mut cmd: Command) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn felhom");
    drop(cmd); // our copy of the writing end
    child.wait_with_output().expect("wait for felhom")
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let sim = Sim::start();
    let spec = sim.write_spec("p.toml", &spec("pipe", "1700", ""));
    let out = sim.felhom(&["provision", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // `felhom jobs | head -1`, the reader gone before the first byte.
    let out = with_closed_stdout(sim.cmd(&["jobs"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "quiet: {}", stderr(&out));

    // The same with JSON, and with a long human output.
    let out = with_closed_stdout(sim.cmd(&["--output", "json", "jobs"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = Command::new(BIN);
    c.args(["golden", "identity"]);
    let out = with_closed_stdout(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    // The command's own exit code survives: a refused VMID is still 2, a drift still 1.
    let out = with_closed_stdout(sim.cmd(&["--output", "json", "teardown", "abc"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // And through a real shell pipe to `head -1`: the header row, exit 0 on both sides.
    let script = r#"set -o pipefail; "$0" --config "$1" jobs | head -1"#;
    let out = Command::new("bash")
        .args(["-c", script, BIN])
        .arg(&sim.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let header = stdout(&out);
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        ["JOB", "KIND", "VMID", "GUEST", "STATE", "STARTED", "ENDED", "ERROR"],
        "{header}"
    );
}

#[test]
fn tables_have_headers_and_rows_line_up() {
    let sim = Sim::start();
    let spec = sim.write_spec("t.toml", &spec("tables", "1710", ""));
    let out = sim.felhom(&["provision", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("RESULT"), "{text}");
    assert!(
        lines[1].starts_with("ok") && lines[1].contains("1710"),
        "{text}"
    );
    assert_eq!(lines[0].find("VMID"), lines[1].find("1710"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes when not a TTY");

    let out = sim.felhom(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["VMID", "HOSTNAME", "STATUS", "IP", "MAC", "SSH", "DRIFT"],
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().starts_with("1710"), "{text}");
}

/// Parsed as exactly one JSON document (serde refuses anything after the first).
fn one_document(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

#[test]
fn golden_recipe_honours_json() {
    let out = Command::new(BIN)
        .args(["--output", "json", "golden", "recipe", "--vmid", "9101"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v = one_document(&out.stdout, "golden recipe");
    let recipe = v["recipe"].as_str().expect("recipe is a string");
    assert!(recipe.starts_with("#!/bin/sh"), "{recipe}");
    assert!(recipe.contains("9101"));
    assert!(recipe.contains(felhom_core::golden::FIRST_BOOT_UNIT));

    // Refused parameters: one JSON error document naming the field, exit 2.
    let out = Command::new(BIN)
        .args(["--output", "json", "golden", "recipe", "--bridge", "br;x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let v = one_document(&out.stdout, "golden recipe error");
    assert_eq!(v["fields"][0]["field"], "--bridge", "{v}");
}

#[test]
fn sim_serve_prints_one_json_line_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("felhom.toml");
    let mut child = Command::new(BIN)
        .args([
            "--output",
            "json",
            "sim",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("sim"))
        .arg("--write-config")
        .arg(&config)
        .args(["--time-scale", "0.02"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let v = one_document(line.as_bytes(), "sim serve");
    let url = v["url"].as_str().expect("url");
    assert!(url.starts_with("https://127.0.0.1:"), "{v}");
    assert_eq!(v["fingerprint"].as_str().map(|f| f.len()), Some(95), "{v}");
    assert!(v["state_dir"].as_str().unwrap().ends_with("sim"), "{v}");
    assert_eq!(v["guests"], "modelled", "{v}");
    let secret_file = v["side_channel_secret_file"].as_str().expect("secret file");
    assert_eq!(
        std::fs::read_to_string(secret_file).unwrap().trim().len(),
        64,
        "{v}"
    );
    // Ready means ready: the config it names is written, and points at the same server.
    assert_eq!(v["config"].as_str(), config.to_str());
    let cfg: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    assert_eq!(cfg["pve"]["url"].as_str(), Some(url));
    assert_eq!(
        cfg["pve"]["fingerprint"].as_str(),
        v["fingerprint"].as_str()
    );

    // SAFETY: kill has no memory-safety preconditions; the child is ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.trim().is_empty(), "only one document: {rest}");
}

/// `--state-dir` that is a symlink, or a directory of another user, is refused as bad input
/// (exit 2, one JSON error naming the flag and the rule) before anything is written into it.
#[test]
fn sim_serve_refuses_a_symlinked_or_foreign_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // SAFETY: no preconditions.
    let foreign = if unsafe { libc::geteuid() } == 0 {
        let d = dir.path().join("theirs");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
        d
    } else {
        // Not root: a directory of root's is another user's.
        PathBuf::from("/")
    };
    for (state_dir, rule) in [(&link, "is a symlink"), (&foreign, "is owned by uid")] {
        let mut child = Command::new(BIN)
            .args([
                "--output",
                "json",
                "sim",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A simulator that accepted the dir would serve until stopped: give it 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "sim serve accepted --state-dir {}: {}",
                    state_dir.display(),
                    both(&out)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", both(&out));
        let v = one_document(&out.stdout, "sim serve error");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains("--state-dir") && e.contains(rule), "{v}");
    }
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written through the link"
    );
    if foreign != Path::new("/") {
        assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
    }
}

#[test]
fn demo_prints_one_json_document() {
    let out = Command::new(BIN)
        .args([
            "--output",
            "json",
            "demo",
            "--guests",
            "2",
            "--time-scale",
            "0.02",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v = one_document(&out.stdout, "demo");
    assert_eq!(v["guests"], 2, "{v}");
    let up = v["provision"].as_array().expect("provision reports");
    let down = v["teardown"].as_array().expect("teardown reports");
    assert_eq!(up.len(), 2, "{v}");
    assert_eq!(down.len(), 2, "{v}");
    assert!(up.iter().all(|r| r["outcome"] == "succeeded"), "{v}");
    assert!(up.iter().all(|r| r["ssh_fingerprint"].is_string()), "{v}");
    assert!(down.iter().all(|r| r["outcome"] == "succeeded"), "{v}");
    assert_eq!(v["golden"]["errors"], 0, "{v}");
    assert!(v["up_s"].as_f64().unwrap() > 0.0);

    // Bad input is one JSON error document too.
    let out = Command::new(BIN)
        .args(["--output", "json", "demo", "--guests", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let v = one_document(&out.stdout, "demo error");
    assert!(v["error"].as_str().unwrap().contains("--guests"), "{v}");
}

/// `demo --nodes 3` runs on a simulated three-node cluster with `node = "auto"`: the
/// guests are spread over the nodes (most free memory first, placements of the run counted),
/// each lives where the placement says, and a re-apply writes nothing; bad combinations are
/// refused before anything starts.
#[test]
fn demo_on_a_cluster_shows_the_placement() {
    let out = Command::new(BIN)
        .args(["--output", "json", "demo", "--guests", "6", "--nodes", "3"])
        .args(["--time-scale", "0.02"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v = one_document(&out.stdout, "demo");
    assert_eq!(v["nodes"], 3, "{v}");
    let placement = v["placement"].as_array().expect("placement");
    assert_eq!(placement.len(), 6, "{v}");
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for p in placement {
        *per_node
            .entry(p["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("pve1", 2), ("pve2", 2), ("pve3", 2)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        "{v}"
    );
    assert_eq!(v["apply_again"]["writes"], 0, "{v}");

    for bad in [
        &["demo", "--nodes", "0"][..],
        &["demo", "--nodes", "3", "--strategy", "linked-clone"][..],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", both(&out));
        assert!(stderr(&out).contains("--nodes"), "{}", both(&out));
    }
}

/// `demo --strategy restore,linked-clone` runs both, the second after `golden publish`, and
/// reports each one's times; `--keep` keeps one strategy's guests only.
#[test]
fn demo_runs_each_strategy_and_reports_its_times() {
    let out = Command::new(BIN)
        .args([
            "--output",
            "json",
            "demo",
            "--guests",
            "2",
            "--time-scale",
            "0.02",
        ])
        .args(["--strategy", "restore,linked-clone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v = one_document(&out.stdout, "demo");
    let runs = v["strategies"].as_array().expect("strategies");
    let names: Vec<&str> = runs.iter().filter_map(|r| r["strategy"].as_str()).collect();
    assert_eq!(names, ["restore", "linked-clone"], "{v}");
    for r in runs {
        assert_eq!(r["succeeded"], 2, "{r}");
        assert!(r["up_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["steps_s"]["restore"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["steps_s"]["ssh"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(runs[0]["publish_s"].is_null(), "{v}");
    assert!(runs[1]["publish_s"].as_f64().unwrap() > 0.0, "{v}");

    let out = Command::new(BIN)
        .args(["demo", "--keep", "--strategy", "restore,linked-clone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("--keep"), "{}", both(&out));
    let out = Command::new(BIN)
        .args(["demo", "--strategy", "clone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("--strategy"), "{}", both(&out));
}

#[test]
fn completions_and_man_come_from_the_clap_tree() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let script = stdout(&out);
    assert!(script.contains("complete -F _felhom"), "{script}");
    for word in ["provision", "teardown", "golden", "--state-dir", "--output"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    // Valid bash: it parses, and sourcing it registers the completion.
    let check = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p felhom"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.as_ref().unwrap(), script.as_bytes()).unwrap();
    let res = check.wait_with_output().unwrap();
    assert!(res.status.success(), "{}", both(&res));
    assert!(stdout(&res).contains("_felhom"), "{}", both(&res));

    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(stdout(&out).contains("provision"), "{shell}");
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let out = Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH felhom 1"), "{page}");
    for sub in [
        "apply",
        "plan",
        "resume",
        "teardown",
        "status",
        "jobs",
        "preflight",
        "role",
        "demo",
        "sim",
        "golden",
        "bench",
        "completions",
        "man",
    ] {
        assert!(page.contains(&format!("felhom\\-{sub}(1)")), "{sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    for page in ["felhom.1", "felhom-golden-build.1", "felhom-sim-serve.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}

#[test]
fn felhom_config_is_used_and_the_flag_wins() {
    let sim = Sim::start();
    let jobs = |cfg_flag: Option<&std::path::Path>, env: Option<&std::path::Path>, cwd| {
        let mut c = Command::new(BIN);
        c.env_remove("FELHOM_CONFIG").current_dir(cwd);
        if let Some(p) = cfg_flag {
            c.arg("--config").arg(p);
        }
        if let Some(p) = env {
            c.env("FELHOM_CONFIG", p);
        }
        c.args(["--output", "json", "jobs"]).output().unwrap()
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("no-such.toml");

    // The environment alone.
    let out = jobs(None, Some(&sim.config), elsewhere.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(one_document(&out.stdout, "jobs")["jobs"].is_array());

    // The flag wins over the environment.
    let out = jobs(Some(&sim.config), Some(&missing), elsewhere.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // A FELHOM_CONFIG that names no file is bad config, and the error names it.
    let out = jobs(None, Some(&missing), elsewhere.path());
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("no-such.toml"), "{}", both(&out));

    // Neither: ./felhom.toml (the simulator wrote its config as felhom.toml in its dir).
    let out = jobs(None, None, sim.dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

/// Text PVE controls (here a marker's job id in a guest's description, which `apply` quotes
/// when it refuses the VMID) prints escaped in human output, and exactly in JSON.
#[test]
fn untrusted_text_is_escaped_for_terminals_and_exact_in_json() {
    const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let sim = Sim::start();
    let spec_a = sim.write_spec("a.toml", &spec("esca", "1710", ""));
    let out = sim.felhom(&["apply", spec_a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    // Someone with VM.Config.Options rewrites the description.
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let cfg = felhom_core::config::Config::parse(&sim.config, &text).unwrap();
    let client = pve_api::PveClient::new(cfg.client).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.put::<Value>(
            "/nodes/pve/lxc/1710/config",
            &[(
                "description",
                format!("felhom: job={HOSTILE} customer=other name=x state=provisioned"),
            )],
        ))
        .unwrap();
    let spec_b = sim.write_spec("b.toml", &spec("escb", "1710", ""));

    let out = sim.felhom(&["apply", spec_b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let shown = both(&out);
    assert!(
        shown.contains("(job \\x1b]0;pwned\\x07\\x1b[2J)"),
        "escaped, visibly: {shown}"
    );
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07),
        "no raw control character reaches the terminal: {shown:?}"
    );

    let out = sim.felhom(&["--output", "json", "apply", spec_b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let doc = json(&out);
    let rule = doc["fields"][0]["rule"].as_str().unwrap();
    assert!(
        rule.contains(&format!("(job {HOSTILE})")),
        "JSON keeps the exact text: {rule:?}"
    );
}
