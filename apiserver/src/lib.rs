//! Lotse's Kubernetes API server: the Kubernetes REST API over an embedded SQLite store or etcd.
#![forbid(unsafe_code)]

pub mod registry;
pub mod storage;
