//! The client's observer hook: what a caller is told of each request and of each task
//! duration the client learns, so felhom can count them (Prometheus) without pve-api
//! depending on felhom. Set with [`crate::PveClient::set_observer`]; shared by the client's
//! clones; without one nothing is recorded.
//!
//! Why endpoint *templates*: a metric label per raw path (`/nodes/pve/lxc/1103/config`)
//! grows with every VMID and node ever seen, so the path is reduced to PVE's own route
//! shape (`GET /nodes/{node}/lxc/{vmid}/config`) from a fixed vocabulary: a segment after
//! a collection name is its parameter, a fixed path word stays, anything else is `{param}`.
//! The set of values is therefore bounded whatever a server or a caller sends.

use std::time::Duration;

use crate::durations::Bracket;

/// Told of what the client does. Both methods must be cheap and must not block.
pub trait Observer: Send + Sync {
    /// One request ended. `endpoint` is the method and path template, e.g.
    /// `GET /nodes/{node}/lxc/{vmid}/status/current` ([`endpoint_template`]); `status` is
    /// the HTTP status, or `None` when no answer came (connection refused, reset, timed
    /// out); `elapsed` from sending to the end of the body.
    fn request(&self, endpoint: &str, status: Option<u16>, elapsed: Duration);

    /// A wait learned how long a task of this type (the UPID's type: `vzrestore`,
    /// `vzstart`, …, as the server wrote it, so not bounded by this crate) takes;
    /// `expected` is the client's new estimate for the next one.
    fn task_duration(&self, task_type: &str, expected: Bracket) {
        let _ = (task_type, expected);
    }
}

/// The segment after each of these names is that collection's member, shown as the
/// parameter PVE's API schema calls it.
const PARAMS: &[(&str, &str)] = &[
    ("nodes", "{node}"),
    ("lxc", "{vmid}"),
    ("qemu", "{vmid}"),
    ("tasks", "{upid}"),
    ("storage", "{storage}"),
    ("content", "{volume}"),
    ("pools", "{poolid}"),
    ("network", "{iface}"),
    ("snapshot", "{snapname}"),
    ("users", "{userid}"),
    ("token", "{tokenid}"),
    ("roles", "{roleid}"),
    // The simulator's side channel (`/felhom-sim/guests/{vmid}/ssh`).
    ("guests", "{vmid}"),
];

/// Fixed path words of the routes felhom calls (and their near neighbours); any other
/// segment in a word position becomes `{param}`.
const WORDS: &[&str] = &[
    "api2",
    "json",
    "version",
    "cluster",
    "nextid",
    "resources",
    "access",
    "permissions",
    "acl",
    "nodes",
    "lxc",
    "qemu",
    "config",
    "pending",
    "resize",
    "interfaces",
    "status",
    "current",
    "start",
    "stop",
    "shutdown",
    "reboot",
    "suspend",
    "resume",
    "storage",
    "content",
    "vzdump",
    "extractconfig",
    "network",
    "tasks",
    "log",
    "pools",
    "snapshot",
    "users",
    "token",
    "roles",
    "felhom-sim",
    "state",
    "requests",
    "guests",
    "ssh",
];

/// `METHOD /path/template` for a request path (with or without `/api2/json`, which is
/// dropped; a query is ignored). Bounded: every segment is a fixed word or a placeholder.
pub fn endpoint_template(method: &str, path: &str) -> String {
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" => method,
        _ => "OTHER",
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.strip_prefix("/api2/json").unwrap_or(path);
    let mut out = String::from(method);
    out.push(' ');
    let mut prev: Option<&str> = None;
    let mut any = false;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        any = true;
        let param = prev.and_then(|p| PARAMS.iter().find(|(c, _)| *c == p).map(|(_, n)| *n));
        match param {
            Some(name) => {
                out.push_str(name);
                // A member is never itself a collection name.
                prev = None;
            }
            None => {
                let word = WORDS.iter().find(|w| **w == seg).copied();
                out.push_str(word.unwrap_or("{param}"));
                prev = word;
            }
        }
    }
    if !any {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ids_become_parameters() {
        for (m, p, want) in [
            (
                "GET",
                "/api2/json/nodes/pve/lxc/1103/status/current",
                "GET /nodes/{node}/lxc/{vmid}/status/current",
            ),
            (
                "POST",
                "/api2/json/nodes/pve-2/lxc/100/status/start",
                "POST /nodes/{node}/lxc/{vmid}/status/start",
            ),
            (
                "GET",
                "/api2/json/nodes/pve/tasks/UPID%3Apve%3A0003A2F1%3A0B8C9D12%3A66A1B2C3%3Avzrestore%3A123%3Aa%40pve%21b%3A/status",
                "GET /nodes/{node}/tasks/{upid}/status",
            ),
            (
                "GET",
                "/api2/json/nodes/pve/storage/local-lvm/content?content=backup",
                "GET /nodes/{node}/storage/{storage}/content",
            ),
            ("GET", "/api2/json/cluster/nextid", "GET /cluster/nextid"),
            ("GET", "/api2/json/version", "GET /version"),
            ("DELETE", "/api2/json/nodes/pve/lxc/123", "DELETE /nodes/{node}/lxc/{vmid}"),
            ("GET", "/felhom-sim/guests/1100/ssh", "GET /felhom-sim/guests/{vmid}/ssh"),
            ("GET", "/felhom-sim/state", "GET /felhom-sim/state"),
            ("GET", "/", "GET /"),
        ] {
            assert_eq!(endpoint_template(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn unknown_segments_and_methods_are_bounded() {
        // A value in a word position (a caller's typo, a hostile path) never becomes a label.
        assert_eq!(
            endpoint_template("GET", "/api2/json/nodes/pve/lxc/1/../../secret-1234"),
            "GET /nodes/{node}/lxc/{vmid}/{param}/{param}/{param}"
        );
        assert_eq!(
            endpoint_template("PATCH", "/nodes/x/whatever/99"),
            "OTHER /nodes/{node}/{param}/{param}"
        );
        // However many distinct raw paths, the templates stay few.
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            seen.insert(endpoint_template(
                "GET",
                &format!("/api2/json/nodes/n{i}/lxc/{i}/config"),
            ));
            seen.insert(endpoint_template("GET", &format!("/api2/json/x{i}/y{i}")));
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
}
