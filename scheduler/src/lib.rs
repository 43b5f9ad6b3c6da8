//! Lotse scheduler (skeleton; see its issue).
