//! The controllers' event recorder: `core/v1` Events through client-go's `EventCorrelator`
//! (aggregation, deduplication, spam filter), from `client-tools`, one per process.
pub use client_tools::record::{EventType, Recorder};

/// The recorder every controller of this process shares (each names its own component).
pub fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(
        client,
        client_tools::record::Sink::CoreV1Correlated,
        client_tools::record::Reporter::default(),
    )
}
