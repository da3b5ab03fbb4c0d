//! `felhom bench reliability` end to end at a small N: every crash point ends correct, the
//! soak survives its faults and the simulator restart, and no bad input writes anything.

use serde_json::Value;

#[test]
fn reliability_bench_reports_every_part_and_all_good() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_felhom"))
        .args(["--output", "json", "bench", "reliability", "--guests", "4"])
        .output()
        .expect("run felhom bench reliability");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).expect("JSON report");
    let r = &v["reliability"];
    assert_eq!(v["all_good"], true, "{v}");
    // A crash before and after every bring-up step.
    let points = 2 * felhom_core::bringup::STEPS.len() as u64;
    assert_eq!(r["crash_points"]["tried"], points, "{r}");
    assert_eq!(r["crash_points"]["correct"], points, "{r}");
    assert_eq!(r["soak"]["guests"], 4);
    assert_eq!(r["soak"]["simulator_restarts"], 1, "{r}");
    assert_eq!(
        r["soak"]["succeeded"].as_u64().unwrap() + r["soak"]["rolled_back"].as_u64().unwrap(),
        4,
        "{r}"
    );
    let hostile = felhom_core::adversarial::hostile_specs("x").len() as u64;
    assert_eq!(r["bad_inputs"]["tried"].as_u64(), Some(2 * hostile + 6));
    assert_eq!(r["bad_inputs"]["refused_exit_2"], r["bad_inputs"]["tried"]);
    assert_eq!(r["bad_inputs"]["writes_caused"], 0);
    for k in [
        "leaked_volumes",
        "detached_volumes",
        "duplicate_macs",
        "duplicate_ips",
        "duplicate_ssh_keys",
        "double_grows",
    ] {
        assert_eq!(r["leaks"][k], 0, "{k}: {r}");
    }
}
