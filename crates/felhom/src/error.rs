//! How a command ends when it does not simply succeed: one error type, carrying the exit code.
//!
//! Every command returns `Result<(), CliError>`, and `main` turns the result into the
//! process's exit code and, when the command has not already said why, the message: so the
//! exit codes live here once instead of in every command.
//!
//! | exit | [`Exit`]        | meaning                                                          |
//! |------|-----------------|------------------------------------------------------------------|
//! | 0    | `Ok`            | done                                                             |
//! | 1    | `Failed`        | failed, and rolled back (or nothing to roll back); drift; not ready |
//! | 2    | `BadInput`      | bad input or config, refused before anything was written         |
//! | 3    | `NeedsPerson`   | failed and rollback incomplete, or paused: a person must look    |
//!
//! Three shapes of error:
//! - [`CliError::Invalid`]: field errors (spec, config, VMID, recipe parameters), rendered as a
//!   list on stderr, or as `{"error", "fields"}` on stdout with `--output json`;
//! - [`CliError::Message`]: one message, `error: …` on stderr or `{"error"}` on stdout;
//! - [`CliError::Reported`]: the command has printed its result already (job reports that
//!   failed, drift, a golden with errors) and only the exit code is left to give.

use felhom_core::journal::JournalError;
use felhom_core::ops::OpsError;
use felhom_core::spec::FieldError;

use crate::output::{errln, OutputFormat};

/// The exit codes, in order of urgency (a batch exits with its most urgent job's code; bad
/// input never mixes with job outcomes, since it stops a command before any job runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    BadInput = 2,
    NeedsPerson = 3,
}

impl Exit {
    /// The `Exit` for a code felhom-core reports (`Outcome::exit_code`, `Report::exit_code`);
    /// an unknown non-zero code counts as a failure.
    pub fn from_code(code: i32) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::BadInput,
            3 => Exit::NeedsPerson,
            _ => Exit::Failed,
        }
    }

    /// `Ok(())` for [`Exit::Ok`], else the result already printed ends with this code.
    pub fn into_result(self) -> Result<(), CliError> {
        match self {
            Exit::Ok => Ok(()),
            other => Err(CliError::Reported(other)),
        }
    }
}

/// What ends a command other than success. See the module docs.
#[derive(Debug)]
pub enum CliError {
    /// Bad input or config, every field error at once; nothing was written.
    Invalid {
        what: String,
        fields: Vec<FieldError>,
        /// What was *not* done, said after `what` (human output only).
        untouched: &'static str,
    },
    /// One message and its exit code.
    Message { exit: Exit, message: String },
    /// The command printed its result already; this is its exit code.
    Reported(Exit),
}

/// Said of a refused PVE command.
pub const NOTHING_WRITTEN: &str = "nothing was written to PVE";

impl CliError {
    /// Field errors of a PVE command: exit 2, nothing written.
    pub fn invalid(what: impl Into<String>, fields: Vec<FieldError>) -> CliError {
        CliError::Invalid {
            what: what.into(),
            fields,
            untouched: NOTHING_WRITTEN,
        }
    }

    /// One field error of a PVE command: exit 2, nothing written.
    pub fn invalid_field(
        what: impl Into<String>,
        field: impl Into<String>,
        rule: impl ToString,
    ) -> CliError {
        CliError::invalid(
            what,
            vec![FieldError {
                field: field.into(),
                rule: rule.to_string(),
            }],
        )
    }

    /// Bad input told in one message (an argument out of range, a file that cannot be used).
    pub fn bad_input(message: impl std::fmt::Display) -> CliError {
        CliError::Message {
            exit: Exit::BadInput,
            message: message.to_string(),
        }
    }

    /// A failure told in one message.
    pub fn failed(message: impl std::fmt::Display) -> CliError {
        CliError::Message {
            exit: Exit::Failed,
            message: message.to_string(),
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            CliError::Invalid { .. } => Exit::BadInput,
            CliError::Message { exit, .. } => *exit,
            CliError::Reported(exit) => *exit,
        }
    }

    /// Say why, unless the command already did: on stderr, or as the one JSON document on
    /// stdout with `--output json`.
    pub fn render(&self, format: OutputFormat) {
        match (self, format) {
            (CliError::Reported(_), _) => {}
            (CliError::Invalid { what, fields, .. }, OutputFormat::Json) => {
                crate::output::json_line(&serde_json::json!({ "error": what, "fields": fields }))
            }
            (
                CliError::Invalid {
                    what,
                    fields,
                    untouched,
                },
                OutputFormat::Human,
            ) => {
                errln!("error: {what}; {untouched}:");
                for f in fields {
                    errln!("  - {f}");
                }
            }
            (CliError::Message { message, .. }, OutputFormat::Json) => {
                crate::output::json_line(&serde_json::json!({ "error": message }))
            }
            (CliError::Message { message, .. }, OutputFormat::Human) => {
                errln!("error: {message}")
            }
        }
    }
}

/// An unexpected error in the middle of the work: a failure (exit 1). Argument and input
/// errors are made with [`CliError::bad_input`] or [`CliError::invalid`] instead.
impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        CliError::failed(format!("{e:#}"))
    }
}

/// felhom-core's refusals are bad input (exit 2: it refused before writing); a journal or API
/// failure is a failure (exit 1).
impl From<OpsError> for CliError {
    fn from(e: OpsError) -> CliError {
        let refused = matches!(
            &e,
            OpsError::Invalid(_)
                | OpsError::Api(pve_api::ApiError::Certificate { .. })
                | OpsError::Journal(
                    JournalError::Held { .. }
                        | JournalError::JobBusy { .. }
                        | JournalError::NoSuchJob(_)
                )
        );
        if refused {
            CliError::bad_input(e)
        } else {
            CliError::failed(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_numbers() {
        assert_eq!(Exit::Ok as i32, 0);
        assert_eq!(Exit::Failed as i32, 1);
        assert_eq!(Exit::BadInput as i32, 2);
        assert_eq!(Exit::NeedsPerson as i32, 3);
        for code in 0..=3 {
            assert_eq!(Exit::from_code(code) as i32, code);
        }
        assert_eq!(Exit::from_code(7), Exit::Failed);
    }

    #[test]
    fn refusals_are_bad_input_and_breakage_is_failure() {
        let e: CliError = OpsError::Invalid("outside the range".into()).into();
        assert_eq!(e.exit(), Exit::BadInput);
        let e: CliError = OpsError::Journal(JournalError::NoSuchJob("j".into())).into();
        assert_eq!(e.exit(), Exit::BadInput);
        let e: CliError = OpsError::Journal(JournalError::Open {
            path: "/x".into(),
            message: "gone".into(),
        })
        .into();
        assert_eq!(e.exit(), Exit::Failed);
        let e: CliError = anyhow::anyhow!("boom").into();
        assert_eq!(e.exit(), Exit::Failed);
        assert_eq!(CliError::invalid("x", vec![]).exit(), Exit::BadInput);
        assert!(Exit::Ok.into_result().is_ok());
        assert_eq!(
            Exit::NeedsPerson.into_result().unwrap_err().exit(),
            Exit::NeedsPerson
        );
    }
}
