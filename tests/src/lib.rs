//! Test harness: starts a real wharf process on ephemeral ports.
