//! The Wharf broker.
