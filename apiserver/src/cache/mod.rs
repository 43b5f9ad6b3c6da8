//! The watch caches: one storage watch feeds a per-resource cache of current objects and a
//! ring of recent events (`cacher`), read through [`reader::CacheReader`].

pub mod cacher;
pub mod reader;
