//! FIFO ReceiveRequestAttemptId: a ReceiveMessage retried with the same attempt id within 5
//! minutes gets the same messages and receipt handles back, and their visibility timeout starts
//! over, as long as none of them was modified since (deleted, purged, its visibility changed or
//! run out). Otherwise the retry is an ordinary receive. Kept in memory: a restart ends every
//! lease anyway, so no remembered answer could be replayed after one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bridge::sqs::Message;
use parking_lot::Mutex;

use crate::engine::{DeliveryId, Queue};

/// How long an attempt id can be replayed (AWS: 5 minutes).
const ATTEMPT_WINDOW_MS: u64 = 5 * 60 * 1000;

/// (vhost, engine queue id, attempt id).
type Key = (String, u64, String);

#[derive(Debug)]
struct Attempt {
    at_ms: u64,
    /// Each message with its delivery id and the deadline its lease had when answered: a
    /// different deadline means ChangeMessageVisibility touched it.
    messages: Vec<(DeliveryId, Instant, Message)>,
}

#[derive(Debug, Default)]
pub struct ReceiveAttempts {
    answers: Mutex<HashMap<Key, Attempt>>,
}

impl ReceiveAttempts {
    /// The answer remembered for `key`, when it can be replayed: every message still under the
    /// lease it was answered with. Their leases restart at `now + visibility`.
    pub fn replay(
        &self,
        key: &Key,
        queue: &Queue,
        visibility: Duration,
        now_ms: u64,
    ) -> Option<Vec<Message>> {
        let mut answers = self.answers.lock();
        let attempt = answers.get_mut(key)?;
        let unmodified = now_ms.saturating_sub(attempt.at_ms) < ATTEMPT_WINDOW_MS
            && attempt
                .messages
                .iter()
                .all(|(id, at, _)| queue.receipt_deadline(*id) == Some(*at));
        if !unmodified {
            answers.remove(key);
            return None;
        }
        for (id, at, _) in &mut attempt.messages {
            queue.change_visibility(*id, visibility);
            if let Some(new) = queue.receipt_deadline(*id) {
                *at = new;
            }
        }
        Some(attempt.messages.iter().map(|(_, _, m)| m.clone()).collect())
    }

    /// Remembers a receive's answer under its attempt id (an empty answer is not remembered:
    /// its retry is a new receive either way). Forgets attempts older than the window.
    pub fn record(&self, key: Key, queue: &Queue, answer: &[(DeliveryId, Message)], now_ms: u64) {
        let mut answers = self.answers.lock();
        answers.retain(|_, a| now_ms.saturating_sub(a.at_ms) < ATTEMPT_WINDOW_MS);
        if answer.is_empty() {
            answers.remove(&key);
            return;
        }
        // A message whose lease is already over (VisibilityTimeout 0) cannot be replayed, nor
        // can the answer it belongs to.
        let messages: Option<Vec<_>> = answer
            .iter()
            .map(|(id, m)| Some((*id, queue.receipt_deadline(*id)?, m.clone())))
            .collect();
        match messages {
            Some(messages) => {
                answers.insert(
                    key,
                    Attempt {
                        at_ms: now_ms,
                        messages,
                    },
                );
            }
            None => {
                answers.remove(&key);
            }
        }
    }
}
