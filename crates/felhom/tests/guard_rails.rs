//! Least privilege and guard rails (issue #6): preflight against exact grants, the pin, the
//! secret never leaking, and felhom refusing guests that are not its own in every command.

mod common;
use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::{json, Value};

fn client(sim: &Sim) -> pve_api::PveClient {
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let cfg = felhom_core::config::Config::parse(&sim.config, &text).unwrap();
    pve_api::PveClient::new(cfg.client).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A config for `sim` using a token made with exactly `acl`.
fn config_with_token(sim: &Sim, name: &str, acl: &Value) -> std::path::PathBuf {
    let reply: Value = sim.post(
        "tokens",
        &json!({ "userid": "preflight@pve", "tokenid": name, "privsep": true, "acl": acl }),
    );
    let secret_file = sim.dir.path().join(format!("{name}.token"));
    std::fs::write(&secret_file, reply["secret"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    t["pve"]["token_id"] = toml::Value::String(format!("preflight@pve!{name}"));
    t["pve"]["token_secret_file"] = toml::Value::String(secret_file.display().to_string());
    let p = sim.dir.path().join(format!("{name}.toml"));
    std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    p
}

/// `felhom role`'s grants for `spec` on `sim`: exactly them make preflight ready with no
/// excess, and each single privilege removed makes it not ready, naming exactly that
/// privilege and path. Returns the role's JSON.
fn role_grants_are_exactly_what_preflight_needs(sim: &Sim, spec: &std::path::Path) -> Value {
    let out = sim.felhom(&["preflight", spec.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the bootstrap token is ready: {}",
        both(&out)
    );

    let role = sim.felhom(&["--output", "json", "role", spec.to_str().unwrap()]);
    let role: Value = serde_json::from_slice(&role.stdout).unwrap();
    let acl = role["acl"].clone();
    assert!(role["commands"][0]
        .as_str()
        .unwrap()
        .starts_with("pveum role add FelhomAgent -privs"));

    // Exactly the generated grants: ready, and no excess.
    let exact = config_with_token(sim, "exact", &acl);
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&exact)
        .args(["--output", "json", "preflight", spec.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rep["paths"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["excess"].as_array().unwrap().is_empty()),
        "{rep}"
    );

    // Each single privilege removed: not ready, naming exactly that privilege and path.
    let mut tried = 0;
    for (i, entry) in acl.as_array().unwrap().iter().enumerate() {
        for (j, privilege) in entry["privs"].as_array().unwrap().iter().enumerate() {
            let mut narrowed = acl.clone();
            narrowed[i]["privs"].as_array_mut().unwrap().remove(j);
            let cfg = config_with_token(sim, &format!("minus{i}x{j}"), &narrowed);
            let out = std::process::Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .args(["--output", "json", "preflight", spec.to_str().unwrap()])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(1),
                "without {privilege} on {}: {}",
                entry["path"],
                both(&out)
            );
            let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
            let missing: Vec<(String, String)> = rep["paths"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| {
                    p["missing"].as_array().unwrap().iter().map(move |m| {
                        (
                            p["path"].as_str().unwrap().to_string(),
                            m.as_str().unwrap().to_string(),
                        )
                    })
                })
                .collect();
            assert_eq!(
                missing,
                vec![(
                    entry["path"].as_str().unwrap().to_string(),
                    privilege.as_str().unwrap().to_string()
                )]
            );
            assert!(rep["grant_commands"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c.as_str().unwrap().contains(privilege.as_str().unwrap())));
            tried += 1;
        }
    }
    assert!(tried >= 10, "only {tried} privileges tried");
    role
}

#[test]
fn preflight_names_exactly_the_missing_privilege_and_the_role_suffices() {
    let sim = Sim::start();
    let spec_path = sim.write_spec("pf.toml", &spec("pf", "1600", MOUNT));
    let role = role_grants_are_exactly_what_preflight_needs(&sim, &spec_path);
    // A guest on a fixed node needs no view of the nodes.
    assert!(
        role["acl"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["path"] != "/nodes"),
        "{role}"
    );
}

/// A spec placed by felhom (`node = "auto"`) on a cluster: placement reads each node's
/// memory in `/cluster/resources`, which PVE shows only with `Sys.Audit` on the node, so
/// the role grants it on `/nodes` (propagating) and preflight names it when it is missing.
#[test]
fn placement_needs_sys_audit_on_the_nodes_and_preflight_says_so() {
    let sim = Sim::cluster(3, "", 0.05);
    let text =
        spec("pfauto", "\"auto\"", MOUNT).replacen("node = \"pve\"\n", "node = \"auto\"\n", 1);
    assert!(text.contains("node = \"auto\""), "{text}");
    let spec_path = sim.write_spec("pfauto.toml", &text);
    let role = role_grants_are_exactly_what_preflight_needs(&sim, &spec_path);
    let nodes: Vec<&Value> = role["acl"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/nodes")
        .collect();
    assert_eq!(nodes.len(), 1, "{role}");
    assert_eq!(nodes[0]["privs"], json!(["Sys.Audit"]), "{role}");
    assert_eq!(nodes[0]["propagate"], true, "{role}");
    assert!(
        role["commands"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with("pveum acl modify /nodes ")
            && c.as_str().unwrap().ends_with("-propagate 1")),
        "{role}"
    );
}

/// With no SPEC, preflight and role check the work the config names (`felhom.specs`);
/// with neither, they refuse with exit 2 and say what to give.
#[test]
fn preflight_and_role_default_to_the_configured_work() {
    let sim = Sim::start();
    let out = sim.felhom(&["preflight"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(both(&out).contains("felhom.specs"), "{}", both(&out));

    sim.write_spec("work.toml", &spec("work", "1610", MOUNT));
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    t["felhom"].as_table_mut().unwrap().insert(
        "specs".into(),
        toml::Value::Array(vec![toml::Value::String("work.toml".into())]),
    );
    let cfg = sim.dir.path().join("with-work.toml");
    std::fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--output", "json", "preflight"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["ready"], true, "{rep}");
    let out = run(&["role"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        stdout(&out).contains("pveum role add FelhomAgent"),
        "{}",
        both(&out)
    );
}

#[test]
fn a_wrong_pin_fails_closed_without_writes() {
    let sim = Sim::start();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    t["pve"]["fingerprint"] = toml::Value::String(["AB"; 32].join(":"));
    let bad = sim.dir.path().join("badpin.toml");
    std::fs::write(&bad, toml::to_string(&t).unwrap()).unwrap();
    let spec_path = sim.write_spec("pin.toml", &spec("pin", "1610", ""));
    let before = sim.write_count();
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .args(["provision", spec_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        both(&out).contains("fingerprint mismatch"),
        "{}",
        both(&out)
    );
    assert_eq!(sim.write_count(), before);
}

/// A loopback TCP relay in front of `to` that counts the connections made through it (a TLS
/// handshake refused by the client never reaches the simulator's request log).
fn counting_relay(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let pipe = |mut a: TcpStream, mut b: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                })
            };
            pipe(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            pipe(outbound, inbound);
        }
    });
    (port, count)
}

#[test]
fn a_wrong_pin_is_permanent_one_handshake_and_exit_2() {
    let sim = Sim::start();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    let presented = t["pve"]["fingerprint"].as_str().unwrap().to_string();
    let url: pve_api::Url = t["pve"]["url"].as_str().unwrap().parse().unwrap();
    let (relay, connections) = counting_relay(url.port().unwrap());
    let wrong = ["AB"; 32].join(":");
    t["pve"]["fingerprint"] = toml::Value::String(wrong.clone());
    t["pve"]["url"] = toml::Value::String(format!("https://127.0.0.1:{relay}"));
    let bad = sim.dir.path().join("badpin.toml");
    std::fs::write(&bad, toml::to_string(&t).unwrap()).unwrap();
    // Two guests, so that validation alone would ask PVE six things.
    let a = sim.write_spec("pin-a.toml", &spec("pina", "1611", ""));
    let b = sim.write_spec("pin-b.toml", &spec("pinb", "1612", ""));
    let before = sim.get("requests").as_array().unwrap().len();
    for args in [
        vec!["apply", a.to_str().unwrap(), b.to_str().unwrap()],
        vec!["teardown", "1611"],
        vec!["preflight", a.to_str().unwrap()],
    ] {
        connections.store(0, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&bad)
            .args(&args)
            .env_remove("FELHOM_CRASH_AT")
            .output()
            .unwrap();
        let took = started.elapsed();
        let text = both(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(
            took < std::time::Duration::from_secs(5),
            "{args:?} took {took:?}: a refused certificate is never retried"
        );
        assert_eq!(
            connections.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{args:?}: one handshake, then nothing more is sent to that server: {text}"
        );
        for needle in [wrong.as_str(), presented.as_str(), "pvenode cert info"] {
            assert!(text.contains(needle), "{args:?}: no {needle:?} in {text}");
        }
    }
    assert_eq!(
        sim.get("requests").as_array().unwrap().len(),
        before,
        "no request reached the simulator"
    );
}

#[test]
fn the_journal_is_private_and_a_loose_one_is_warned_about() {
    let sim = Sim::start();
    let out = sim.felhom(&["jobs"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let journal = sim.journal();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&journal), 0o600, "a new journal is its owner's only");
    assert!(
        !stderr(&out).contains("journal file"),
        "no warning for a private journal: {}",
        both(&out)
    );
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sim.felhom(&["jobs"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&journal.display().to_string()) && err.contains("0644"),
        "the warning names the file and its mode: {err}"
    );
    assert_eq!(
        mode(&journal),
        0o644,
        "an existing file's mode is the owner's call"
    );
}

#[test]
fn the_secret_never_leaks() {
    let sim = Sim::start();
    let secret = std::fs::read_to_string(sim.state_dir.join("felhom-agent.token"))
        .unwrap()
        .trim()
        .to_string();
    let spec_path = sim.write_spec("leak.toml", &spec("leak", "1620", MOUNT));
    let mut all = String::new();
    for args in [
        vec!["provision", spec_path.to_str().unwrap()],
        vec!["status"],
        vec!["jobs"],
        vec!["--output", "json", "jobs"],
        vec!["teardown", "1620"],
        vec!["plan", "/nonexistent.toml"],
    ] {
        let out = sim.felhom_env(&args, &[("RUST_LOG", "trace"), ("RUST_BACKTRACE", "1")]);
        all.push_str(&both(&out));
    }
    // A failing run too (bad VMID): errors must not carry it either.
    let bad = sim.write_spec("leak2.toml", &spec("leak", "5", ""));
    all.push_str(&both(&sim.felhom_env(
        &["provision", bad.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    )));
    assert!(all.len() > 500, "the runs printed something");
    assert!(
        !all.contains(&secret),
        "the token secret appeared in output or logs"
    );
    let journal = std::fs::read(sim.journal()).unwrap();
    assert!(
        !String::from_utf8_lossy(&journal).contains(&secret),
        "the token secret is in the journal"
    );
    let reqs = sim.get("requests").to_string();
    assert!(
        !reqs.contains(&secret),
        "the token secret is in the simulator's request log"
    );
    // A world-readable secret file is refused before anything is sent.
    let token_file = sim.state_dir.join("felhom-agent.token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sim.felhom(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(both(&out).contains("chmod 600"), "{}", both(&out));
}

/// Without `pve.token_secret_file`, the secret comes from systemd credentials
/// (`$CREDENTIALS_DIRECTORY/felhom-token`), else from `FELHOM_TOKEN_SECRET`; with none of
/// them felhom refuses before sending anything, naming where a secret may come from.
#[test]
fn the_secret_comes_from_credentials_or_the_environment() {
    let sim = Sim::start();
    let spec_path = sim.write_spec("sec.toml", &spec("sec", "1620", MOUNT));
    let secret = std::fs::read_to_string(sim.state_dir.join("felhom-agent.token")).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    t["pve"].as_table_mut().unwrap().remove("token_secret_file");
    let cfg = sim.dir.path().join("no-secret-file.toml");
    std::fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
    let creds = sim.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(BIN);
        c.arg("--config")
            .arg(&cfg)
            .args(["preflight", spec_path.to_str().unwrap()])
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("FELHOM_TOKEN_SECRET");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let before = sim.write_count();

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    for named in [
        "pve.token_secret_file",
        "felhom-token",
        "FELHOM_TOKEN_SECRET",
    ] {
        assert!(both(&out).contains(named), "{named}: {}", both(&out));
    }

    let out = run(&[("FELHOM_TOKEN_SECRET", secret.trim())]);
    assert_eq!(out.status.code(), Some(0), "env: {}", both(&out));

    let cred = creds.join("felhom-token");
    std::fs::write(&cred, &secret).unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
    let creds_dir = creds.to_str().unwrap();
    // The credential wins over a wrong environment value.
    let out = run(&[
        ("CREDENTIALS_DIRECTORY", creds_dir),
        (
            "FELHOM_TOKEN_SECRET",
            "00000000-0000-0000-0000-000000000000",
        ),
    ]);
    assert_eq!(out.status.code(), Some(0), "credentials: {}", both(&out));
    assert!(!both(&out).contains(secret.trim()));
    assert_eq!(sim.write_count(), before, "preflight wrote to PVE");
}

#[test]
fn guard_rails_in_teardown_rollback_and_resume() {
    let sim = Sim::start();
    // Teardown outside the range, and of a VMID felhom has no record of.
    let out = sim.felhom(&["teardown", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        both(&out).contains("outside felhom's range"),
        "{}",
        both(&out)
    );

    // Resume of a job whose guest lost its marker while felhom was down: refused, untouched.
    let spec_path = sim.write_spec("gr.toml", &spec("gr", "1630", MOUNT));
    let out = sim.felhom_env(
        &["provision", spec_path.to_str().unwrap()],
        &[("FELHOM_CRASH_AT", "rootfs:before")],
    );
    assert!(!out.status.success());
    // The dead process's job shows as interrupted (started, never ended), and its guest as
    // half-built with the job that owns it: drift, exit 1.
    let jobs = sim.felhom(&["--output", "json", "jobs"]);
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["vmid"] == 1630)
        .unwrap()
        .clone();
    assert_eq!(job["state"], "interrupted", "{job}");
    assert!(
        job["started_at"].as_i64().is_some() && job["ended_at"].is_null(),
        "{job}"
    );
    let job_id = job["job"].as_str().unwrap().to_string();
    let st = sim.felhom(&["--output", "json", "status"]);
    assert_eq!(st.status.code(), Some(1), "{}", both(&st));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let g = st["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 1630)
        .unwrap()
        .clone();
    assert!(
        g["status"].as_str().unwrap().starts_with("half-built"),
        "{g}"
    );
    assert_eq!(g["job"], job_id.as_str(), "{g}");
    assert_eq!(g["drift"][0]["field"], "half_built", "{g}");
    let c = client(&sim);
    rt().block_on(async {
        let v = pve_api::Vmid::try_from(1630).unwrap();
        c.lxc_update_config(
            "pve",
            v,
            &[("description".into(), "someone else's guest now".into())],
            None,
        )
        .await
        .unwrap();
    });
    let before = sim.write_count();
    let out = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "refused, and the rollback refuses too: {}",
        both(&out)
    );
    assert!(both(&out).contains("ownership marker"), "{}", both(&out));
    let state = sim.state();
    assert_eq!(
        guest(&state, 1630).unwrap()["config"]["description"],
        "someone else's guest now"
    );
    assert_eq!(
        sim.write_count(),
        before,
        "nothing was written to the foreign guest"
    );
    // Bare `resume` now names the job that needs a person, and what to run then: exit 3.
    let out = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let needs = rep["needs_person"].as_array().unwrap();
    assert!(
        needs.iter().any(|n| n["job"] == job_id.as_str()
            && n["run"] == format!("felhom resume {job_id}").as_str()),
        "{rep}"
    );
    assert_eq!(sim.write_count(), before, "listing wrote");
}
