//! Tasks: real UPIDs, workers that hold the guest's config flock for their whole run, a
//! modelled duration (scaled), logs ending in `TASK OK` / `TASK WARNINGS: n` /
//! `TASK ERROR: msg`. A worker has three phases: `begin` (checks PVE does after taking the
//! lock; a restore reads the archive and allocates its volumes here), the modelled wait
//! (interruptible by `DELETE /nodes/{node}/tasks/{upid}`), and `apply` (the durable effect).
//! Each task's plan is kept in the state, so a restarted simulator reschedules a running task
//! to finish at its original end time.

use pve_api::texts;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::api::params::{fresh_mac, new_volume_bytes, new_volume_spec};
use crate::auth::{self, Subject};
use crate::locks::check_lock;
use crate::runtime::{GuestRuntime, Job};
use crate::sim::{model, now_ms, Sim};
use crate::state::{State, Task, TaskPlan, Volume};

/// The blocking part of a task a runtime does itself: its task-log lines, or its error.
type RuntimeJob = tokio::task::JoinHandle<Result<Vec<String>, String>>;

/// Why a worker stopped waiting.
enum Interrupt {
    /// `DELETE .../tasks/{upid}`: the task ends with an error.
    Killed,
    /// The simulator stops: the task stays `running` for the next start to finish.
    Shutdown,
}

impl Sim {
    /// Register a task (status running) and return its UPID.
    pub fn new_task(
        &self,
        st: &mut State,
        task_type: &str,
        id: &str,
        who: &Subject,
        modelled_ms: u64,
        plan: TaskPlan,
    ) -> String {
        // The task runs on the node of the guest it is about (its UPID names that node).
        let node = id
            .parse::<u32>()
            .ok()
            .and_then(|v| st.guests.get(&v))
            .map(|g| g.node.clone())
            .unwrap_or_else(|| st.node.clone());
        self.new_task_on(st, &node, task_type, id, who, modelled_ms, plan)
    }

    /// [`Sim::new_task`] on a given node.
    #[allow(clippy::too_many_arguments)]
    pub fn new_task_on(
        &self,
        st: &mut State,
        node: &str,
        task_type: &str,
        id: &str,
        who: &Subject,
        modelled_ms: u64,
        plan: TaskPlan,
    ) -> String {
        let node = node.to_string();
        st.next_pid += 1;
        let start = now_ms();
        let upid = pve_api::Upid {
            node: node.clone(),
            pid: st.next_pid,
            pstart: 0x0100_0000 + st.next_pid as u64,
            starttime: start / 1000,
            task_type: task_type.into(),
            id: id.into(),
            user: who.upid_user(),
        }
        .to_string();
        let scaled = self.scaled_ms(self.jittered_ms(modelled_ms));
        let inject_fail = self.chance(self.cfg.faults.task_fail_probability(task_type));
        if inject_fail {
            st.counters.faults_injected += 1;
        }
        st.tasks.push(Task {
            upid: upid.clone(),
            node,
            task_type: task_type.into(),
            id: id.into(),
            user: who.userid.clone(),
            tokenid: who.token_name(),
            status: "running".into(),
            exitstatus: None,
            log: vec![],
            start_ms: start,
            end_ms: start + scaled,
            modelled_ms: scaled,
            plan: Some(plan),
            who: Some(who.clone()),
            inject_fail,
        });
        // Keep the task list bounded like PVE's index (oldest finished tasks drop out).
        if st.tasks.len() > 5000 {
            if let Some(drop) = st.tasks.iter().position(|t| t.status == "stopped") {
                st.tasks.remove(drop);
            }
        }
        upid
    }

