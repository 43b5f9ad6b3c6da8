//! Lotse's Kubernetes API server: the Kubernetes REST API over an embedded SQLite store or etcd.
#![forbid(unsafe_code)]

pub mod auth;
pub mod openapi;
pub mod pki;
pub mod registry;
pub mod tls;
pub mod storage;
