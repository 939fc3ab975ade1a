//! End-to-end tests: the real `remora` binary against real servers on 127.0.0.1.

mod sources;
mod support;

mod access_log;
mod admin;
mod bad_input;
mod cli;
mod compat;
mod cors;
mod fault_filter;
mod faults;
mod filters;
mod h2_flood;
mod hcm;
mod health_check;
mod istio_metrics;
mod load_balancing;
mod local_ratelimit;
mod logs;
mod mirror;
mod prometheus_rules;
mod protocols;
mod rbac;
mod resilience;
mod retries;
mod routing;
mod stats_sinks;
mod tcp;
mod tls;
mod tracing;
mod upstream;
mod xds;
mod xds_nack;