    /// Run a task's worker: take the guest's flock (unless `guard` already holds it), begin,
    /// wait out the modelled duration, apply the plan, record the exit status.
    pub fn spawn_task(
        self: &Arc<Self>,
        upid: String,
        vmid: Option<u32>,
        guard: Option<OwnedMutexGuard<()>>,
    ) {
        let sim = self.clone();
        let kill = Arc::new(tokio::sync::Notify::new());
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(upid.clone(), kill.clone());
        tokio::spawn(async move {
            sim.run_task(&upid, vmid, guard, &kill).await;
            sim.cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&upid);
            if !sim.stopping.load(Ordering::SeqCst) {
                sim.sync_ssh().await;
            }
        });
    }

    async fn interruptible<F: std::future::Future>(
        &self,
        kill: &tokio::sync::Notify,
        fut: F,
    ) -> Result<F::Output, Interrupt> {
        let mut stop = self.stop_rx.clone();
        if *stop.borrow() {
            return Err(Interrupt::Shutdown);
        }
        tokio::select! {
            out = fut => Ok(out),
            _ = kill.notified() => Err(Interrupt::Killed),
            _ = stop.changed() => Err(Interrupt::Shutdown),
        }
    }

    async fn run_task(
        self: &Arc<Self>,
        upid: &str,
        vmid: Option<u32>,
        guard: Option<OwnedMutexGuard<()>>,
        kill: &tokio::sync::Notify,
    ) {
        let guard = match (guard, vmid) {
            (Some(g), _) => Some(g),
            (None, Some(v)) => {
                match self
                    .interruptible(kill, self.flock(v, model::LOCK_TIMEOUT))
                    .await
                {
                    Ok(Ok(g)) => Some(g),
                    Ok(Err(msg)) => return self.fail(upid, msg),
                    Err(Interrupt::Killed) => {
                        return self.fail(upid, "interrupted by signal".into())
                    }
                    Err(Interrupt::Shutdown) => return,
                }
            }
            (None, None) => None,
        };
        if let Err(msg) = self.begin(upid).await {
            return self.fail(upid, msg);
        }
        // A runtime that does the task's work does it here; otherwise the worker waits out the
        // task's modelled duration.
        match self.runtime_work(upid) {
            Some((job, cancel)) => {
                let mut stop = self.stop_rx.clone();
                let mut job = job;
                let outcome = tokio::select! {
                    r = &mut job => Some(r),
                    _ = kill.notified() => None,
                    _ = stop.changed() => None,
                };
                let outcome = match outcome {
                    Some(r) => r,
                    None => {
                        // Stop the work (a restore's tar is killed) and wait for it to end
                        // before anything is cleaned up.
                        cancel.store(true, Ordering::SeqCst);
                        let _ = job.await;
                        if self.stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        Ok(Err("interrupted by signal".into()))
                    }
                };
                let logged = match outcome {
                    Ok(Ok(lines)) => Ok(lines),
                    Ok(Err(msg)) => Err(msg),
                    Err(e) => Err(format!("worker failed: {e}")),
                };
                match logged {
                    Ok(lines) => self.mutate(|st| {
                        for l in lines {
                            self.log(st, upid, l);
                        }
                    }),
                    Err(msg) => {
                        let msg = self.runtime_error(upid, msg);
                        self.fail(upid, msg);
                        self.collect_volumes().await;
                        return;
                    }
                }
            }
            None => {
                let end = self
                    .read(|st| st.tasks.iter().find(|t| t.upid == upid).map(|t| t.end_ms))
                    .unwrap_or(0);
                let wait = Duration::from_millis(end.saturating_sub(now_ms()));
                // A down node's clock stops: its task goes on when the node returns.
                let node = self.task_node(upid);
                match self
                    .interruptible(kill, self.sleep_while_up(&node, wait))
                    .await
                {
                    Ok(()) => {}
                    Err(Interrupt::Killed) => {
                        return self.fail(upid, "interrupted by signal".into())
                    }
                    Err(Interrupt::Shutdown) => return,
                }
            }
        }
        if self.destroy_freed(upid) {
            let last = tokio::time::sleep(self.scaled(model::DESTROY_LAST));
            if let Err(Interrupt::Shutdown) = self.interruptible(kill, last).await {
                return;
            }
        }
        // Nothing is applied on a node that is down (a runtime's own work may end meanwhile).
        let node = self.task_node(upid);
        if let Err(Interrupt::Shutdown) = self.interruptible(kill, self.wait_node_up(&node)).await {
            return;
        }
        let follow_up = self.apply(upid);
        self.collect_volumes().await;
        drop(guard);
        if let Some((vmid, who)) = follow_up {
            // `start=1` on restore: a separate vzstart task after the lock is released.
            let upid = self.mutate(|st| {
                self.new_task(
                    st,
                    "vzstart",
                    &vmid.to_string(),
                    &who,
                    model::START,
                    TaskPlan::Start { vmid },
                )
            });
            self.spawn_task(upid, Some(vmid), None);
        }
    }

    /// The node a task runs on (its UPID's).
    fn task_node(&self, upid: &str) -> String {
        self.read(|st| {
            st.tasks
                .iter()
                .find(|t| t.upid == upid)
                .map(|t| t.node.clone())
                .unwrap_or_else(|| st.node.clone())
        })
    }

    /// A failure of a runtime's own work as PVE words it for the task type.
    fn runtime_error(&self, upid: &str, msg: String) -> String {
        let (ty, id) = self
            .read(|st| {
                st.tasks
                    .iter()
                    .find(|t| t.upid == upid)
                    .map(|t| (t.task_type.clone(), t.id.clone()))
            })
            .unwrap_or_default();
        match ty.as_str() {
            "vzrestore" => texts::unable_to_restore(&id, &msg),
            "vzclone" => texts::clone_failed(&msg),
            _ => msg,
        }
    }

    /// The runtime's own work for a task, started on a blocking thread, and its cancel flag;
    /// `None` when the runtime models the task (and for what no runtime does for real:
    /// resize, injected failures).
    fn runtime_work(&self, upid: &str) -> Option<(RuntimeJob, Arc<AtomicBool>)> {
        let (plan, ty) = self.read(|st| {
            st.tasks
                .iter()
                .find(|t| t.upid == upid)
                .map(|t| (t.plan.clone(), t.task_type.clone()))
        })?;
        let bridges = self.read(|st| st.bridges.clone());
        let rt = self.runtime.clone();
        // The config a start boots with: pending changes applied, as PVE applies them first.
        let effective = |vmid: u32, want_running: Option<bool>| {
            self.read(|st| -> Result<BTreeMap<String, String>, String> {
                let g = st
                    .guests
                    .get(&vmid)
                    .ok_or_else(|| format!("CT {vmid} does not exist"))?;
                if want_running == Some(false) && g.running {
                    return Err(texts::already_running(vmid));
                }
                let mut g = g.clone();
                apply_pending(&mut g);
                Ok(g.config)
            })
        };
        let job: Result<Job, String> = match plan? {
            // A restored template's volumes are renamed after the extraction (R16).
            TaskPlan::Restore {
                config,
                archive: Some(archive),
                ..
            } => {
                let renames = restored_template_renames(self, &config);
                let restore = rt.clone().restore(archive, config)?;
                let rename = renames.and_then(|r| rt.template(r));
                Ok(match rename {
                    None => restore,
                    Some(rename) => Box::new(move |cancel: &AtomicBool| {
                        let mut lines = restore(cancel)?;
                        lines.extend(rename(cancel)?);
                        Ok(lines)
                    }),
                })
            }
            // The runtime says whether the task is its work; if it is, a config that cannot
            // be had fails the task (the unrun job is dropped).
            TaskPlan::Start { vmid } => {
                let conf = effective(vmid, Some(false));
                let job = rt.start(vmid, conf.clone().unwrap_or_default(), bridges)?;
                conf.map(|_| job)
            }
            TaskPlan::Reboot { vmid } => {
                let conf = effective(vmid, None);
                let job = rt.reboot(vmid, conf.clone().unwrap_or_default(), bridges)?;
                conf.map(|_| job)
            }
            TaskPlan::Stop { vmid } => {
                let conf = self.read(|st| st.guests.get(&vmid).map(|g| g.config.clone()))?;
                // vzshutdown is the clean one (PVE's default timeout 60 s); vzstop gets a
                // short grace before the kill.
                let grace = Duration::from_secs(if ty == "vzshutdown" { 60 } else { 10 });
                Ok(rt.stop(vmid, conf, grace)?)
            }
            TaskPlan::Destroy {
                vmid,
                destroy_unreferenced,
            } => {
                let (conf, volumes) = self.read(|st| {
                    let conf = st.guests.get(&vmid).map(|g| g.config.clone());
                    (conf, destroyed_volumes(st, vmid, destroy_unreferenced))
                });
                Ok(rt.destroy(vmid, conf?, volumes)?)
            }
            TaskPlan::Clone {
                newid,
                disks,
                volumes,
                begun: true,
                ..
            } => {
                let conf = self.read(|st| st.guests.get(&newid).map(|g| g.config.clone()))?;
                let copies = crate::clone::copies(&disks, &volumes);
                Ok(rt.clone_volumes(newid, copies, conf)?)
            }
            TaskPlan::Template { renames, .. } => Ok(rt.template(renames)?),
            _ => return None,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let c2 = cancel.clone();
        let handle = match job {
            Ok(job) => tokio::task::spawn_blocking(move || job(&c2).map_err(|e| e.to_string())),
            Err(msg) => tokio::spawn(async move { Err(msg) }),
        };
        Some((handle, cancel))
    }

    /// Let the runtime remove storage of volumes the state no longer has.
    async fn collect_volumes(&self) {
        let rt = self.runtime.clone();
        let keep: Vec<String> =
            self.read(|st| st.volumes.iter().map(|v| v.volid.clone()).collect());
        let r = tokio::task::spawn_blocking(move || rt.collect_volumes(&keep)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "cannot remove a volume directory");
        }
    }

    /// After a restart: finish the tasks a previous run left running, at their original end.
    pub fn resume_tasks(self: &Arc<Self>) {
        let running: Vec<(String, Option<u32>)> = self.read(|st| {
            st.tasks
                .iter()
                .filter(|t| t.status == "running")
                // A clone's worker holds no flock for its run (the source has `lock: disk`).
                .map(|t| {
                    (
                        t.upid.clone(),
                        t.id.parse().ok().filter(|_| t.task_type != "vzclone"),
                    )
                })
                .collect()
        });
        for (upid, vmid) in running {
            self.spawn_task(upid, vmid, None);
        }
        let sim = self.clone();
        tokio::spawn(async move { sim.sync_ssh().await });
    }

    /// Kill a running task (`DELETE /nodes/{node}/tasks/{upid}`).
    pub fn kill_task(&self, upid: &str) {
        if let Some(n) = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(upid)
        {
            n.notify_one();
        }
    }

    fn log(&self, st: &mut State, upid: &str, line: String) {
        if let Some(t) = st.tasks.iter_mut().find(|t| t.upid == upid) {
            t.log.push(line);
        }
    }

    /// End a task with an error, undoing what a restore created.
    fn fail(&self, upid: &str, msg: String) {
        self.mutate(|st| {
            cleanup_restore(st, upid);
            finish(st, upid, Err(msg));
        });
    }

    /// `create_vm`'s worker made the new disks (`create_disks`): logged, owned, and over an
    /// existing CT (a forced restore) the old volumes go and its config becomes `lock:
    /// create` alone (`destroy_lxc_container` with `{ lock => 'create' }`; R15).
    fn take_new_volumes(&self, st: &mut State, upid: &str, vmid: u32, volumes: &[Volume]) {
        for v in volumes {
            self.log(
                st,
                upid,
                format!(
                    "  Logical volume \"{}\" created.",
                    v.volid.split(':').nth(1).unwrap_or("")
                ),
            );
        }
        st.volumes.extend(volumes.iter().cloned());
        overwrite_old(st, vmid);
    }

    /// `create_vm`'s worker without `restore` (pve-container `src/PVE/API2/LXC.pm`, R15):
    /// the request's disks (rootfs `<storage>:4` unless given), the template unpacked into
    /// them, the OS detected, defaults for hostname (`CT<vmid>`), memory and swap (512), then
    /// `post_create_hook` (`src/PVE/LXC/Setup.pm`): machine-id emptied, fresh SSH host keys
    /// (`rewrite_ssh_host_keys`). A missing template fails the task and leaves nothing.
    /// Modelled: the OS is read from the template's name (`debian-12-standard_…` → `debian`),
    /// not from its `/etc/os-release`, and the template's content is not sized against the
    /// rootfs.
    fn begin_create(&self, upid: &str, c: CreateInput, who: &Subject) -> Result<(), String> {
        let CreateInput {
            vmid,
            template,
            storage,
            request,
            pool,
            start,
            unprivileged,
        } = c;
        let name = template
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sid = template
            .ancestors()
            .nth(3)
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let volid = format!("{sid}:vztmpl/{name}");
        if !template.is_file() {
            return Err(texts::unable_to_create(
                vmid,
                &texts::cant_find_file(&volid),
            ));
        }
        let traits = crate::state::ArchiveTraits {
            machine_id: Some(String::new()),
            ssh_host_key: Some(crate::guest::new_host_key()),
            keygen_unit: false,
            raw_lxc: Vec::new(),
        };
        self.mutate(|st| {
            let r = RestoreInput {
                vmid,
                storage: &storage,
                request,
                unique: false,
                unprivileged,
                who,
            };
            let (mut config, volumes, warnings) = plan_restore(st, r, &vzdump::PctConf::default())
                .map_err(|e| texts::unable_to_create(vmid, &e))?;
            let defaults = [
                ("hostname", format!("CT{vmid}")),
                ("memory", "512".to_string()),
                ("swap", "512".to_string()),
                ("arch", "amd64".to_string()),
                ("ostype", ostype_of_template(&name).to_string()),
            ];
            for (k, v) in defaults {
                config.entry(k.to_string()).or_insert(v);
            }
            self.take_new_volumes(st, upid, vmid, &volumes);
            self.log(
                st,
                upid,
                format!("extracting archive '{}'", template.display()),
            );
            self.log(
                st,
                upid,
                "Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...".into(),
            );
            set_plan(
                st,
                upid,
                TaskPlan::Restore {
                    vmid,
                    archive: Some(template.clone()),
                    config,
                    volumes,
                    traits,
                    pool,
                    start,
                    warnings,
                },
            );
            Ok(())
        })
    }

    /// The worker's first phase, under the flock.
    async fn begin(self: &Arc<Self>, upid: &str) -> Result<(), String> {
        let Some((plan, who)) = self.read(|st| {
            st.tasks
                .iter()
                .find(|t| t.upid == upid)
                .and_then(|t| Some((t.plan.clone()?, t.who.clone()?)))
        }) else {
            return Ok(());
        };
        let node = self.task_node(upid);
        let no_conf = |vmid: u32| texts::no_config(&node, vmid);
        match plan {
            TaskPlan::RestoreRequest {
                vmid,
                archive,
                storage,
                request,
                pool,
                start,
                unprivileged,
                create: true,
                ..
            } => self.begin_create(
                upid,
                CreateInput {
                    vmid,
                    template: archive,
                    storage,
                    request,
                    pool,
                    start,
                    unprivileged,
                },
                &who,
            ),
            TaskPlan::RestoreRequest {
                vmid,
                archive,
                storage,
                request,
                pool,
                start,
                unique,
                unprivileged,
                create: false,
            } => {
                let volid = format!(
                    "{}:backup/{}",
                    archive
                        .parent()
                        .and_then(|p| p.parent())
                        .and_then(|p| p.file_name())
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    archive
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
                // `recover_config` → `abs_filesystem_path`: the archive is looked for only
                // now, after the placeholder (audit top #7).
                if !archive.is_file() {
                    return Err(texts::unable_to_restore(
                        vmid,
                        &texts::cant_find_file(&volid),
                    ));
                }
                // Explicit mode: what the requested volumes can hold (audit R13).
                let limits: Vec<(String, u64)> = request
                    .iter()
                    .filter(|(k, _)| *k == "rootfs" || k.starts_with("mp"))
                    .filter_map(|(k, v)| {
                        let (_, gib) = new_volume_spec(v)?;
                        let path = if k == "rootfs" {
                            "/".to_string()
                        } else {
                            pve_api::MountConfig::parse_mp(v).ok()?.mp?
                        };
                        Some((path, new_volume_bytes(gib)))
                    })
                    .collect();
                let sim = self.clone();
                let archive2 = archive.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let conf = crate::archive::pct_conf(&archive2).map_err(|e| e.to_string())?;
                    let traits = sim.archive_traits(&archive2)?;
                    let over = if limits.is_empty() {
                        None
                    } else {
                        crate::archive::first_member_over(&archive2, &limits)
                            .map_err(|e| e.to_string())?
                    };
                    Ok::<_, String>((conf, traits, over))
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                let (archived, traits, over) =
                    read.map_err(|e| texts::unable_to_restore(vmid, &e))?;
                self.mutate(|st| {
                    let r = RestoreInput {
                        vmid,
                        storage: &storage,
                        request,
                        unique,
                        unprivileged,
                        who: &who,
                    };
                    let planned = plan_restore(st, r, &archived);
                    match planned {
                        Ok((config, volumes, warnings)) => {
                            self.log(
                                st,
                                upid,
                                format!("recovering backed-up configuration from '{volid}'"),
                            );
                            self.take_new_volumes(st, upid, vmid, &volumes);
                            self.log(st, upid, format!("restoring '{volid}' now.."));
                            set_plan(
                                st,
                                upid,
                                TaskPlan::Restore {
                                    vmid,
                                    archive: Some(archive.clone()),
                                    config,
                                    volumes,
                                    traits,
                                    pool,
                                    start,
                                    warnings,
                                },
                            );
                            // tar stops at the first member that does not fit; the worker
                            // removes the volumes and the placeholder (`fail`).
                            if let Some(member) = &over {
                                self.log(st, upid, texts::tar_no_space(member));
                                return Err(texts::unable_to_restore(
                                    vmid,
                                    &texts::restore_tar_failed(),
                                ));
                            }
                            Ok(())
                        }
                        Err(e) => Err(texts::unable_to_restore(vmid, &e)),
                    }
                })
            }
            TaskPlan::Start { vmid } | TaskPlan::Reboot { vmid } => {
                self.read(|st| -> Result<(), String> {
                    let g = st.guests.get(&vmid).ok_or_else(|| no_conf(vmid))?;
                    // `vm_start` asks about the template before the lock property.
                    let template = g.config.get("template").is_some_and(|t| t == "1");
                    if template && matches!(plan, TaskPlan::Start { .. }) {
                        return Err(texts::TEMPLATE_START.into());
                    }
                    check_lock(g, true)
                })?;
                if matches!(plan, TaskPlan::Start { .. }) {
                    self.mutate(|st| missing_bridge(st, vmid))?;
                }
                Ok(())
            }
            TaskPlan::Stop { vmid } => self.read(|st| {
                let g = st.guests.get(&vmid).ok_or_else(|| no_conf(vmid))?;
                check_lock(g, true)
            }),
            // `destroy_vm`'s worker: the config is loaded (and checked again) under the flock;
            // it stays as it is, marker and all, while the volumes are freed. `lock:
            // destroyed` comes only at the end ([`Sim::destroy_freed`]; audit top #3, X3).
            TaskPlan::Destroy { vmid, .. } => self.mutate(|st| {
                let g = st.guests.get_mut(&vmid).ok_or_else(|| no_conf(vmid))?;
                // A destroy resumed after a restart may have got that far already.
                let resumed = g.config.get("lock").is_some_and(|l| l == "destroyed");
                if resumed {
                    return Ok(());
                }
                if g.config.get("protection").is_some_and(|p| p == "1") {
                    return Err(texts::protected(&format!("can't remove CT {vmid}")));
                }
                check_lock(g, false)?;
                g.running = false;
                g.lease_visible_at = None;
                Ok(())
            }),
            // `resize_vm` runs `$load_and_check` again under the flock: a second identical
            // resize queued behind the first fails here (audit Z2, top #5).
            TaskPlan::Resize {
                vmid,
                disk,
                bytes,
                relative,
                digest,
            } => self.mutate(|st| {
                let target = crate::api::resize_check(
                    st,
                    &node,
                    &who,
                    vmid,
                    &disk,
                    relative,
                    bytes,
                    digest.as_deref(),
                )
                .map_err(|e| e.message)?;
                set_plan(
                    st,
                    upid,
                    TaskPlan::Resize {
                        vmid,
                        disk,
                        bytes: target,
                        relative: false,
                        digest: None,
                    },
                );
                Ok(())
            }),
            TaskPlan::Clone { .. } => self.mutate(|st| {
                let plan =
                    crate::clone::begin_clone(st, &plan).map_err(|e| texts::clone_failed(&e))?;
                set_plan(st, upid, plan);
                Ok(())
            }),
            TaskPlan::Template { vmid, .. } => self.mutate(|st| {
                let plan = crate::clone::begin_template(st, vmid)?;
                set_plan(st, upid, plan);
                Ok(())
            }),
            _ => Ok(()),
        }
    }

    /// A destroy whose volumes are freed (pve-container `LXC.pm` `destroy_lxc_container`):
    /// the volumes of the config and pending section go (one another guest owns is skipped
    /// with a plain warning, not a task warning: audit X2), then the config is replaced by
    /// `lock: destroyed` alone (`destroy_vm` passes `{ lock => 'destroyed' }`). Whether the
    /// task is a destroy.
    fn destroy_freed(&self, upid: &str) -> bool {
        self.mutate(|st| {
            let Some(TaskPlan::Destroy {
                vmid,
                destroy_unreferenced,
            }) = st
                .tasks
                .iter()
                .find(|t| t.upid == upid && !t.inject_fail)
                .and_then(|t| t.plan.clone())
            else {
                return false;
            };
            let Some(g) = st.guests.get(&vmid) else {
                return true;
            };
            let referenced = referenced_volumes(g);
            let node = g.node.clone();
            // vdisk_free refuses a base volume linked clones still use: the destroy goes on
            // and the base stays (destroy() warns about it at the end).
            let (kept, _) = crate::clone::bases_in_use(st, &referenced);
            let shared: Vec<String> = st
                .storages
                .iter()
                .filter(|s| s.shared)
                .map(|s| s.id.clone())
                .collect();
            st.linked.retain(|clone, _| !referenced.contains(clone));
            let mut skipped = Vec::new();
            st.volumes.retain(|v| {
                if kept.contains(&v.volid) {
                    return true;
                }
                let referenced = referenced.contains(&v.volid);
                if referenced && v.owner != vmid {
                    skipped.push(texts::not_owner_of_volume(&v.volid, vmid));
                    return true;
                }
                // Unreferenced volumes are looked for on the storages this node sees.
                let here = v.node == node || shared.contains(&v.storage);
                !(referenced || (destroy_unreferenced && v.owner == vmid && here))
            });
            for line in skipped {
                self.log(st, upid, line);
            }
            if let Some(g) = st.guests.get_mut(&vmid) {
                g.config = BTreeMap::from([("lock".to_string(), "destroyed".to_string())]);
                g.pending.clear();
                g.pending_delete.clear();
            }
            true
        })
    }

    /// Apply a finished task's plan; returns a follow-up start for `start=1` restores.
    fn apply(&self, upid: &str) -> Option<(u32, Subject)> {
        let mut follow_up = None;
        let dhcp_at = now_ms() + self.dhcp_delay_ms();
        let rt = self.runtime.clone();
        self.mutate(|st| {
            let Some(t) = st.tasks.iter().find(|t| t.upid == upid) else {
                return;
            };
            let (Some(plan), inject_fail, ty, who) = (
                t.plan.clone(),
                t.inject_fail,
                t.task_type.clone(),
                t.who.clone(),
            ) else {
                return;
            };
            if inject_fail {
                let vmid: u32 = t.id.parse().unwrap_or(0);
                let msg = match ty.as_str() {
                    "vzrestore" => format!("unable to restore CT {vmid} - simulated fault: command 'tar xpf - --zstd' failed: exit code 2"),
                    "resize" => format!("simulated fault: resize2fs of CT {vmid} failed: exit code 1"),
                    "vzstart" => format!("simulated fault: startup for container '{vmid}' failed"),
                    other => format!("simulated fault: {other} of CT {vmid} failed"),
                };
                cleanup_restore(st, upid);
                finish(st, upid, Err(msg));
                return;
            }
            let node = t.node.clone();
            let result = apply_plan(st, &node, plan, dhcp_at, &*rt);
            match result {
                Ok((warnings, start)) => {
                    if let (Some(vmid), Some(who)) = (start, who) {
                        follow_up = Some((vmid, who));
                    }
                    finish(st, upid, Ok(warnings));
                }
                Err(msg) => {
                    cleanup_restore(st, upid);
                    finish(st, upid, Err(msg));
                }
            }
        });
        follow_up
    }
}

