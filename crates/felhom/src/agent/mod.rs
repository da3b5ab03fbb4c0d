//! `felhom agent`'s HTTP periphery (this file is a stand-in: the agent's own `mod.rs`, from
//! the agent branch, replaces it and keeps these two modules).
//!
//! | module | what |
//! |---|---|
//! | `metrics` | `GET /metrics`: felhom_core::metrics in the Prometheus text format |
//! | `page` | `GET /`: the status page (`status.html`, one static file) |

pub mod metrics;
pub mod page;
