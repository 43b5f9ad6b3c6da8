//! Lotse kubelet (skeleton; see its issue).