/// What a running task will apply at its end (its plan, as its worker made it ready).
fn set_plan(st: &mut State, upid: &str, plan: TaskPlan) {
    if let Some(t) = st.tasks.iter_mut().find(|t| t.upid == upid) {
        t.plan = Some(plan);
    }
}

/// Record a task's end: its last log line and `exitstatus`.
fn finish(st: &mut State, upid: &str, result: Result<Vec<String>, String>) {
    if let Some(t) = st.tasks.iter_mut().find(|t| t.upid == upid) {
        if t.status == "stopped" {
            return;
        }
        t.status = "stopped".into();
        t.plan = None;
        t.end_ms = now_ms();
        match result {
            Ok(warnings) if warnings.is_empty() => {
                t.log.push("TASK OK".into());
                t.exitstatus = Some("OK".into());
            }
            Ok(warnings) => {
                for w in &warnings {
                    t.log.push(format!("WARN: {w}"));
                }
                t.log.push(format!("TASK WARNINGS: {}", warnings.len()));
                t.exitstatus = Some(format!("WARNINGS: {}", warnings.len()));
            }
            Err(msg) => {
                let msg = msg.trim_end().to_string();
                t.log.push(msg.clone());
                t.log.push(format!("TASK ERROR: {msg}"));
                t.exitstatus = Some(msg.replace('\n', " "));
            }
        }
    }
}

