//! Shared helpers for Lotse end-to-end tests: start real processes, run real kubectl.
