//! Pure helpers shared by Lotse's components (apiserver, scheduler, kubelet, controllers, node
//! agent): one copy of each Kubernetes rule that more than one component needs. No I/O, no
//! async, no component types.

pub mod names;
pub mod qos;
pub mod quantity;
pub mod selectors;

pub use quantity::{Quantity, QuantityError};
