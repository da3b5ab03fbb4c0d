//! What keeps the token secret inside felhom's process: the environment variable taken once
//! and wiped, no core dumps while a secret is held, and children started with an explicit,
//! minimal environment.
//!
//! | what | why it looks like this |
//! |---|---|
//! | [`take_env_secret`] | called first thing in `main`, before any thread: `FELHOM_TOKEN_SECRET` is read once, removed from the environment, and its bytes in the process's initial environment block are zeroed, so `/proc/<pid>/environ` no longer shows it and no child can inherit it |
//! | [`forbid_core_dumps`] | once a secret is loaded (from any source): `RLIMIT_CORE` 0 and `PR_SET_DUMPABLE` 0, so neither a crash nor a same-user debugger copies memory out |
//! | [`minimal_env`] | every `Command` felhom starts (mmdebstrap, the naive baseline, its own children in benches) gets `env_clear` plus `PATH`, `LANG=C.UTF-8`, `TMPDIR`/`HOME` when set, and what that child needs, named at the call |

use std::process::Command;
use std::sync::{Arc, Once, OnceLock};

use pve_api::Secret;

use crate::config::SECRET_ENV;

/// The secret `FELHOM_TOKEN_SECRET` held at startup (`None` inside: it was not set).
static ENV_SECRET: OnceLock<Option<Arc<Secret>>> = OnceLock::new();

/// Take `FELHOM_TOKEN_SECRET` out of the process: read it, remove it from the environment
/// and overwrite its bytes in place. Call it at the top of `main`, before any thread is
/// started (the environment is not thread-safe); later calls change nothing.
pub fn take_env_secret() {
    ENV_SECRET.get_or_init(|| {
        let value = std::env::var(SECRET_ENV).ok();
        let entry = env_entry(SECRET_ENV);
        std::env::remove_var(SECRET_ENV);
        if let Some((ptr, len)) = entry {
            // SAFETY: `ptr..ptr+len` is the `NAME=value` string `environ` pointed at (found by
            // env_entry, no thread running, nothing has changed the environment since). The
            // initial environment block and glibc's setenv copies are never freed, and
            // unsetenv only drops the pointer from the array; the bytes are writable.
            unsafe { std::ptr::write_bytes(ptr, 0, len) };
        }
        let secret = value.and_then(|mut v| {
            let s = v.trim().to_string();
            zeroize_string(&mut v);
            (!s.is_empty()).then(|| Arc::new(Secret::new(s)))
        });
        if secret.is_some() {
            forbid_core_dumps();
        }
        secret
    });
}

/// The secret [`take_env_secret`] took, or — in a process that never called it (a library
/// user, a test) — the variable as it is now.
pub(crate) fn env_secret() -> Option<Arc<Secret>> {
    match ENV_SECRET.get() {
        Some(s) => s.clone(),
        None => std::env::var(SECRET_ENV)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| Arc::new(Secret::new(v))),
    }
}

fn zeroize_string(s: &mut String) {
    use zeroize::Zeroize;
    s.zeroize();
}

/// The `NAME=value` entry of `environ` for `name`: its address and length.
fn env_entry(name: &str) -> Option<(*mut u8, usize)> {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    let prefix = format!("{name}=");
    // SAFETY: environ is a NULL-terminated array of NUL-terminated strings; it is only read
    // here, before any thread exists (see take_env_secret).
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return None;
        }
        while !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p);
            if entry.to_bytes().starts_with(prefix.as_bytes()) {
                return Some(((*p).cast::<u8>(), entry.to_bytes().len()));
            }
            p = p.add(1);
        }
    }
    None
}

/// No core file and no ptrace/`/proc/<pid>/mem` access by the same user while this process
/// holds a secret. Done once; failures are logged, not fatal (a container may forbid prctl).
pub fn forbid_core_dumps() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit and prctl take plain values and have no memory preconditions.
        let (rl, pr) = unsafe {
            (
                libc::setrlimit(libc::RLIMIT_CORE, &zero),
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            )
        };
        if rl != 0 || pr != 0 {
            tracing::warn!(
                "could not disable core dumps (setrlimit {rl}, prctl {pr}): {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Clear `cmd`'s environment and give it only `PATH`, `LANG=C.UTF-8`, `TMPDIR` and `HOME`
/// (when this process has them) and the variables named in `pass` that this process has
/// (proxies for a download, `RUST_LOG` for a felhom child). What else a child needs is set
/// by the caller with `.env(…)`, by name.
pub fn minimal_env<'c>(cmd: &'c mut Command, pass: &[&str]) -> &'c mut Command {
    cmd.env_clear().envs(minimal_vars(pass))
}

/// The variables [`minimal_env`] gives, for a command built in one chain
/// (`.env_clear().envs(minimal_vars(&[…]))`).
pub fn minimal_vars(pass: &[&str]) -> Vec<(String, std::ffi::OsString)> {
    let mut vars = vec![("LANG".to_string(), "C.UTF-8".into())];
    for name in ["PATH", "TMPDIR", "HOME"].iter().chain(pass) {
        if *name == SECRET_ENV {
            continue;
        }
        if let Some(v) = std::env::var_os(name) {
            vars.push((name.to_string(), v));
        }
    }
    vars
}

/// The proxy variables a download (mmdebstrap's apt) may need.
pub const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_only_the_named_variables() {
        let mut c = Command::new("env");
        minimal_env(&mut c, &["FELHOM_TEST_PASSED", SECRET_ENV]).env("CHILD_NEEDS", "1");
        let vars: Vec<(String, Option<String>)> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(vars.iter().all(|(k, _)| k != SECRET_ENV), "{vars:?}");
        assert!(vars.contains(&("LANG".into(), Some("C.UTF-8".into()))));
        assert!(vars.contains(&("CHILD_NEEDS".into(), Some("1".into()))));
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
        for n in &names {
            assert!(
                ["PATH", "TMPDIR", "HOME", "LANG", "CHILD_NEEDS"].contains(n),
                "unexpected {n} in {names:?}"
            );
        }
    }
}
