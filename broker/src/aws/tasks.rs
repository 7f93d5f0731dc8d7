//! SQS message move tasks (StartMessageMoveTask / ListMessageMoveTasks / CancelMessageMoveTask):
//! a background task that moves the messages of a dead-letter queue back to their source
//! queues (from the `x-death` history the redrive wrote) or to a chosen destination.
//!
//! It takes messages with ordinary deadline leases and deletes each only after its copy is
//! durable in the destination, so a crash in between duplicates a message (at-least-once, as
//! SQS) but never loses one. Tasks live in memory: a restart ends them (the unmoved messages
//! stay in the dead-letter queue).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bridge::sqs::MessageMoveTask;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Enqueued, Queue, Value, Vhost};

/// How long a message being moved stays invisible: the move itself takes milliseconds.
const MOVE_VISIBILITY: Duration = Duration::from_secs(30);

/// One task, shared between its runner and the API.
#[derive(Debug)]
pub struct MoveTask {
    pub handle: String,
    pub source_arn: String,
    pub destination_arn: Option<String>,
    pub rate_per_sec: Option<i64>,
    pub to_move: i64,
    pub started_ms: i64,
    pub moved: AtomicI64,
    status: Mutex<(&'static str, Option<String>)>,
    cancel: CancellationToken,
}

impl MoveTask {
    pub fn new(
        handle: String,
        source_arn: String,
        destination_arn: Option<String>,
        rate_per_sec: Option<i64>,
        to_move: i64,
        started_ms: i64,
    ) -> Arc<Self> {
        Arc::new(MoveTask {
            handle,
            source_arn,
            destination_arn,
            rate_per_sec,
            to_move,
            started_ms,
            moved: AtomicI64::new(0),
            status: Mutex::new(("RUNNING", None)),
            cancel: CancellationToken::new(),
        })
    }

    pub fn running(&self) -> bool {
        matches!(self.status.lock().0, "RUNNING" | "CANCELLING")
    }

    /// Asks the runner to stop; returns the messages moved so far.
    pub fn cancel(&self) -> i64 {
        {
            let mut st = self.status.lock();
            if st.0 == "RUNNING" {
                st.0 = "CANCELLING";
            }
        }
        self.cancel.cancel();
        self.moved.load(Ordering::Relaxed)
    }

    fn finish(&self, status: &'static str, reason: Option<String>) {
        *self.status.lock() = (status, reason);
    }

    pub fn report(&self) -> MessageMoveTask {
        let (status, reason) = self.status.lock().clone();
        MessageMoveTask {
            task_handle: (status == "RUNNING").then(|| self.handle.clone()),
            status: status.to_string(),
            source_arn: self.source_arn.clone(),
            destination_arn: self.destination_arn.clone(),
            max_number_of_messages_per_second: self.rate_per_sec,
            approximate_number_of_messages_moved: self.moved.load(Ordering::Relaxed),
            approximate_number_of_messages_to_move: self.to_move,
            failure_reason: reason,
            started_timestamp: self.started_ms,
        }
    }
}

/// The queue a dead-lettered message came from: the newest x-death entry's queue.
fn origin_queue(msg: &crate::engine::Message) -> Option<String> {
    let headers = msg.properties.headers.as_ref()?;
    if let Some(Value::Array(deaths)) = headers.get("x-death") {
        if let Some(Value::Table(t)) = deaths.first() {
            if let Some(q) = t.get("queue").and_then(Value::as_str) {
                return Some(q.to_string());
            }
        }
    }
    headers
        .get("x-first-death-queue")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Runs a task until the source is drained of what it held at the start, or it is cancelled,
/// or a destination is missing (FAILED, with the message left in the source).
pub async fn run(
    task: Arc<MoveTask>,
    engine: Arc<Engine>,
    vhost: Arc<Vhost>,
    source: Arc<Queue>,
    destination: Option<String>,
) {
    let pause = task
        .rate_per_sec
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    loop {
        if task.cancel.is_cancelled() {
            return task.finish("CANCELLED", None);
        }
        let left = task.to_move - task.moved.load(Ordering::Relaxed);
        if left <= 0 {
            return task.finish("COMPLETED", None);
        }
        let batch = source.receive(left.min(10) as usize, MOVE_VISIBILITY, None, false);
        if batch.is_empty() {
            return task.finish("COMPLETED", None);
        }
        let mut batch = batch.into_iter();
        while let Some(r) = batch.next() {
            let msg = &r.delivery.message;
            let target = destination.clone().or_else(|| origin_queue(msg));
            let dest = target.as_deref().and_then(|name| vhost.queue(name, 0).ok());
            let Some(dest) = dest else {
                source.change_visibility(r.delivery.id, Duration::ZERO);
                return task.finish(
                    "FAILED",
                    Some(format!(
                        "Destination queue {} does not exist.",
                        target.unwrap_or_default()
                    )),
                );
            };
            let mut copy = (**msg).clone();
            copy.exchange = String::new();
            copy.routing_key = dest.name.clone();
            if let Enqueued::Accepted { lsn } = dest.publish(&Arc::new(copy), &mut None) {
                engine.wait_durable(lsn).await;
                source.delete_received(r.delivery.id);
                task.moved.fetch_add(1, Ordering::Relaxed);
            } else {
                source.change_visibility(r.delivery.id, Duration::ZERO);
                return task.finish(
                    "FAILED",
                    Some("Destination queue refused the message.".into()),
                );
            }
            if let Some(p) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(p) => {}
                    _ = task.cancel.cancelled() => {}
                }
            }
            if task.cancel.is_cancelled() {
                // Messages of this batch not moved yet become visible again at once.
                for rest in batch.by_ref() {
                    source.change_visibility(rest.delivery.id, Duration::ZERO);
                }
                break;
            }
        }
        if task.cancel.is_cancelled() {
            return task.finish("CANCELLED", None);
        }
    }
}
