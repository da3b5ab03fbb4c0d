//! felhom as a reconciler (issue 14), end to end: the real binary over real HTTPS against a
//! spawned simulator, asserting on what the simulator saw (its request log, its state).
//!
//! | test | what `apply` must do |
//! |---|---|
//! | `apply_twice_writes_nothing_the_second_time` | the second run: zero writes, `unchanged`; `plan` agrees |
//! | `crash_at_every_bringup_step_then_the_same_apply_converges` | every crash point × the *same* `apply` (not `resume`): one guest, running, proven |
//! | `a_torn_down_half_built_guest_never_comes_back` | a teardown supersedes the crashed bring-up; `resume` and `apply` never revive it |
//! | `a_foreign_guest_at_a_crashed_jobs_vmid_is_never_touched` | zero writes to it; the job refuses/pauses naming it |
//! | `three_processes_one_spec_auto_vmid_make_one_guest` | identity leases across processes |
//! | `pve_killed_mid_restore_pauses_then_resume_finishes` | exit 3 within the connect budget, paused, never rolled back |
//! | `drift_is_named_then_repaired` | stopped / renamed / tags / marker rewritten / a mount detached from the running guest: `status` 1, `apply` repairs (the detach reverted, the same volume) |
//! | `unrepairable_drift_is_refused_without_writes` | a changed MAC, a shrink: refused, nothing written |
//! | `prune_only_with_the_flag_and_teardown_by_identity` | `--prune`, `plan --prune`, `teardown customer/name`, `absent` |
//! | `an_undecodable_stored_spec_pauses_and_never_destroys` | a journal from another felhom version |
//! | `one_identity_in_two_files_is_refused_before_any_write` | exit 2 naming both files |

mod common;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client with an administrator's token (made through the simulator's side channel):
/// someone other than felhom changing PVE.
fn admin(sim: &Sim) -> pve_api::PveClient {
    sim.admin(ADMIN_PRIVS)
}

/// What an administrator may do to guests and storage (PVE's Administrator role has more).
const ADMIN_PRIVS: &[&str] = &[
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
    "Datastore.Audit",
    "SDN.Use",
    "Sys.Audit",
];

fn vmid(n: u32) -> pve_api::Vmid {
    pve_api::Vmid::try_from(n).unwrap()
}

/// Run a task-returning admin call to its end.
fn admin_task(
    c: &pve_api::PveClient,
    f: impl std::future::Future<Output = Result<pve_api::Upid, pve_api::ApiError>>,
) {
    rt().block_on(async {
        let upid = f.await.unwrap();
        c.wait_task(&upid, &pve_api::WaitOptions::default())
            .await
            .unwrap();
    })
}

fn admin_config(c: &pve_api::PveClient, v: u32, params: &[(&str, &str)]) {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    rt().block_on(c.lxc_update_config("pve", vmid(v), &params, None))
        .unwrap();
}

/// Write requests (POST/PUT/DELETE) the simulator received, in order.
fn writes(sim: &Sim) -> Vec<Value> {
    sim.get("requests")
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| matches!(r["method"].as_str(), Some("POST" | "PUT" | "DELETE")))
        .cloned()
        .collect()
}

/// Write requests that concern guest `v` (its path, or a create/restore naming it).
fn writes_to(sim: &Sim, v: u32) -> Vec<Value> {
    let seg = format!("/lxc/{v}/");
    let end = format!("/lxc/{v}");
    writes(sim)
        .into_iter()
        .filter(|r| {
            let p = r["path"].as_str().unwrap_or("");
            p.contains(&seg)
                || p.ends_with(&end)
                || r["params"]["vmid"].as_str() == Some(&v.to_string())
                || r["params"]["vmid"].as_u64() == Some(v as u64)
        })
        .collect()
}

fn apply(sim: &Sim, args: &[&str]) -> Output {
    let mut a = vec!["--output", "json", "apply"];
    a.extend_from_slice(args);
    sim.felhom(&a)
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The guests whose hostname is `hostname`.
fn guests_named<'a>(state: &'a Value, hostname: &str) -> Vec<&'a Value> {
    state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["config"]["hostname"] == hostname)
        .collect()
}

