//! The watch caches (kube-apiserver's cacher): [`hub`] feeds every resource's cache from one
//! storage watch; [`cacher`] is one resource's cache of current objects and ring of recent
//! events, serving lists and watch starts; [`object`] is an object and an event as cached
//! (bytes served as they are); the endpoints read through [`reader::CacheReader`]. The
//! per-watcher side (filters, bookmarks, catching up) is `endpoints/watch.rs`.

pub mod cacher;
pub mod hub;
pub mod object;
pub mod reader;
