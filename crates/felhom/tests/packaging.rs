//! What the .deb ships besides the binary: `packaging/felhom-agent.service` passes
//! `systemd-analyze verify` (systemd, which `scripts/test` installs) and its offline
//! security review at exposure ≤ 2.0, with the settings issue 18 asks for; and the default
//! `packaging/felhom.toml` is a config felhom accepts. (The .deb itself is built and checked
//! with lintian in `.ci/run`.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("packaging/felhom-agent.service")).unwrap()
}

fn systemd_analyze(args: &[&str], unit: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze is needed to check the unit file and could not be run ({e}): \
                 install Debian's `systemd` package (scripts/test does, as root)"
            )
        })
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_security() {
    let text = unit_text();
    // verify checks that ExecStart's program exists: point it at the binary just built
    // (on a host it is the package's /usr/bin/felhom); every other line is the shipped one.
    let exec = "ExecStart=/usr/bin/felhom ";
    assert_eq!(text.matches(exec).count(), 1, "{text}");
    let here = text.replace(
        exec,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_felhom")),
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("felhom-agent.service");
    std::fs::write(&unit, here).unwrap();

    let out = systemd_analyze(&["verify", "--man=no"], &unit);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // The offline review scores 0 (locked down) to 10; 2.0 and below is "OK".
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=felhom",
        // The names felhom reads from $CREDENTIALS_DIRECTORY: the PVE token secret and the
        // agent's API token.
        &format!(
            "LoadCredential={}:/etc/felhom/credentials/{}",
            felhom_core::config::CREDENTIAL_NAME,
            felhom_core::config::CREDENTIAL_NAME
        ),
        "LoadCredential=felhom-api-token:/etc/felhom/credentials/felhom-api-token",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "Restart=on-failure",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want:?}");
    }
    assert!(
        !text.contains("Environment=") && !text.contains("EnvironmentFile="),
        "secrets travel as credentials, never in the environment"
    );
}

#[test]
fn the_default_config_is_accepted_and_journals_in_the_state_directory() {
    let path = repo().join("packaging/felhom.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The token secret comes from the unit's credential on a host; here from the
    // environment (this test runs in a process of its own).
    std::env::remove_var("CREDENTIALS_DIRECTORY");
    std::env::set_var(felhom_core::config::SECRET_ENV, "packaging-test-secret");
    let cfg = felhom_core::config::Config::parse(&path, &text)
        .unwrap_or_else(|e| panic!("packaging/felhom.toml is refused: {e}"));
    assert_eq!(cfg.journal, Path::new("/var/lib/felhom/journal.db"));
    assert!(
        !text.contains("token_secret ="),
        "no secret in the shipped config"
    );
}
