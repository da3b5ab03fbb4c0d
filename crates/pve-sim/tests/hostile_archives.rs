//! Hostile archives in the simulator's backup storage, through the real HTTPS API: the
//! restore task fails with the bounded reader's error in its log, leaving no guest and no
//! volume; `extractconfig` answers the error when the config cannot be reached.

mod common;
use common::*;
use pve_api::{ApiError, WaitOptions};
use vzdump::hostile::{Hostile, BOMB_SIZE};

#[tokio::test]
async fn hostile_archives_fail_the_restore_task_and_leave_nothing() {
    let env = Env::start(0.02, "").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    for (i, kind) in Hostile::ALL.into_iter().enumerate() {
        let name = format!("vzdump-lxc-9100-2026_06_09-20_42_1{i}.tar.zst");
        kind.write(&dump.join(&name), &pct_conf("")).unwrap();
        let volid = format!("local:backup/{name}");
        let vmid = (1300 + i).to_string();
        let why = match kind {
            Hostile::LongNameBomb => format!("archive member #0 \"././@LongLink\": GNU long name (typeflag L) of {BOMB_SIZE} bytes is over the cap of 65536 bytes"),
            Hostile::PaxBomb => format!("archive member #0 \"./PaxHeaders/etc/vzdump/pct.conf\": pax extended header (typeflag x) of {BOMB_SIZE} bytes is over the cap of 65536 bytes"),
            Hostile::TruncatedZstd => "\"./usr/lib/filler.bin\": the archive is truncated".into(),
            Hostile::Traversal => "\"./../../../tmp/felhom-escape\": unsafe member name: a '..' component leaves the root".into(),
        };

        let params: Vec<(String, String)> = [
            ("vmid", vmid.as_str()),
            ("ostemplate", volid.as_str()),
            ("restore", "1"),
            ("storage", "local-lvm"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let upid = env.client.lxc_create("pve", &params).await.unwrap();
        match env.client.wait_task(&upid, &WaitOptions::default()).await {
            Err(ApiError::TaskFailed {
                exitstatus,
                log_tail,
                ..
            }) => {
                assert!(
                    exitstatus.starts_with(&format!("unable to restore CT {vmid} - "))
                        && exitstatus.contains(&why),
                    "{kind:?}: {exitstatus}"
                );
                let last = log_tail.last().cloned().unwrap_or_default();
                assert!(
                    last.starts_with("TASK ERROR") && last.contains(&why),
                    "{kind:?}: {log_tail:?}"
                );
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        let st = env.state().await;
        assert_eq!(st["guests"].as_array().unwrap().len(), 0, "{kind:?}: {st}");
        assert_eq!(st["volumes"].as_array().unwrap().len(), 0, "{kind:?}: {st}");
        assert!(pve_sim::invariants::check(&st).is_clean());

        // extractconfig reads up to pct.conf, as PVE's does: the bombs come before it.
        let conf = env.client.vzdump_extractconfig("pve", &volid).await;
        match kind {
            Hostile::LongNameBomb | Hostile::PaxBomb => {
                let e = conf.unwrap_err().to_string();
                assert!(
                    e.contains(&format!(
                        "unable to extract configuration from '{volid}' - {why}"
                    )),
                    "{kind:?}: {e}"
                );
            }
            Hostile::TruncatedZstd | Hostile::Traversal => {
                assert_eq!(conf.unwrap(), pct_conf(""))
            }
        }
    }
    assert!(!std::path::Path::new("/tmp/felhom-escape").exists());
    // The simulator still restores a good golden afterwards.
    env.restore(1310, &[]).await.unwrap();
}

#[tokio::test]
async fn a_fifo_at_machine_id_fails_the_restore() {
    let env = Env::start(0.02, "").await;
    let dump = pve_sim::dump_dir(env.dir.path(), "local");
    let name = "vzdump-lxc-9100-2026_06_09-20_43_00.tar";
    // The writer makes no FIFOs: raw tar blocks, pct.conf first.
    let mut b = tar::Builder::new(std::fs::File::create(dump.join(name)).unwrap());
    let conf = pct_conf("");
    let mut h = tar::Header::new_gnu();
    h.set_size(conf.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "etc/vzdump/pct.conf", conf.as_bytes())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_data(&mut h, "etc/machine-id", std::io::empty())
        .unwrap();
    b.finish().unwrap();
    let params: Vec<(String, String)> = [
        ("vmid", "1320"),
        ("ostemplate", &format!("local:backup/{name}")),
        ("restore", "1"),
        ("storage", "local-lvm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let upid = env.client.lxc_create("pve", &params).await.unwrap();
    match env.client.wait_task(&upid, &WaitOptions::default()).await {
        Err(ApiError::TaskFailed { exitstatus, .. }) => assert!(
            exitstatus.ends_with(
                "archive member #1 \"etc/machine-id\": expected a regular file, found a special file"
            ),
            "{exitstatus}"
        ),
        other => panic!("{other:?}"),
    }
    let st = env.state().await;
    assert_eq!(st["volumes"].as_array().unwrap().len(), 0, "{st}");
}
