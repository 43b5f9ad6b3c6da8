//! Lotse's Kubernetes API server: the Kubernetes REST API over an embedded SQLite store or etcd.
#![forbid(unsafe_code)]

pub mod alloc;
pub mod auth;
pub mod authn;
pub mod bootstrap_rbac;
pub mod cacher;
pub mod components;
pub mod discovery;
pub mod error;
pub mod fuzzing;
pub mod handlers;
pub mod impersonation;
pub mod list;
pub mod managed;
pub mod metrics;
pub mod openapi;
pub mod openapi_v2;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod schema_strategy;
pub mod request;
pub mod reviews;
pub mod selectors;
pub mod server;
pub mod storage;
pub mod strategic;
pub mod subresources;
pub mod table;
pub mod tokenrequest;
pub mod tls;
pub mod validation;
pub mod watch;
