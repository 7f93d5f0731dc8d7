//! `throttlePolicy.maxReceivesPerSecond`: attempts to one subscription are spaced at least
//! `1 / rate` seconds apart, in the order they ask for a slot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Above this many subscriptions tracked, the ones whose slots are all in the past are dropped.
const TRACKED_MAX: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// The first free slot of each subscription.
    next_free: HashMap<String, Instant>,
}

impl Pacer {
    /// Reserves the next slot for `subscription` at `rate` per second; returns when it starts
    /// (`now` when the subscription is idle).
    pub(crate) fn reserve(&mut self, subscription: &str, rate: u32, now: Instant) -> Instant {
        if self.next_free.len() > TRACKED_MAX {
            self.next_free.retain(|_, free| *free > now);
        }
        let spacing = Duration::from_secs(1) / rate.max(1);
        let free = self
            .next_free
            .entry(subscription.to_string())
            .or_insert(now);
        let slot = (*free).max(now);
        *free = slot + spacing;
        slot
    }
}
