//! Every error the API answers is `application/problem+json` (RFC 9457): `type`, `title`,
//! `status`, `detail`, and `errors`, the fields at fault with the rule each broke (the same
//! [`FieldError`]s the CLI prints). Details name what was wrong, never a secret.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use felhom_core::spec::FieldError;
use serde::Serialize;
use utoipa::ToSchema;

/// One field at fault and the rule it broke.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldRule {
    pub field: String,
    pub rule: String,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` for plain HTTP statuses).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub errors: Vec<FieldRule>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: if kind.is_empty() {
                "about:blank".into()
            } else {
                format!("https://felhom.invalid/problems/{kind}")
            },
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn fields(mut self, errors: Vec<FieldError>) -> Problem {
        self.errors = errors
            .into_iter()
            .map(|e| FieldRule {
                field: e.field,
                rule: e.rule,
            })
            .collect();
        self
    }

    pub fn invalid(detail: &str, errors: Vec<FieldError>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-spec", detail).fields(errors)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (Authorization: Bearer <token>)",
        )
        .fields(vec![FieldError {
            field: "Authorization".into(),
            rule: "must be `Bearer <the agent's API token>`".into(),
        }])
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            detail.to_string(),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(&self)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
