//! felhom's domain: validated guest specs, the identity-reset table, the golden base, and
//! the journaled job engine that brings customer guests up (and tears them down) on Proxmox
//! VE with a restricted API token.
//!
//! It talks to PVE only through [`pve_api::PveClient`]; everything PVE-shaped but policy-free
//! lives there, everything felhom decides lives here.

pub mod adversarial;
pub mod apply;
pub mod bringup;
pub mod cluster;
pub mod config;
pub mod golden;
pub mod golden_build;
pub mod guest;
pub mod identity;
pub mod job;
pub mod journal;
pub mod marker;
pub mod metrics;
pub mod ops;
pub mod preflight;
pub mod privileges;
pub mod publish;
pub mod secrets;
pub mod spec;
pub mod ssh_probe;
pub mod status;
pub mod teardown;
