//! Segment log store.