/// A failed restore removes what it created: its volumes and the placeholder config, so the
/// VMID is free again (reference §2.3).
fn cleanup_restore(st: &mut State, upid: &str) {
    let Some(t) = st.tasks.iter().find(|t| t.upid == upid) else {
        return;
    };
    if t.task_type == "vzclone" {
        if let Some(plan) = t.plan.clone() {
            crate::clone::cleanup_clone(st, &plan);
        }
        return;
    }
    if t.task_type != "vzrestore" && t.task_type != "vzcreate" {
        return;
    }
    let vmid: u32 = t.id.parse().unwrap_or(0);
    let created: Option<Vec<String>> = match &t.plan {
        Some(TaskPlan::Restore { volumes, .. }) => {
            Some(volumes.iter().map(|v| v.volid.clone()).collect())
        }
        _ => None,
    };
    let made_volumes = created.is_some();
    let created = created.unwrap_or_default();
    st.volumes.retain(|v| !created.contains(&v.volid));
    let Some(g) = st.guests.get_mut(&vmid) else {
        return;
    };
    if g.config.get("lock").is_none_or(|l| l != "create") {
        return;
    }
    // `$destroy_config_on_error`: a forced restore that failed before its new volumes only
    // removes the lock from the existing config; after them (or for a new CT) the config goes
    // (C:API2/LXC.pm `create_vm`; R15).
    if !made_volumes && g.config.len() > 1 {
        g.config.remove("lock");
    } else {
        st.guests.remove(&vmid);
    }
}

