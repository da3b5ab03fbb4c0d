//! `felhom golden inspect` on hostile archives, through the real binary: exit 2, the
//! message names the member and the cap, and the child's peak RSS (from `wait4`) stays
//! within 64 MB. The archives are generated here by streaming (vzdump::hostile).

mod common;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use vzdump::hostile::{Hostile, BOMB_SIZE};

const RSS_BOUND_KB: u64 = 64 * 1024;

/// Run `felhom --output json golden inspect <archive>`: exit code, stdout, stderr and the
/// child's peak RSS in KiB. `ru_maxrss` also carries the pre-exec high-water mark (this
/// test process's), so it can only overstate the child's: an upper bound.
fn inspect_measured(dir: &Path, archive: &Path) -> (i32, serde_json::Value, String, u64) {
    let out = dir.join("out");
    let err = dir.join("err");
    // Reaped by wait4 below, which also returns its rusage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(BIN)
        .args(["--output", "json", "golden", "inspect"])
        .arg(archive)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 reaps exactly this child and fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status), "felhom died: status {status}");
    let stdout = std::fs::read(&out).unwrap();
    let v = serde_json::from_slice(&stdout).unwrap_or(serde_json::Value::Null);
    (
        libc::WEXITSTATUS(status),
        v,
        std::fs::read_to_string(&err).unwrap(),
        ru.ru_maxrss as u64,
    )
}

fn conf() -> String {
    "arch: amd64\nhostname: golden\nnet0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:63:43:F4,ip=dhcp,type=veth\nostype: debian\nrootfs: local-lvm:vm-9100-disk-0,size=8G\nunprivileged: 1\n".into()
}

#[test]
fn hostile_archives_exit_2_naming_member_and_cap_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    for kind in Hostile::ALL {
        let p = dir.path().join(format!(
            "vzdump-lxc-9100-2026_06_09-20_41_1{}.tar.zst",
            kind as u8
        ));
        kind.write(&p, &conf()).unwrap();
        let (code, v, stderr, rss_kb) = inspect_measured(dir.path(), &p);
        assert_eq!(code, 2, "{kind:?}: {v} {stderr}");
        let e = v["error"].as_str().unwrap_or_default().to_string();
        let expected = match kind {
            Hostile::LongNameBomb => format!("archive member #0 \"././@LongLink\": GNU long name (typeflag L) of {BOMB_SIZE} bytes is over the cap of 65536 bytes"),
            Hostile::PaxBomb => format!("archive member #0 \"./PaxHeaders/etc/vzdump/pct.conf\": pax extended header (typeflag x) of {BOMB_SIZE} bytes is over the cap of 65536 bytes"),
            Hostile::TruncatedZstd => "\"./usr/lib/filler.bin\": the archive is truncated".into(),
            Hostile::Traversal => "archive member #5 \"./../../../tmp/felhom-escape\": unsafe member name: a '..' component leaves the root".into(),
        };
        assert!(e.contains(&expected), "{kind:?}: {e:?}");
        assert!(
            rss_kb <= RSS_BOUND_KB,
            "{kind:?}: felhom golden inspect peaked at {} MB",
            rss_kb / 1024
        );
    }
    assert!(!Path::new("/tmp/felhom-escape").exists());
}

#[test]
fn human_output_names_member_and_cap_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.tar.zst");
    Hostile::LongNameBomb.write(&p, &conf()).unwrap();
    let out = Command::new(BIN)
        .args(["golden", "inspect"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("member #0 \"././@LongLink\"")
            && stderr.contains("over the cap of 65536 bytes"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
