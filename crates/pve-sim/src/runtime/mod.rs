//! Guest runtimes: what a guest *is* behind the simulated PVE API.
//!
//! The task workers (`tasks.rs`) call the runtime at restore, start, stop, shutdown, reboot and
//! destroy, and the API asks it for `/interfaces`, a guest's SSH endpoint and its facts in the
//! state dump. Two runtimes exist:
//!
//! - [`GuestRuntime::Modelled`] (the default): a guest is a record in the state. Boots decide
//!   machine-id and SSH keys from the archive's traits (`guest.rs`), DHCP leases are drawn
//!   from a table, and an in-process SSH server presents the modelled key (`ssh.rs`). Task
//!   durations are modelled. Fast, deterministic, needs nothing from the host.
//! - [`GuestRuntime::Lxc`]: a guest is a real container. Restore unpacks the archive with
//!   PVE's own tar invocation, start applies PVE's start-time setup to the rootfs and boots
//!   it with `lxc-start`; its NIC sits on a bridge inside a network namespace the simulator
//!   made, where dnsmasq hands out leases; the SSH endpoint forwards to the guest's own sshd.
//!   Restore, start, stop and destroy take as long as they really do. Needs root and the
//!   tools [`lxc::preflight`] names.
//!
//! An enum rather than a trait object: the set is closed, and the workers' async calls stay
//! plain `async fn`s.

pub mod lxc;
pub(crate) mod modelled;

mod dhcp;
pub(crate) mod forward;
mod netns;
mod proc;
mod setup;

use std::sync::Arc;

/// Which runtime a simulator's guests use (`felhom sim serve --guests …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestRuntime {
    #[default]
    Modelled,
    Lxc,
}

impl GuestRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestRuntime::Modelled => "modelled",
            GuestRuntime::Lxc => "lxc",
        }
    }
}

impl std::fmt::Display for GuestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GuestRuntime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "modelled" => Ok(GuestRuntime::Modelled),
            "lxc" => Ok(GuestRuntime::Lxc),
            other => Err(format!("must be modelled or lxc; got {other:?}")),
        }
    }
}

/// Why the real runtime could not do something. The messages name what to install or fix:
/// they reach a person through `felhom sim serve`, the demo or a failing test.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the lxc guest runtime must run as root: it unpacks rootfs trees owned by shifted ids, creates network namespaces and starts containers")]
    NotRoot,
    #[error("the lxc guest runtime needs `{tool}`, which is not in PATH; install it with `apt-get install {package}` (Debian package {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("the lxc guest runtime needs {0}")]
    Host(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Guest(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// A simulator's runtime instance.
#[derive(Clone)]
pub(crate) enum Runtime {
    Modelled,
    Lxc(Arc<lxc::Lxc>),
}

impl Runtime {
    pub fn lxc(&self) -> Option<&Arc<lxc::Lxc>> {
        match self {
            Runtime::Modelled => None,
            Runtime::Lxc(l) => Some(l),
        }
    }

    pub fn kind(&self) -> GuestRuntime {
        match self {
            Runtime::Modelled => GuestRuntime::Modelled,
            Runtime::Lxc(_) => GuestRuntime::Lxc,
        }
    }
}
