//! Lotse controllers (skeleton; see its issue).