/// A forced restore's old CT, once the new volumes exist: its volumes are freed (bases that
/// linked clones use stay, as on a destroy) and its config is replaced by `lock: create`.
/// Nothing for a new CT (whose config is the placeholder alone).
fn overwrite_old(st: &mut State, vmid: u32) {
    let Some(g) = st.guests.get(&vmid) else {
        return;
    };
    if g.config.len() <= 1 {
        return;
    }
    let referenced = referenced_volumes(g);
    let (kept, _) = crate::clone::bases_in_use(st, &referenced);
    st.linked.retain(|clone, _| !referenced.contains(clone));
    st.volumes
        .retain(|v| kept.contains(&v.volid) || !(referenced.contains(&v.volid) && v.owner == vmid));
    if let Some(g) = st.guests.get_mut(&vmid) {
        *g = crate::state::Guest {
            vmid,
            config: BTreeMap::from([("lock".to_string(), "create".to_string())]),
            node: g.node.clone(),
            pool: g.pool.clone(),
            ..Default::default()
        };
    }
}

/// The effect of a plan; `Ok((warnings, start_vmid))`.
fn apply_plan(
    st: &mut State,
    node: &str,
    plan: TaskPlan,
    dhcp_at: u64,
    rt: &dyn GuestRuntime,
) -> Result<(Vec<String>, Option<u32>), String> {
    let no_conf = |vmid: u32| texts::no_config(node, vmid);
    match plan {
        TaskPlan::RestoreRequest { vmid, .. } => Err(format!(
            "unable to restore CT {vmid} - worker did not start"
        )),
        TaskPlan::Restore {
            vmid,
            config,
            traits,
            pool,
            start,
            warnings,
            ..
        } => {
            // `$was_template`: `template_create` after the extraction, inside the worker's
            // eval, so a storage without the `template` feature fails the restore and it
            // cleans up (C:API2/LXC.pm `create_vm`; C:LXC.pm `template_create`; R16).
            let renames = if config.get("template").is_some_and(|t| t == "1") {
                crate::clone::template_renames(st, &config)
                    .map_err(|e| texts::unable_to_restore(vmid, &e))?
            } else {
                Vec::new()
            };
            let g = st.guests.entry(vmid).or_default();
            g.vmid = vmid;
            g.config = config;
            g.traits = traits;
            // A forced restore without `pool` leaves the CT in the pool it was in.
            if pool.is_some() {
                g.pool = pool.clone();
            }
            if let Some(p) = pool {
                let members = st.pools.entry(p).or_default();
                if !members.contains(&vmid) {
                    members.push(vmid);
                }
            }
            if !renames.is_empty() {
                crate::clone::apply_template(st, vmid, &renames);
            }
            Ok((warnings, start.then_some(vmid)))
        }
        TaskPlan::Fail { message, .. } => Err(message),
        plan @ TaskPlan::Clone { .. } => crate::clone::apply_clone(st, &plan)
            .map(|()| (Vec::new(), None))
            .map_err(|e| texts::clone_failed(&e)),
        TaskPlan::Template { vmid, renames } => {
            crate::clone::apply_template(st, vmid, &renames);
            Ok((Vec::new(), None))
        }
        TaskPlan::Resize {
            vmid, disk, bytes, ..
        } => {
            let g = st.guests.get_mut(&vmid).ok_or_else(|| no_conf(vmid))?;
            let cur = g
                .config
                .get(&disk)
                .cloned()
                .ok_or_else(|| format!("no such disk '{disk}'"))?;
            let mut m = if disk == "rootfs" {
                pve_api::MountConfig::parse_rootfs(&cur)
            } else {
                pve_api::MountConfig::parse_mp(&cur)
            }
            .map_err(|e| e.to_string())?;
            m.size = Some(bytes);
            g.config.insert(disk, m.to_string());
            if let Some(v) = st.volumes.iter_mut().find(|v| v.volid == m.volume) {
                v.size = bytes;
            }
            Ok((Vec::new(), None))
        }
        TaskPlan::Start { vmid } => {
            let g = st.guests.get(&vmid).ok_or_else(|| no_conf(vmid))?;
            if g.running {
                return Err(texts::already_running(vmid));
            }
            boot(st, vmid, dhcp_at, rt);
            Ok((Vec::new(), None))
        }
        TaskPlan::Reboot { vmid } => {
            if let Some(g) = st.guests.get_mut(&vmid) {
                g.running = false;
                g.lease_visible_at = None;
            }
            // The stop is done; the start checks the bridges as a start does.
            missing_bridge(st, vmid)?;
            boot(st, vmid, dhcp_at, rt);
            Ok((Vec::new(), None))
        }
        TaskPlan::Stop { vmid } => {
            if let Some(g) = st.guests.get_mut(&vmid) {
                g.running = false;
                g.lease_visible_at = None;
            }
            Ok((Vec::new(), None))
        }
        TaskPlan::Destroy { vmid, .. } => destroy(st, vmid).map(|w| (w, None)),
    }
}

