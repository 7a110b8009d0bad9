//! End-to-end tests: real `meridian` processes, a real PostgreSQL, loopback only.
//!
//! `support` is the harness (processes, ports, readiness probes); each other
//! module is one area of behaviour.

mod support;

mod api;
mod app_auth;
mod apps;
mod audit;
mod bench_quick;
mod certificates;
mod connection_log;
mod container;
mod coordinator_outages;
mod dashboard;
mod demo;
mod deploy_configs;
mod drill;
mod embedded;
mod failover;
mod faults;
mod fixtures;
mod kubernetes;
mod limits;
mod login_abuse;
mod oidc;
mod postgres;
mod proxy_lifecycle;
mod proxy_tls;
mod regions_ping;
mod shell;
mod soak;
mod suspension;
mod tokens;
mod trust;
mod trust_cookies;
mod trust_cors;
mod upgrade;
mod workspaces;
