//! The pod worker: one task per pod bound to this node drives it through its lifecycle against
//! the CRI and reports its status, level-triggered (every pass re-reads the runtime's state, so
//! a restarted kubelet adopts what is running).
//!
//! Lifecycle per pass ([`sync`]): volumes → `Sandbox` (RunPodSandbox, [`sandbox`]) →
//! `InitContainers` (one at a time, in order) → `Containers` (start and postStart hook, restart
//! with back-off per restartPolicy, probes: startup first, then readiness and liveness;
//! [`container`]) → ephemeral containers → status ([`status`]); a pod with a deletionTimestamp
//! goes `Terminating` (preStop hooks, StopContainer with what is left of the grace period,
//! StopPodSandbox, RemovePodSandbox, volumes removed; [`sandbox::terminate`]) and is then
//! deleted with grace 0 ([`worker`]).
mod container;
mod sandbox;
mod status;
mod sync;
mod worker;

pub use container::container_config;
pub use sandbox::{runtime_pod_uids, sandbox_config, terminate};
pub use worker::worker;

/// The CRI label naming a sandbox's or container's pod UID.
const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// The CRI label naming a sandbox's pod.
const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// The CRI label naming a sandbox's pod namespace.
const LABEL_POD_NS: &str = "io.kubernetes.pod.namespace";
/// The CRI label naming a container's name in the pod spec.
const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