fn jobs(sim: &Sim) -> Vec<Value> {
    let out = sim.felhom(&["--output", "json", "jobs"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    json(&out)["jobs"].as_array().unwrap().clone()
}

fn status_of(sim: &Sim, v: u32) -> (Option<i32>, Value) {
    let out = sim.felhom(&["--output", "json", "status", &v.to_string()]);
    (out.status.code(), json(&out)["guests"][0].clone())
}

fn drift_fields(g: &Value) -> Vec<String> {
    g["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn apply_twice_writes_nothing_the_second_time() {
    let sim = Sim::start();
    let p = sim.write_spec("twice.toml", &spec("twice", "\"auto\"", MOUNT));
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let first = json(&out)["jobs"][0].clone();
    assert_eq!(first["outcome"], "succeeded", "{first}");
    let v = first["vmid"].as_u64().unwrap() as u32;

    let before = writes(&sim).len();
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let second = json(&out)["jobs"][0].clone();
    assert_eq!(second["outcome"], "unchanged", "{second}");
    assert_eq!(second["vmid"], v);
    let after = writes(&sim);
    assert_eq!(
        after.len(),
        before,
        "the second apply wrote: {:?}",
        &after[before..]
    );

    let out = sim.felhom(&["--output", "json", "plan", path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let plan = json(&out)["plans"][0].clone();
    assert_eq!(plan["decision"]["decision"], "unchanged", "{plan}");
    assert_eq!(plan["decision"]["vmid"], v, "{plan}");
    assert_eq!(writes(&sim).len(), before, "plan wrote");
}

/// Every bring-up step × {before, after}: SIGKILL felhom there, then run the very same
/// `apply` again. One guest per identity, running, `status` clean, invariants clean.
#[test]
fn crash_at_every_bringup_step_then_the_same_apply_converges() {
    use felhom_core::job::Step;
    let started = Instant::now();
    let sim = Sim::start();
    let cases: Vec<(String, u32)> = felhom_core::bringup::STEPS
        .iter()
        .flat_map(|s| ["before", "after"].map(|p| format!("{}:{p}", s.name())))
        .zip(1700..)
        .collect();
    run_concurrently(&cases, 6, |(crash, n)| {
        let customer = format!("re{n}");
        // Half of the cases let felhom pick the VMID: the re-run must find the same guest.
        let vmid_text = if n % 2 == 0 {
            n.to_string()
        } else {
            "\"auto\"".to_string()
        };
        let p = sim.write_spec(
            &format!("{customer}.toml"),
            &spec(&customer, &vmid_text, MOUNT),
        );
        let out = sim.felhom_env(&["apply", path(&p)], &[("FELHOM_CRASH_AT", crash)]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{crash}: not killed at the crash point: {}",
            both(&out)
        );
        let out = apply(&sim, &[path(&p)]);
        assert_eq!(out.status.code(), Some(0), "{crash}: {}", both(&out));
        let rep = json(&out)["jobs"][0].clone();
        assert!(
            matches!(rep["outcome"].as_str(), Some("succeeded" | "unchanged")),
            "{crash}: {rep}"
        );
        let state = sim.state();
        let mine = guests_named(&state, &format!("{customer}-app"));
        assert_eq!(mine.len(), 1, "{crash}: guests: {mine:?}");
        let g = mine[0];
        assert_eq!(g["status"], "running", "{crash}");
        let v = g["vmid"].as_u64().unwrap() as u32;
        assert_eq!(rep["vmid"], v, "{crash}: {rep}");
        let (code, st) = status_of(&sim, v);
        assert_eq!(code, Some(0), "{crash}: status: {st}");
        let vols = state["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["owner"].as_u64() == Some(v as u64))
            .count();
        assert_eq!(vols, 2, "{crash}: rootfs + one mount: {}", state["volumes"]);
        // A second re-run is a no-op.
        let out = apply(&sim, &[path(&p)]);
        assert_eq!(json(&out)["jobs"][0]["outcome"], "unchanged", "{crash}");
    });
    assert_clean_invariants(&sim.state());
    let open: Vec<Value> = jobs(&sim)
        .into_iter()
        .filter(|j| !matches!(j["state"].as_str(), Some("succeeded")))
        .collect();
    assert!(open.is_empty(), "jobs left open: {open:?}");
    eprintln!(
        "{} crash points × re-apply: {:.1} s wall",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_torn_down_half_built_guest_never_comes_back() {
    let sim = Sim::start();
    let p = sim.write_spec("gone.toml", &spec("gone", "1810", MOUNT));
    let out = sim.felhom_env(
        &["apply", path(&p)],
        &[("FELHOM_CRASH_AT", "restore:after")],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", both(&out));
    assert!(
        guest(&sim.state(), 1810).is_some(),
        "restored before the crash"
    );

    let out = sim.felhom(&["--output", "json", "teardown", "1810"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(guest(&sim.state(), 1810).is_none());

    let out = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let other = sim.write_spec("other.toml", &spec("other", "\"auto\"", ""));
    let out = apply(&sim, &[path(&other)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    let state = sim.state();
    assert!(guest(&state, 1810).is_none(), "the torn-down guest is back");
    assert!(guests_named(&state, "gone-app").is_empty());
    let restores = writes(&sim)
        .iter()
        .filter(|w| {
            w["method"] == "POST"
                && w["path"].as_str().unwrap().ends_with("/lxc")
                && w["params"]["hostname"] == "gone-app"
        })
        .count();
    assert_eq!(restores, 1, "gone-app was restored again");
    let up = jobs(&sim)
        .into_iter()
        .find(|j| j["kind"] == "bringup" && j["hostname"] == "gone-app")
        .unwrap();
    assert_eq!(up["state"], "superseded", "{up}");
    assert_clean_invariants(&state);
}

/// A fixed VMID is checked against the batch's shared cluster read, a moment old (no
/// `nextid` per guest), so someone else may take it between that read and the restore (the
/// simulator's `taken_before_create` fault puts a guest without felhom's marker there just
/// before the POST). PVE refuses the restore, nothing of the job is made, the guest there is
/// never touched, and the rollback ends clean: no person is needed to tell that nothing of
/// this job is at the VMID.
#[test]
fn a_fixed_vmid_taken_just_before_the_restore_is_refused_and_left_alone() {
    let sim = Sim::with("taken_before_create=1310", 0.02);
    let p = sim.write_spec("tk.toml", &spec("tk", "1310", ""));
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(rep["outcome"], "rolled_back", "{rep}");
    assert!(
        rep["error"]
            .as_str()
            .is_some_and(|e| e.contains("VMID 1310 holds a guest this job did not create")),
        "{rep}"
    );
    let state = sim.state();
    let theirs = guest(&state, 1310).expect("the other guest stays");
    assert_eq!(theirs["config"]["hostname"], "someone-else");
    assert!(theirs["config"].get("description").is_none(), "{theirs}");
    // The refused create is the only request felhom sent for that VMID that could write.
    let w = writes_to(&sim, 1310);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["method"], "POST");
    assert_eq!(w[0]["status"], 500);
    assert!(guests_named(&state, "tk-app").is_empty());
}

#[test]
fn a_foreign_guest_at_a_crashed_jobs_vmid_is_never_touched() {
    let sim = Sim::start();
    let p = sim.write_spec("fx.toml", &spec("fx", "\"auto\"", ""));
    let out = sim.felhom_env(
        &["apply", path(&p)],
        &[("FELHOM_CRASH_AT", "reserve:after")],
    );
    assert_eq!(out.status.signal(), Some(9), "{}", both(&out));
    let job = jobs(&sim)
        .into_iter()
        .find(|j| j["hostname"] == "fx-app")
        .unwrap();
    let v = job["vmid"]
        .as_u64()
        .expect("the reserve step recorded its VMID") as u32;
    assert!(guest(&sim.state(), v as u64).is_none());

    // Someone else restores a guest of their own at that VMID while felhom is down.
    let adm = admin(&sim);
    let params: Vec<(String, String)> = [
        ("vmid", v.to_string()),
        ("ostemplate", GOLDEN.to_string()),
        ("restore", "1".to_string()),
        ("storage", "local-lvm".to_string()),
        ("hostname", "theirs".to_string()),
        ("description", "not felhom's".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    admin_task(&adm, adm.lxc_create("pve", &params));
    admin_task(&adm, adm.lxc_start("pve", vmid(v)));
    let before_state = guest(&sim.state(), v as u64).unwrap().clone();
    let before = writes_to(&sim, v).len();

    // The same apply: the crashed job finds a guest it did not make at its VMID and refuses
    // it (its rollback releases only felhom's own lease); the identity is then built at
    // another VMID.
    let out = apply(&sim, &[path(&p)]);
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_ne!(rep["vmid"], v, "{}", both(&out));
    let state = sim.state();
    let mine = guests_named(&state, "fx-app");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["status"], "running");
    let out2 = sim.felhom(&["--output", "json", "resume"]);
    assert_eq!(out2.status.code(), Some(0), "{}", both(&out2));

    let after = writes_to(&sim, v);
    assert_eq!(
        after.len(),
        before,
        "felhom wrote to the foreign guest: {:?}",
        &after[before..]
    );
    let now = guest(&sim.state(), v as u64).unwrap().clone();
    assert_eq!(now["status"], "running");
    assert_eq!(now["config"], before_state["config"]);
    let j = jobs(&sim)
        .into_iter()
        .find(|j| j["job"] == job["job"])
        .unwrap();
    assert!(
        matches!(
            j["state"].as_str(),
            Some("paused" | "failed" | "rolled_back")
        ),
        "{j}"
    );
    assert!(
        j["error"].as_str().unwrap_or("").contains(&v.to_string()),
        "{j}"
    );
}

/// Three felhom processes apply one spec (VMID `auto`) at once, on one journal: one guest.
#[test]
fn three_processes_one_spec_auto_vmid_make_one_guest() {
    let sim = Sim::with("", 0.2);
    let p = sim.write_spec("three.toml", &spec("three", "\"auto\"", MOUNT));
    let children: Vec<_> = (0..3)
        .map(|_| {
            sim.cmd(&["--output", "json", "apply", path(&p)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut outcomes = Vec::new();
    for o in &outs {
        assert_eq!(o.status.code(), Some(0), "{}", both(o));
        outcomes.push(json(o)["jobs"][0]["outcome"].as_str().unwrap().to_string());
    }
    outcomes.sort();
    assert_eq!(outcomes, ["succeeded", "unchanged", "unchanged"]);
    let state = sim.state();
    assert_eq!(guests_named(&state, "three-app").len(), 1, "{state}");
    assert_clean_invariants(&state);
}

#[test]
fn pve_killed_mid_restore_pauses_then_resume_finishes() {
    // Restore takes ~1 s of modelled time: long enough to kill the simulator inside it.
    let mut sim = Sim::with("", 0.5);
    let budget = 5;
    let cfg = sim.dir.path().join("budget.toml");
    let write_cfg = |sim: &Sim| {
        let mut t: toml::Table = std::fs::read_to_string(&sim.config)
            .unwrap()
            .parse()
            .unwrap();
        t["felhom"]["connect_budget_secs"] = toml::Value::Integer(budget);
        std::fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
    };
    write_cfg(&sim);
    let p = sim.write_spec("pk.toml", &spec("pk", "1830", ""));
    let child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["apply", path(&p)])
        .env_remove("FELHOM_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writes(&sim)
        .iter()
        .any(|w| w["method"] == "POST" && w["path"].as_str().unwrap().ends_with("/lxc"))
    {
        assert!(Instant::now() < deadline, "the restore was never sent");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    sim.crash();
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    eprintln!("felhom gave up {:.1} s after PVE died", took.as_secs_f64());
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(
        took < Duration::from_secs(budget as u64 + 15),
        "took {took:?}"
    );
    assert!(
        stderr(&out).contains("PVE unreachable, retrying"),
        "{}",
        stderr(&out)
    );
    // The journal (no PVE needed to read it) says paused, never rolled back.
    let j = jobs(&sim)
        .into_iter()
        .find(|j| j["hostname"] == "pk-app")
        .unwrap();
    assert_eq!(j["state"], "paused", "{j}");

    sim.revive();
    write_cfg(&sim);
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["--output", "json", "resume"])
        .env_remove("FELHOM_CRASH_AT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert_eq!(guest(&state, 1830).unwrap()["status"], "running");
    assert_clean_invariants(&state);
    assert!(
        !writes_to(&sim, 1830)
            .iter()
            .any(|w| w["method"] == "DELETE"),
        "rolled back"
    );
}

/// Repair one drift: `status` names `field` (exit 1), `apply` repairs it (exit 0,
/// `succeeded`, a repair job), `status` is clean again.
fn repaired(sim: &Sim, spec: &std::path::Path, v: u32, field: &str) {
    let (code, st) = status_of(sim, v);
    assert_eq!(code, Some(1), "{field}: {st}");
    assert!(
        drift_fields(&st).iter().any(|f| f == field),
        "{field}: {st}"
    );
    let out = sim.felhom(&["--output", "json", "plan", path(spec)]);
    assert_eq!(
        json(&out)["plans"][0]["decision"]["decision"],
        "repair",
        "{field}: {}",
        both(&out)
    );
    let out = apply(sim, &[path(spec)]);
    assert_eq!(out.status.code(), Some(0), "{field}: {}", both(&out));
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(rep["outcome"], "succeeded", "{field}: {rep}");
    assert_eq!(rep["kind"], "repair", "{field}: {rep}");
    let (code, st) = status_of(sim, v);
    assert_eq!(code, Some(0), "{field}: after repair: {st}");
    assert_clean_invariants(&sim.state());
}

#[test]
fn drift_is_named_then_repaired() {
    let sim = Sim::start();
    let p = sim.write_spec("dr.toml", &spec("dr", "1840", MOUNT));
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let adm = admin(&sim);

    admin_task(&adm, adm.lxc_stop("pve", vmid(1840)));
    repaired(&sim, &p, 1840, "running");

    admin_config(&adm, 1840, &[("hostname", "renamed")]);
    repaired(&sim, &p, 1840, "hostname");
    let state = sim.state();
    assert_eq!(guest(&state, 1840).unwrap()["config"]["hostname"], "dr-app");

    admin_config(&adm, 1840, &[("tags", "someone-else")]);
    repaired(&sim, &p, 1840, "tags");

    // The description (the marker) rewritten outside felhom: the MAC and rootfs volume still
    // bind the guest to felhom's record, so the marker is drift, and written back.
    admin_config(&adm, 1840, &[("description", "my web server")]);
    repaired(&sim, &p, 1840, "marker");
    let state = sim.state();
    let desc = guest(&state, 1840).unwrap()["config"]["description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        desc.contains("felhom: job=") && desc.contains("name=dr-app"),
        "{desc}"
    );

    // A mount detached outside felhom from the running guest (the detach waits for the next
    // start; the volume keeps the data): named by `status`, and `apply` reverts the detach:
    // the same volume stays mounted, no new one is allocated.
    admin_config(&adm, 1840, &[("delete", "mp0")]);
    let (code, st) = status_of(&sim, 1840);
    assert_eq!(code, Some(1), "{st}");
    assert!(drift_fields(&st).iter().any(|f| f == "mount"), "{st}");
    let volumes_before = sim.state()["volumes"].as_array().unwrap().len();
    repaired(&sim, &p, 1840, "mount");
    let state = sim.state();
    let g = guest(&state, 1840).unwrap();
    assert!(
        g["config"]["mp0"]
            .as_str()
            .is_some_and(|m| m.starts_with("local-lvm:vm-1840-disk-1,mp=/srv/data")),
        "{g}"
    );
    assert_eq!(
        state["volumes"].as_array().unwrap().len(),
        volumes_before,
        "a repair allocated a volume in place of the detached one"
    );
    assert_clean_invariants(&state);
    assert_eq!(guests_named(&state, "dr-app").len(), 1);
}

#[test]
fn unrepairable_drift_is_refused_without_writes() {
    let sim = Sim::start();
    let p = sim.write_spec("ur.toml", &spec("ur", "1850", MOUNT));
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // A spec asking a smaller rootfs than the guest has (the golden's is 8G).
    let small = sim.write_spec(
        "ur-small.toml",
        &spec("ur", "1850", MOUNT).replace("rootfs_size = \"12G\"", "rootfs_size = \"10G\""),
    );
    let before = writes(&sim).len();
    let out = apply(&sim, &[path(&small)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(rep["outcome"], "refused", "{rep}");
    assert!(
        rep["error"].as_str().unwrap().contains("cannot shrink"),
        "{rep}"
    );
    assert_eq!(writes(&sim).len(), before, "a refused shrink wrote");

    // A MAC changed outside felhom.
    let adm = admin(&sim);
    let net0 = guest(&sim.state(), 1850).unwrap()["config"]["net0"]
        .as_str()
        .unwrap()
        .to_string();
    let other = regex::Regex::new("hwaddr=[0-9A-Fa-f:]+")
        .unwrap()
        .replace(&net0, "hwaddr=BC:24:11:00:00:42")
        .to_string();
    admin_config(&adm, 1850, &[("net0", &other)]);
    let before_cfg = guest(&sim.state(), 1850).unwrap()["config"].clone();
    let before = writes(&sim).len();
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(rep["outcome"], "refused", "{rep}");
    assert!(rep["error"].as_str().unwrap().contains("MAC"), "{rep}");
    assert_eq!(writes(&sim).len(), before, "a refused apply wrote");
    assert_eq!(guest(&sim.state(), 1850).unwrap()["config"], before_cfg);
}

/// A mount detached outside felhom from a stopped guest: PVE keeps its volume (the data) as
/// `unusedN`. `apply` refuses, naming the path, and writes nothing: a new empty volume there
/// would hide the data.
#[test]
fn a_mount_detached_from_a_stopped_guest_is_refused_not_replaced() {
    let sim = Sim::start();
    let p = sim.write_spec("ud.toml", &spec("ud", "1855", MOUNT));
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let adm = admin(&sim);
    admin_task(&adm, adm.lxc_stop("pve", vmid(1855)));
    admin_config(&adm, 1855, &[("delete", "mp0")]);
    let cfg = guest(&sim.state(), 1855).unwrap()["config"].clone();
    assert!(cfg.get("mp0").is_none(), "{cfg}");
    let before = writes(&sim).len();
    let volumes = sim.state()["volumes"].clone();
    let out = apply(&sim, &[path(&p)]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let rep = json(&out)["jobs"][0].clone();
    assert_eq!(rep["outcome"], "refused", "{rep}");
    assert!(
        rep["error"].as_str().unwrap().contains("/srv/data"),
        "{rep}"
    );
    assert_eq!(writes(&sim).len(), before, "a refused apply wrote");
    assert_eq!(sim.state()["volumes"], volumes, "volumes changed");
}

#[test]
fn prune_only_with_the_flag_and_teardown_by_identity() {
    let sim = Sim::start();
    let keep = sim.write_spec("keep.toml", &spec("keep", "1860", ""));
    let drop = sim.write_spec("drop.toml", &spec("drop", "1861", ""));
    let out = apply(&sim, &[path(&keep), path(&drop)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // Without --prune, a guest in none of the specs is left alone.
    let out = apply(&sim, &[path(&keep)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(json(&out)["jobs"].as_array().unwrap().len(), 1);
    assert!(guest(&sim.state(), 1861).is_some());

    let before = writes(&sim).len();
    let out = sim.felhom(&["--output", "json", "plan", "--prune", path(&keep)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let plans = json(&out)["plans"].clone();
    let pruned: Vec<&Value> = plans
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["decision"]["decision"] == "prune")
        .collect();
    assert_eq!(pruned.len(), 1, "{plans}");
    assert_eq!(pruned[0]["identity"], "drop/drop-app");
    assert_eq!(pruned[0]["decision"]["vmid"], 1861);
    assert_eq!(writes(&sim).len(), before, "plan wrote");

    let out = apply(&sim, &["--prune", path(&keep)]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let state = sim.state();
    assert!(guest(&state, 1861).is_none(), "not pruned");
    assert!(guest(&state, 1860).is_some(), "the kept guest went too");

    let out = sim.felhom(&["--output", "json", "teardown", "keep/keep-app"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(json(&out)["jobs"][0]["outcome"], "succeeded");
    let state = sim.state();
    assert!(guest(&state, 1860).is_none());
    assert_eq!(state["volumes"].as_array().map(Vec::len), Some(0));

    for target in ["1861", "keep/keep-app"] {
        let out = sim.felhom(&["--output", "json", "teardown", target]);
        assert_eq!(out.status.code(), Some(0), "{target}: {}", both(&out));
        assert_eq!(json(&out)["jobs"][0]["outcome"], "absent", "{target}");
    }
}

/// A bring-up whose guest is restored, killed, and whose stored spec this felhom cannot
/// read (written as another felhom version would have): paused, never rolled back.
#[test]
fn an_undecodable_stored_spec_pauses_and_never_destroys() {
    let sim = Sim::start();
    let cases = [
        ("old", 1870u32, "rootfs_size missing"),
        ("new", 1871u32, "unknown shape"),
    ];
    for (name, v, what) in cases {
        let p = sim.write_spec(&format!("{name}.toml"), &spec(name, &v.to_string(), MOUNT));
        let out = sim.felhom_env(&["apply", path(&p)], &[("FELHOM_CRASH_AT", "start:before")]);
        assert_eq!(out.status.signal(), Some(9), "{}", both(&out));
        let job = jobs(&sim)
            .into_iter()
            .find(|j| j["hostname"] == format!("{name}-app").as_str())
            .unwrap();
        let id = job["job"].as_str().unwrap().to_string();
        let db = rusqlite::Connection::open(sim.journal()).unwrap();
        let stored: String = db
            .query_row("SELECT spec FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
            .unwrap();
        let mut spec: Value = serde_json::from_str(&stored).unwrap();
        let rewritten = if what == "rootfs_size missing" {
            spec.as_object_mut().unwrap().remove("rootfs_size");
            spec
        } else {
            json!({ "version": 9, "guest": spec })
        };
        db.execute(
            "UPDATE jobs SET spec = ?1 WHERE id = ?2",
            [rewritten.to_string(), id.clone()],
        )
        .unwrap();
        drop(db);
        let before = writes_to(&sim, v).len();

        for args in [vec!["--output", "json", "resume"], {
            let mut a = vec!["--output", "json", "apply"];
            a.push(path(&p));
            a
        }] {
            let out = sim.felhom(&args);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{what} {args:?}: {}",
                both(&out)
            );
            assert!(
                both(&out).contains("cannot be read"),
                "{what} {args:?}: {}",
                both(&out)
            );
            assert!(
                guest(&sim.state(), v as u64).is_some(),
                "{what}: guest destroyed"
            );
        }
        assert_eq!(
            writes_to(&sim, v).len(),
            before,
            "{what}: felhom wrote to the guest"
        );
        let j = jobs(&sim)
            .into_iter()
            .find(|j| j["job"] == id.as_str())
            .unwrap();
        assert_eq!(j["state"], "paused", "{what}: {j}");
        assert!(
            j["error"].as_str().unwrap().contains("cannot be read"),
            "{what}: {j}"
        );
    }
}

#[test]
fn one_identity_in_two_files_is_refused_before_any_write() {
    let sim = Sim::start();
    let a = sim.write_spec("one.toml", &spec("twin", "1880", ""));
    let b = sim.write_spec("two.toml", &spec("twin", "1881", ""));
    let before = writes(&sim).len();
    let out = apply(&sim, &[path(&a), path(&b)]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let text = both(&out);
    assert!(
        text.contains("one.toml") && text.contains("two.toml"),
        "{text}"
    );
    assert_eq!(writes(&sim).len(), before);
    assert!(sim.state()["guests"].as_array().unwrap().is_empty());
}