/// `vm_start` applies and writes pending changes, then writes the LXC config, which reads
/// each NIC's bridge MTU (pve-container `LXC.pm` `update_lxc_config`, pve-common `Network.pm`
/// `read_bridge_mtu`): a NIC on a bridge the node does not have fails the start there, in
/// `netN` key order, with the pending changes already applied.
fn missing_bridge(st: &mut State, vmid: u32) -> Result<(), String> {
    let Some(g) = st.guests.get(&vmid) else {
        return Ok(());
    };
    let mut effective = g.clone();
    apply_pending(&mut effective);
    let missing = effective
        .config
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix("net")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|(_, v)| v.parse::<pve_api::NetConfig>().ok())
        .map(|n| n.bridge.unwrap_or_default())
        .find(|b| !st.bridges.contains(b));
    match missing {
        Some(bridge) => {
            st.guests.insert(vmid, effective);
            Err(texts::bridge_missing(&bridge))
        }
        None => Ok(()),
    }
}

/// Apply `[pve:pending]` to the config (at start and reboot, or on a stopped guest).
pub fn apply_pending(g: &mut crate::state::Guest) {
    let pending = std::mem::take(&mut g.pending);
    for (k, v) in pending {
        if k.starts_with("mp") {
            detach_old_mp(g, &k);
        }
        g.config.insert(k, v);
    }
    for k in std::mem::take(&mut g.pending_delete) {
        if k.starts_with("mp") {
            detach_old_mp(g, &k);
        } else {
            g.config.remove(&k);
        }
    }
}

