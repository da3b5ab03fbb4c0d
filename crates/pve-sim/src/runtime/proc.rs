//! Running host tools: always a program with an argument vector (never a shell), errors that
//! quote the command and what it printed, and the two namespace tricks the runtime needs.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::RuntimeError;

/// The PATH every tool runs with, also inside a guest (`nsenter -a` resolves the program in
/// the guest's mount namespace): the environment of the simulator is not the guest's.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command with a clean environment.
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env_clear().env("PATH", PATH).env("LANG", "C.UTF-8");
    c.stdin(Stdio::null());
    c
}

/// How a command shows in an error: program and arguments, as given.
pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run to completion and capture its output; an error unless it exits 0.
pub fn run(c: &mut Command) -> Result<String, RuntimeError> {
    let out = output(c)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(c, &out))
    }
}

/// Run to completion and capture its output, whatever its exit status.
pub fn output(c: &mut Command) -> Result<Output, RuntimeError> {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.output()
        .map_err(super::io_err(format!("run `{}`", describe(c))))
}

pub fn failed(c: &Command, out: &Output) -> RuntimeError {
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if text.is_empty() {
        text = stdout.trim().to_string();
    }
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    RuntimeError::Command {
        command: describe(c),
        status: out.status.to_string(),
        output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    }
}

fn cstring(p: &OsStr) -> Result<CString, RuntimeError> {
    CString::new(p.as_bytes()).map_err(|_| {
        RuntimeError::Guest(format!("path {} contains a NUL byte", p.to_string_lossy()))
    })
}

/// Run `c` in a private mount namespace of its own with `run_dir` bind-mounted on `/run`
/// (what `unshare -m --propagation private` plus `mount --bind DIR /run` do, as syscalls in
/// the child before exec). LXC keeps its locks and state under `/run/lxc`; this way every
/// `lxc-*` call of the simulator sees the simulator's own directory there, and nothing is
/// left in the host's `/run`. The container's monitor, started from such a child, lives on
/// in that namespace.
pub fn in_private_run(c: &mut Command, run_dir: &Path) -> Result<(), RuntimeError> {
    let run_dir = cstring(run_dir.as_os_str())?;
    // SAFETY: the closure runs in the forked child before exec and only makes raw syscalls
    // (unshare, mount) on memory prepared before the fork; it allocates nothing.
    unsafe {
        c.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                run_dir.as_ptr(),
                c"/run".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Put the child in a process group of its own, so that killing the group also stops what it
/// started (tar under `lxc-usernsexec`).
pub fn own_group(c: &mut Command) {
    c.process_group(0);
}

/// Kills a child's whole process group when dropped, unless it was waited for: a restore
/// interrupted by `DELETE …/tasks/{upid}` or a simulator shutdown must not leave a tar
/// writing into a rootfs that is being removed.
pub struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    pub fn new(pid: u32) -> GroupGuard {
        GroupGuard {
            pgid: i32::try_from(pid).ok(),
        }
    }
    pub fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill has no memory-safety preconditions; the group is ours.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Is `pid` a live process? A zombie (dead, not yet reaped: a killed simulator's children
/// are reparented to an init that reaps when it gets to it) is not.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last ')' (comm may contain one).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first executable `name` in the simulator's PATH or [`PATH`].
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let env = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&env)
        .chain(std::env::split_paths(OsStr::new(PATH)))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
