//! Lotse's Kubernetes API server: the Kubernetes REST API over an embedded SQLite store or etcd.
#![deny(unsafe_code)] // one allowed exception: `memory::trim` calls glibc's malloc_trim

pub mod admission;
pub mod alloc;
pub mod auth;
pub mod authn;
pub mod authorization;
pub mod cache;
pub mod crd;
pub mod endpoints;
pub mod error;
pub mod flowcontrol;
pub mod fuzzing;
pub mod loops;
pub mod memory;
pub mod metrics;
pub mod metrics_api;
pub mod pki;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod schema_strategy;
pub mod server;
pub mod state;
pub mod storage;
pub mod tls;
pub mod validation;
pub mod write;
