//! Lotse CNI plugin (skeleton; see the networking issue).