/// A replaced or removed `mpN` volume becomes `unusedN`; it is never deleted.
fn detach_old_mp(g: &mut crate::state::Guest, key: &str) {
    if let Some(old) = g.config.remove(key) {
        let vol = old.split(',').next().unwrap_or("").to_string();
        let vol = vol.strip_prefix("volume=").unwrap_or(&vol).to_string();
        if vol.starts_with('/') {
            return;
        }
        let n = (0..256)
            .find(|n| !g.config.contains_key(&format!("unused{n}")))
            .unwrap_or(255);
        g.config.insert(format!("unused{n}"), vol);
    }
}

/// A boot: pending changes are applied and the guest runs; what else the boot leaves in the
/// record (identity files, a DHCP lease visible from `dhcp_at`) is the runtime's
/// (`GuestRuntime::booted`).
fn boot(st: &mut State, vmid: u32, dhcp_at: u64, rt: &dyn GuestRuntime) {
    let Some(g) = st.guests.get_mut(&vmid) else {
        return;
    };
    apply_pending(g);
    g.running = true;
    g.boots += 1;
    rt.booted(st, vmid, dhcp_at);
}

/// The volumes a destroy of `vmid` deletes: those of its config (`rootfs`, `mpN`, `unusedN`,
/// pending ones too) that it owns, and with `destroy-unreferenced-disks` every other one it
/// owns. Exactly what [`destroy`] removes from the state.
fn destroyed_volumes(st: &State, vmid: u32, destroy_unreferenced: bool) -> Vec<String> {
    let Some(g) = st.guests.get(&vmid) else {
        return Vec::new();
    };
    let referenced = referenced_volumes(g);
    let (kept, _) = crate::clone::bases_in_use(st, &referenced);
    st.volumes
        .iter()
        .filter(|v| {
            v.owner == vmid
                && (referenced.contains(&v.volid)
                    || (destroy_unreferenced && st.volume_on(&g.node, v)))
        })
        .filter(|v| !kept.contains(&v.volid))
        .map(|v| v.volid.clone())
        .collect()
}

/// The volume ids a guest's config (and pending changes) reference: rootfs, mount points,
/// unused disks.
fn referenced_volumes(g: &crate::state::Guest) -> Vec<String> {
    g.config
        .iter()
        .chain(g.pending.iter())
        .filter(|(k, _)| *k == "rootfs" || k.starts_with("mp") || k.starts_with("unused"))
        .filter_map(|(_, v)| v.split(',').next().map(str::to_string))
        .collect()
}

/// The end of a destroy: its volumes are gone already ([`Sim::destroy_freed`]); ACLs and
/// pool membership go always (`remove_vm_access`), then the config.
fn destroy(st: &mut State, vmid: u32) -> Result<Vec<String>, String> {
    if st.guests.remove(&vmid).is_none() {
        return Ok(Vec::new());
    }
    // Base volumes destroy_freed kept because linked clones still use them: the task warns.
    let owned: Vec<String> = st
        .volumes
        .iter()
        .filter(|v| v.owner == vmid)
        .map(|v| v.volid.clone())
        .collect();
    let (_, warnings) = crate::clone::bases_in_use(st, &owned);
    st.acl.retain(|a| a.path != format!("/vms/{vmid}"));
    for members in st.pools.values_mut() {
        members.retain(|m| *m != vmid);
    }
    Ok(warnings)
}

/// The renames a restore of an archived template makes once its archive is extracted, for a
/// runtime to apply to its volumes; `None` when there are none (or the storage refuses them:
/// the task then fails when it applies).
fn restored_template_renames(
    sim: &Sim,
    config: &BTreeMap<String, String>,
) -> Option<Vec<(String, String)>> {
    if config.get("template").is_none_or(|t| t != "1") {
        return None;
    }
    sim.read(|st| crate::clone::template_renames(st, config).ok())
}

/// What a restore request asks for, after the synchronous checks.
struct RestoreInput<'a> {
    vmid: u32,
    storage: &'a str,
    request: BTreeMap<String, String>,
    unique: bool,
    unprivileged: Option<bool>,
    who: &'a Subject,
}

type Planned = (BTreeMap<String, String>, Vec<Volume>, Vec<String>);

/// The `vzrestore` worker's decisions (reference §2.3, `docs/guests.md`, "Restore"): privileges on
/// archived bridges, the privileged check, the disk layout, and the config merge.
/// What a plain create's worker needs ([`Sim::begin_create`]).
struct CreateInput {
    vmid: u32,
    template: std::path::PathBuf,
    storage: String,
    request: BTreeMap<String, String>,
    pool: Option<String>,
    start: bool,
    unprivileged: Option<bool>,
}

