//! The channel that carries [`Outbound`](super::Outbound) events from the engine to a session:
//! unbounded, many senders (every queue the session consumes from), one receiver.
//!
//! Not tokio's unbounded mpsc, nor flume or async-channel: tokio's and async-channel's allocate
//! a block of 31-32 slots when the channel is created or first used (2.3 KB of 72-byte events,
//! plus ~0.5 KB of cache-padded channel state), and flume allocates a hook per pending receive.
//! A session of an idle MQTT subscriber, the common case in an IoT fleet, would hold that for
//! days. Here the events sit in a `VecDeque` behind a mutex: nothing is allocated until the
//! first event, the queue grows with what is waiting, and it is given back once drained after a
//! burst. The lock is held for a push or a pop, never across anything else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// Queue capacity kept after a drain; a bigger one is given back when it empties.
const KEEP_CAPACITY: usize = 16;

/// A new channel.
pub fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            receiver_gone: false,
        }),
        senders: AtomicUsize::new(1),
    });
    (
        MailboxSender {
            shared: shared.clone(),
        },
        Mailbox { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Live senders: the receiver sees the end of the channel when the last one is dropped.
    senders: AtomicUsize,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver's task while it waits for an event; taken by the send that wakes it.
    waker: Option<Waker>,
    receiver_gone: bool,
}

/// The sending side; cheap to clone (one per consumer of the session).
pub struct MailboxSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving side, owned by the session.
pub struct Mailbox<T> {
    shared: Arc<Shared<T>>,
}

/// Why [`Mailbox::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing waiting now.
    Empty,
    /// Nothing waiting, and every sender is gone.
    Disconnected,
}

impl<T> MailboxSender<T> {
    /// Queues `value` for the receiver; gives it back when the receiver is gone.
    ///
    /// # Errors
    /// `value` itself when the receiver was dropped.
    pub fn send(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut st = self.shared.state.lock();
            if st.receiver_gone {
                return Err(value);
            }
            st.queue.push_back(value);
            st.waker.take()
        };
        // Woken outside the lock: the receiver's first act is to take it.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver was dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().receiver_gone
    }
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        MailboxSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for MailboxSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a waiting receiver must see the end.
            let waker = self.shared.state.lock().waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> Mailbox<T> {
    /// The next event if there is one now.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing waits, [`TryRecvError::Disconnected`] when nothing
    /// waits and no sender is left.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut st = self.shared.state.lock();
        match st.queue.pop_front() {
            Some(v) => Ok(v),
            None => {
                if st.queue.capacity() > KEEP_CAPACITY {
                    st.queue = VecDeque::new();
                }
                Err(self.empty_reason())
            }
        }
    }

    /// The next event, or `None` once the queue is empty and every sender is gone; otherwise
    /// the task of `cx` is woken by the next send.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.shared.state.lock();
        if let Some(v) = st.queue.pop_front() {
            return Poll::Ready(Some(v));
        }
        if st.queue.capacity() > KEEP_CAPACITY {
            st.queue = VecDeque::new();
        }
        // Looked at under the lock the last sender's drop takes before it wakes.
        if self.empty_reason() == TryRecvError::Disconnected {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Before the receiver's session parks (net/park.rs): makes `waker` the one the next send
    /// wakes, if nothing waits and a sender is left. Returns false, registering nothing, when
    /// an event waits or the channel ended (the session has something to do: it must not park).
    pub fn park_waker(&mut self, waker: &Waker) -> bool {
        let mut st = self.shared.state.lock();
        if !st.queue.is_empty() || self.empty_reason() == TryRecvError::Disconnected {
            return false;
        }
        st.waker = Some(waker.clone());
        true
    }

    /// The next event; `None` once the queue is empty and every sender is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe: an event is taken from the queue only when this resolves.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn empty_reason(&self) -> TryRecvError {
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            TryRecvError::Disconnected
        } else {
            TryRecvError::Empty
        }
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        let queued = {
            let mut st = self.shared.state.lock();
            st.receiver_gone = true;
            st.waker = None;
            std::mem::take(&mut st.queue)
        };
        // Dropped outside the lock: an event may hold the last reference to a queue.
        drop(queued);
    }
}

impl<T> std::fmt::Debug for MailboxSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxSender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_arrive_in_order_and_nothing_is_allocated_before_the_first() {
        let (tx, mut rx) = mailbox::<u32>();
        assert_eq!(rx.shared.state.lock().queue.capacity(), 0);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        for i in 0..100 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        // Drained after a burst: the queue's memory is given back.
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(rx.shared.state.lock().queue.capacity(), 0);
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = mailbox::<u32>();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(7), Err(7));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = mailbox::<u32>();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(1).unwrap();
            tx
        });
        assert_eq!(rx.recv().await, Some(1));
        // Every sender gone: the end of the channel.
        drop(sender.await.unwrap());
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn many_senders_on_other_threads_lose_nothing() {
        let (tx, mut rx) = mailbox::<(u32, u32)>();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        tx.send((t, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 4];
        while let Some((t, i)) = rx.recv().await {
            // Each sender's events stay in its order.
            assert_eq!(i, next[t as usize]);
            next[t as usize] += 1;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(next, [10_000; 4]);
    }
}
