//! PVE's error shapes (reference §0): 400 with the `errors` map, 403 permission texts, 500
//! plain dies whose first line is the status line, 501 for unknown routes.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pve_api::texts;
use serde_json::json;

/// An error as PVE sends it.
#[derive(Debug)]
pub struct PveErr {
    pub status: u16,
    pub message: String,
    pub errors: Option<BTreeMap<String, String>>,
}

pub fn die(msg: impl Into<String>) -> PveErr {
    PveErr {
        status: 500,
        message: msg.into(),
        errors: None,
    }
}

pub fn perm_err(path: &str, privilege: &str) -> PveErr {
    PveErr {
        status: 403,
        message: format!("Permission check failed ({path}, {privilege})"),
        errors: None,
    }
}

pub fn perm_text(text: impl Into<String>) -> PveErr {
    PveErr {
        status: 403,
        message: format!("Permission check failed ({})", text.into()),
        errors: None,
    }
}

pub fn param_err(errors: BTreeMap<String, String>) -> PveErr {
    PveErr {
        status: 400,
        message: "Parameter verification failed.".into(),
        errors: Some(errors),
    }
}

pub fn param1(key: &str, msg: impl Into<String>) -> PveErr {
    param_err(BTreeMap::from([(key.to_string(), msg.into())]))
}

pub fn no_conf(node: &str, vmid: u32) -> PveErr {
    die(texts::no_config(node, vmid))
}

/// The status line carries the first line of the message (reference §0).
pub fn error_response(e: &PveErr) -> Response {
    let first = e.message.lines().next().unwrap_or("").to_string();
    let mut body = json!({ "data": null, "message": format!("{}\n", e.message) });
    if let Some(errs) = &e.errors {
        body["errors"] = json!(errs
            .iter()
            .map(|(k, v)| (k.clone(), format!("{v}\n")))
            .collect::<BTreeMap<_, _>>());
    }
    let mut resp = (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    if let Ok(r) = hyper::ext::ReasonPhrase::try_from(first.into_bytes()) {
        resp.extensions_mut().insert(r);
    }
    resp
}

pub fn not_implemented(method: &str, path: &str) -> PveErr {
    PveErr {
        status: 501,
        message: format!("Method '{method} {path}' not implemented"),
        errors: None,
    }
}

/// The config flock's timeout text (pve-common `lock_file_full`).
pub fn lock_timeout_text(vmid: u32) -> String {
    texts::lock_timeout(&texts::config_lock_file(vmid))
}