/// The `ostype` PVE would detect, read from a template's name (modelled; PVE reads the
/// unpacked `/etc/os-release`, `src/PVE/LXC/Setup.pm`).
fn ostype_of_template(name: &str) -> &'static str {
    let first = name.split(['-', '_']).next().unwrap_or_default();
    crate::api::params::OSTYPES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(first))
        .copied()
        .unwrap_or("unmanaged")
}

fn plan_restore(
    st: &State,
    r: RestoreInput<'_>,
    archived: &vzdump::PctConf,
) -> Result<Planned, String> {
    let RestoreInput {
        vmid,
        storage,
        request,
        unique,
        unprivileged,
        who,
    } = r;
    // `check_bridge_access` for every archived NIC the request does not replace, before
    // anything else and whether or not `unique` re-randomises it (audit R8).
    for (k, v) in &archived.entries {
        let nic = k
            .strip_prefix("net")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if nic && !request.contains_key(k) {
            crate::api::check_vnet_access(st, who, v).map_err(|e| e.message)?;
        }
    }
    let mut conf = request.clone();
    let mut warnings = Vec::new();
    for (k, v) in &archived.entries {
        let skip = matches!(
            k.as_str(),
            "digest" | "rootfs" | "snapshots" | "unprivileged" | "parent" | "template"
        ) || k.starts_with("mp")
            || k.starts_with("unused");
        if skip {
            continue;
        }
        if k.starts_with("lxc.") {
            if who.is_root() {
                conf.insert(k.clone(), v.clone());
            } else {
                warnings.push(format!(
                    "skipping custom lxc option '{k}' for non-root user"
                ));
            }
            continue;
        }
        if k.starts_with("net") && unique {
            // unique=1 re-randomises every archived NIC and overrides a request netN.
            let fresh = v
                .parse::<pve_api::NetConfig>()
                .ok()
                .and_then(|n| n.with_hwaddr(&fresh_mac()).ok())
                .map(|n| n.to_string());
            if let Some(f) = fresh {
                conf.insert(k.clone(), f);
            }
            continue;
        }
        if !conf.contains_key(k) {
            // Archived NICs keep their MAC (their bridge was checked above).
            conf.insert(k.clone(), v.clone());
        }
    }
    let unprivileged = unprivileged.unwrap_or_else(|| archived.get("unprivileged") == Some("1"));
    // A new privileged CT, or an unprivileged one restored privileged (a forced restore over a
    // privileged CT needs nothing more: `create_vm`, R15).
    let old = st
        .guests
        .get(&vmid)
        .map(|g| &g.config)
        .filter(|c| c.len() > 1);
    let was_unprivileged = old.is_none_or(|c| c.get("unprivileged").is_some_and(|u| u == "1"));
    if !unprivileged && was_unprivileged && !auth::has(st, who, "/", "Sys.Modify") {
        return Err("Permission check failed (/, Sys.Modify)".into());
    }
    if unprivileged {
        conf.insert("unprivileged".into(), "1".into());
    }
    if !archived.description.is_empty() && !request.contains_key("description") {
        conf.insert(
            "description".into(),
            archived.description.trim_end_matches('\n').to_string(),
        );
    }
    // Disks: explicit mode (request rootfs) creates only the request's volumes; storage-only
    // mode recreates the archived rootfs and volume mount points on `storage`.
    let mut volumes: Vec<Volume> = Vec::new();
    let explicit = request.contains_key("rootfs");
    let mut disks: Vec<(String, String)> = Vec::new();
    if explicit {
        for (k, v) in request
            .iter()
            .filter(|(k, _)| *k == "rootfs" || k.starts_with("mp"))
        {
            disks.push((k.clone(), v.clone()));
        }
    } else {
        let root = archived.get("rootfs").ok_or(
            "rootfs configuration could not be recovered, please check and specify manually!",
        )?;
        disks.push(("rootfs".into(), root.to_string()));
        for (k, v) in archived.entries.iter().filter(|(k, _)| k.starts_with("mp")) {
            if !request.contains_key(k) {
                disks.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in request.iter().filter(|(k, _)| k.starts_with("mp")) {
            disks.push((k.clone(), v.clone()));
        }
    }
    // Allocated in `valid_volume_keys` order: rootfs, then mp0, mp1, … (pve-container
    // `LXC.pm` `create_disks` through `foreach_volume`), so the rootfs is `disk-0`.
    disks.sort_by_key(|(k, _)| {
        k.strip_prefix("mp")
            .and_then(|n| n.parse::<u32>().ok())
            .map_or(0, |n| n + 1)
    });
    for (k, v) in disks {
        let parsed = if k == "rootfs" {
            pve_api::MountConfig::parse_rootfs(&v)
        } else {
            pve_api::MountConfig::parse_mp(&v)
        };
        let mut m = parsed.map_err(|e| format!("unable to parse {k}: {e}"))?;
        if m.volume.starts_with('/') {
            if !who.is_root() {
                return Err(format!(
                    "restoring '{k}' to bind mount is only possible for root"
                ));
            }
            conf.insert(k, m.to_string());
            continue;
        }
        let (sid, bytes) = match new_volume_spec(&m.volume) {
            Some((sid, gib)) if explicit || request.contains_key(&k) => {
                (sid, new_volume_bytes(gib))
            }
            _ => match m.size {
                Some(b) => (storage.to_string(), b),
                None => {
                    return Err("unable to detect disk size - please specify rootfs (size)".into())
                }
            },
        };
        m.volume = st.allocate_volume(sid, vmid, bytes, &mut volumes);
        m.size = Some(bytes);
        conf.insert(k, m.to_string());
    }
    conf.entry("hostname".into())
        .or_insert_with(|| format!("CT{vmid}"));
    conf.entry("memory".into()).or_insert_with(|| "512".into());
    conf.entry("swap".into()).or_insert_with(|| "512".into());
    conf.remove("lock");
    // An archived template is made a template again (`create_vm`; audit top #10, R9); its
    // volumes become `base-<vmid>-disk-N` when the task applies (R16).
    if archived.get("template") == Some("1") {
        conf.insert("template".into(), "1".into());
    }
    Ok((conf, volumes, warnings))
}
