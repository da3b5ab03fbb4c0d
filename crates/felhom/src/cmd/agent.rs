//! `felhom agent`: run the long-running service (see `crate::agent`). Exit 0 after SIGTERM;
//! 2 when a setting is wrong or the address cannot be served (nothing started).

use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::Ctx;
use crate::agent::settings::Settings;
use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event (job id, guest identity and VMID as fields).
    Json,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve the API on this host:port instead of the config's agent.listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// Logs for the agent: info and up (RUST_LOG overrides), text or JSON, on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

pub async fn run(args: AgentArgs, ctx: &Ctx) -> Result<(), CliError> {
    let config = super::load_config(ctx)?;
    let settings = Settings::from_config(&config, args.listen.as_deref())
        .map_err(|e| CliError::invalid("invalid agent configuration", e))?;
    let felhom = super::open(ctx)?;
    let path = ctx.config.clone();
    let listen = args.listen.clone();
    let reload = move || {
        let config =
            felhom_core::config::Config::load(path.as_deref()).map_err(|e| e.to_string())?;
        Settings::from_config(&config, listen.as_deref()).map_err(|errs| {
            errs.iter()
                .map(|e| format!("{}: {}", e.field, e.rule))
                .collect::<Vec<_>>()
                .join("; ")
        })
    };
    crate::agent::run(Arc::clone(&felhom), settings, reload)
        .await
        .map_err(|e| match e {
            crate::agent::StartError::Invalid(what, fields) => CliError::invalid(what, fields),
        })
}
