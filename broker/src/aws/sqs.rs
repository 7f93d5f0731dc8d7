//! The SQS backend on the engine: an SQS queue is a durable engine queue in the vhost of its
//! account and region (docs/mapping/sqs.md).
//!
//! - SendMessage publishes a persistent message straight into the queue (as the default
//!   exchange would route it), delayed when asked, and answers once it is durable.
//! - ReceiveMessage takes deadline leases ([`Queue::receive`]); a long poll waits on the
//!   queue's arrival notification, so it returns as soon as a message is ready.
//! - Receipt handles name (process boot, queue id, delivery id): a handle from before a restart
//!   or of an earlier receive of the same message deletes nothing, as AWS's stale handles;
//!   except the handles of a ReceiveRequestAttemptId answer whose leases were restored at
//!   startup (`receive_attempts`), which name those leases.
//! - Retention is a per-message TTL (AMQP `expiration`), the redrive policy is applied on
//!   receive ([`Redrive`]): both can change after creation, which x-arguments cannot.
//! - FIFO queues (`.fifo`): the message group travels in the `x-message-group-id` header and
//!   FIFO receives hold a group while one of its messages is in flight (engine); sends are
//!   deduplicated here for 5 minutes by MessageDeduplicationId or the body's SHA-256
//!   (ContentBasedDeduplication), per queue or per group (DeduplicationScope). The
//!   deduplication window is journaled beside the metadata (`dedup`): it survives a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use base64::Engine as _;
use bridge::sqs::*;
use bridge::AwsError;
use bytes::Bytes;

use super::dedup::DedupStore;
use super::mapping;
use super::meta::{MetaStore, QueueMeta};
use super::receive_attempts::ReceiveAttempts;
use super::tasks::{self, MoveTask};
use crate::engine::{
    DeliveryId, Engine, Enqueued, Lsn, Message, Queue, QueueSettings, Redrive, Table, Value, Vhost,
    GROUP_ID_HEADER, VISIBLE_AT_HEADER,
};

/// Connection id SQS requests use for engine calls: no SQS request owns an exclusive queue.
const SQS_CONN: u64 = 0;
/// AWS allows one PurgeQueue per queue per 60 seconds.
const PURGE_INTERVAL_MS: u64 = 60_000;
/// After DeleteQueue, AWS refuses a queue of the same name for 60 seconds.
const RECREATE_INTERVAL_MS: u64 = 60_000;
/// The total size of a SendMessageBatch's messages: AWS's ceiling for one message (1 MiB),
/// whatever the queue's MaximumMessageSize.
const BATCH_BYTES_MAX: usize = 1_048_576;
/// ListQueues returns at most 1000 URLs.
const LIST_MAX: usize = 1000;
/// Header carrying a FIFO message's deduplication id.
pub const DEDUP_ID_HEADER: &str = "x-message-deduplication-id";
/// Header carrying a FIFO message's sequence number.
pub const SEQUENCE_HEADER: &str = "x-sqs-sequence-number";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn no_queue() -> AwsError {
    AwsError::queue_does_not_exist("The specified queue does not exist.")
}

fn internal(e: impl std::fmt::Display) -> AwsError {
    AwsError::internal(format!(
        "We encountered an internal error. Please try again. ({e})"
    ))
}

/// The engine backend of the SQS bridge.
#[derive(Debug)]
pub struct SqsEngine {
    engine: Arc<Engine>,
    meta: MetaStore,
    /// Distinguishes receipt handles of this process from those of an earlier one (delivery
    /// ids restart at 1).
    boot: u64,
    /// The FIFO deduplication window, journaled (see `dedup`).
    dedup: DedupStore,
    /// FIFO sequence numbers: increasing across the process, seeded by the clock so they keep
    /// increasing across restarts.
    sequence: AtomicU64,
    /// Message move tasks of this process, oldest first.
    move_tasks: Mutex<Vec<Arc<MoveTask>>>,
    /// FIFO ReceiveRequestAttemptId answers, journaled (see `receive_attempts`).
    attempts: ReceiveAttempts,
    /// Receipt handles of an earlier process that name a lease restored at startup (the
    /// messages of a replayable receive attempt): (boot, queue id, delivery id) -> the
    /// delivery id of that lease now.
    restored_receipts: Mutex<HashMap<(u64, u64, u64), DeliveryId>>,
}

/// A queue found from a request's QueueUrl.
struct Found {
    vhost: Arc<Vhost>,
    queue: Arc<Queue>,
    meta: QueueMeta,
    config: QueueConfig,
}

impl SqsEngine {
    pub fn open(engine: Arc<Engine>, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let meta = MetaStore::open(data_dir)?;
        // FIFO group holding applies to AMQP and STOMP consumers too, who may attach before
        // any SQS request names the queue after a restart.
        for (vhost, name, m) in meta.all() {
            if let Some(q) = engine
                .vhost(&vhost)
                .and_then(|v| v.queue(&name, SQS_CONN).ok())
                .filter(|q| q.id == m.queue_id)
            {
                q.set_hold_groups(m.config().fifo);
            }
        }
        let now = now_ms();
        let (attempts, restorable) = ReceiveAttempts::open(data_dir, now)?;
        let mut restored = Vec::new();
        let mut restored_receipts = HashMap::new();
        for r in restorable {
            let Some(q) = engine
                .vhost(&r.key.0)
                .and_then(|v| v.queues().into_iter().find(|q| q.id == r.key.1))
            else {
                continue;
            };
            let leases: Vec<_> = r
                .messages
                .iter()
                .map(|(id, v, a, _)| (*id, *v, *a))
                .collect();
            let Some(ids) = q.restore_leases(&leases) else {
                continue;
            };
            for ((_, _, _, m), id) in r.messages.iter().zip(&ids) {
                if let Some((boot, qid, did)) = decode_receipt(&m.receipt_handle) {
                    restored_receipts.insert((boot, qid, did), *id);
                }
            }
            restored.push((r, q, ids));
        }
        if !restored.is_empty() {
            tracing::info!(
                answers = restored.len(),
                "SQS receive attempts restored with their leases"
            );
        }
        attempts.restored(restored, now)?;
        Ok(SqsEngine {
            engine,
            meta,
            boot: rand::random(),
            dedup: DedupStore::open(data_dir, now)?,
            sequence: AtomicU64::new(now * 1_000),
            move_tasks: Mutex::new(Vec::new()),
            attempts,
            restored_receipts: Mutex::new(restored_receipts),
        })
    }

    fn vhost_name(ctx: &RequestContext) -> String {
        super::vhost_name(&ctx.account_id, &ctx.region)
    }

    /// A queue's MessageRetentionPeriod in ms, which SNS copies carry as their TTL as
    /// SendMessage's do; `None` when the queue does not exist.
    pub fn retention_ms(&self, vhost: &str, queue: &str) -> Option<u64> {
        let q = self.engine.vhost(vhost)?.queue(queue, SQS_CONN).ok()?;
        let meta = self
            .meta
            .get(vhost, queue, q.id)
            .unwrap_or_else(|| Self::default_meta(&q));
        Some(u64::from(meta.config().retention_secs) * 1000)
    }

    /// Meta for a queue without stored settings (declared over AMQP, or re-created).
    fn default_meta(q: &Queue) -> QueueMeta {
        QueueMeta::new(q.id, &QueueConfig::default(), now_ms() / 1000)
    }

    fn find_by_name(&self, ctx: &RequestContext, name: &str) -> Result<Found, AwsError> {
        let vname = Self::vhost_name(ctx);
        let vhost = self.engine.vhost(&vname).ok_or_else(no_queue)?;
        let queue = vhost.queue(name, SQS_CONN).map_err(|_| no_queue())?;
        let meta = self
            .meta
            .get(&vname, name, queue.id)
            .unwrap_or_else(|| Self::default_meta(&queue));
        let config = meta.config();
        queue.set_hold_groups(config.fifo);
        Ok(Found {
            vhost,
            queue,
            meta,
            config,
        })
    }

    /// `http://host/<account>/<name>`: the account must be the caller's.
    fn find(&self, ctx: &RequestContext, url: &str) -> Result<Found, AwsError> {
        let path = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
        let mut segs = path.trim_matches('/').rsplit('/');
        let name = segs.next().unwrap_or("");
        let account = segs.next().unwrap_or("");
        if account != ctx.account_id || name.is_empty() {
            return Err(no_queue());
        }
        self.find_by_name(ctx, name)
    }

    fn save_meta(
        &self,
        ctx: &RequestContext,
        f: &Found,
        change: impl FnOnce(&mut QueueMeta),
    ) -> Result<(), AwsError> {
        let init = f.meta.clone();
        self.meta
            .update(&Self::vhost_name(ctx), &f.queue.name, || init, change)
            .map_err(internal)
    }

    fn receipt_handle(&self, q: &Queue, delivery_id: u64) -> String {
        let nonce: u32 = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{:016x}:{}:{}:{:08x}",
            self.boot, q.id, delivery_id, nonce
        ))
    }

    /// The delivery id of a receipt handle of queue `q`; `Ok(None)` for a well-formed handle
    /// from an earlier process (stale).
    fn parse_receipt(&self, q: &Queue, handle: &str) -> Result<Option<u64>, AwsError> {
        let invalid = || {
            AwsError::receipt_handle_is_invalid(format!(
                "The input receipt handle \"{handle}\" is not a valid receipt handle."
            ))
        };
        let (boot, qid, did) = decode_receipt(handle).ok_or_else(invalid)?;
        if qid != q.id {
            return Err(invalid());
        }
        if boot == self.boot {
            return Ok(Some(did));
        }
        Ok(self
            .restored_receipts
            .lock()
            .get(&(boot, qid, did))
            .copied())
    }

    async fn create_queue(
        &self,
        ctx: &RequestContext,
        i: CreateQueueInput,
    ) -> Result<SqsResponse, AwsError> {
        let fifo_asked = i
            .attributes
            .get("FifoQueue")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if i.queue_name.ends_with(".fifo") != fifo_asked {
            return Err(AwsError::invalid_parameter_value(
                "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end with .fifo suffix and be 1 to 80 in length. A queue with a .fifo name must have the FifoQueue attribute set to true.",
            ));
        }
        let mut config = QueueConfig::default();
        config.apply(&i.attributes, true)?;
        let vname = Self::vhost_name(ctx);
        self.check_redrive_target(ctx, &config)?;
        let url = ctx.queue_url(&i.queue_name);
        if let Ok(existing) = self.find_by_name(ctx, &i.queue_name) {
            // Same name: the same URL when every given attribute matches, else AWS's error.
            let have = existing.config.to_attributes();
            let want = config.to_attributes();
            for name in i.attributes.keys() {
                if have.get(name) != want.get(name) {
                    return Err(AwsError::queue_already_exists(format!(
                        "A queue already exists with the same name and a different value for attribute {name}"
                    )));
                }
            }
            return Ok(SqsResponse::CreateQueue(QueueUrlOutput { queue_url: url }));
        }
        if let Some(at) = self.meta.deleted_at(&vname, &i.queue_name) {
            if now_ms().saturating_sub(at) < RECREATE_INTERVAL_MS {
                return Err(AwsError::queue_deleted_recently(
                    "You must wait 60 seconds after deleting a queue before you can create another with the same name.",
                ));
            }
        }
        let vhost = self.engine.ensure_vhost(&vname).map_err(internal)?;
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Table::new(),
        };
        let (q, _, _) = vhost
            .declare_queue(&i.queue_name, settings, false, SQS_CONN)
            .map_err(|e| AwsError::invalid_parameter_value(e.to_string()))?;
        q.set_hold_groups(config.fifo);
        let mut meta = QueueMeta::new(q.id, &config, now_ms() / 1000);
        meta.tags = i.tags;
        self.meta
            .update(
                &vname,
                &i.queue_name,
                || meta.clone(),
                |m| *m = meta.clone(),
            )
            .map_err(internal)?;
        Ok(SqsResponse::CreateQueue(QueueUrlOutput { queue_url: url }))
    }

    /// A redrive policy must name an existing queue of the same account and region.
    fn check_redrive_target(
        &self,
        ctx: &RequestContext,
        config: &QueueConfig,
    ) -> Result<(), AwsError> {
        if let Some(r) = &config.redrive_policy {
            let name = r.dead_letter_target_arn.rsplit(':').next().unwrap_or("");
            if r.dead_letter_target_arn != ctx.queue_arn(name)
                || self.find_by_name(ctx, name).is_err()
            {
                return Err(AwsError::invalid_parameter_value(format!(
                    "Value {{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"{}\"}} for parameter RedrivePolicy is invalid. Reason: Dead-letter target does not exist.",
                    r.dead_letter_target_arn, r.max_receive_count
                )));
            }
        }
        Ok(())
    }

    fn list_queues(
        &self,
        ctx: &RequestContext,
        i: ListQueuesInput,
    ) -> Result<SqsResponse, AwsError> {
        let mut names: Vec<String> = self
            .engine
            .vhost(&Self::vhost_name(ctx))
            .map(|v| v.queues())
            .unwrap_or_default()
            .into_iter()
            .filter(|q| q.settings.exclusive_owner.is_none())
            .map(|q| q.name.clone())
            .filter(|n| {
                i.queue_name_prefix
                    .as_ref()
                    .is_none_or(|p| n.starts_with(p.as_str()))
            })
            .collect();
        names.sort();
        let after = match &i.next_token {
            Some(t) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| AwsError::invalid_parameter_value("Invalid NextToken value."))?,
            ),
            None => None,
        };
        let start = after.map_or(0, |a| names.partition_point(|n| n.as_str() <= a.as_str()));
        let limit = i.max_results.map_or(LIST_MAX, |m| m as usize);
        let page: Vec<String> = names[start..].iter().take(limit).cloned().collect();
        // Tokens only when MaxResults was given, as AWS does.
        let next_token = (i.max_results.is_some() && start + page.len() < names.len())
            .then(|| {
                page.last()
                    .map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n))
            })
            .flatten();
        Ok(SqsResponse::ListQueues(ListQueuesOutput {
            queue_urls: page.iter().map(|n| ctx.queue_url(n)).collect(),
            next_token,
        }))
    }

    fn get_attributes(
        &self,
        ctx: &RequestContext,
        i: GetQueueAttributesInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let mut all = f.config.to_attributes();
        let q = &f.queue;
        let mut put = |k: &str, v: String| {
            all.insert(k.to_string(), v);
        };
        put("ApproximateNumberOfMessages", q.message_count().to_string());
        put(
            "ApproximateNumberOfMessagesNotVisible",
            q.in_flight_count().to_string(),
        );
        put(
            "ApproximateNumberOfMessagesDelayed",
            q.delayed_count().to_string(),
        );
        put("CreatedTimestamp", f.meta.created_secs.to_string());
        put("LastModifiedTimestamp", f.meta.modified_secs.to_string());
        put("QueueArn", ctx.queue_arn(&q.name));
        let attributes = bridge::sqs::attributes::select_queue_attributes(all, &i.attribute_names)?;
        Ok(SqsResponse::GetQueueAttributes(AttributesOutput {
            attributes,
        }))
    }

    fn set_attributes(
        &self,
        ctx: &RequestContext,
        i: SetQueueAttributesInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let mut config = f.config.clone();
        config.apply(&i.attributes, false)?;
        self.check_redrive_target(ctx, &config)?;
        let attributes = config.to_attributes();
        self.save_meta(ctx, &f, |m| {
            m.attributes = attributes;
            m.modified_secs = now_ms() / 1000;
        })?;
        Ok(SqsResponse::SetQueueAttributes(Empty {}))
    }

    /// Enqueues one message; SendMessage and each SendMessageBatch entry go through here.
    /// Returns the answer and the store Lsn the caller must wait for before answering: a
    /// batch enqueues every entry first and waits once, so its entries share one group commit
    /// instead of paying one fsync each.
    ///
    /// Takes the input by value: its body moves into the engine message without a copy.
    fn send(
        &self,
        ctx: &RequestContext,
        f: &Found,
        mut i: SendMessageInput,
    ) -> Result<(SendMessageOutput, Lsn), AwsError> {
        validate_send(&i)?;
        let fifo = if f.config.fifo {
            Some(self.fifo_checks(ctx, f, &i)?)
        } else {
            if i.message_deduplication_id.is_some() {
                return Err(AwsError::invalid_parameter_value(
                    "The request include parameter that is not valid for this queue type",
                ));
            }
            None
        };
        if let Some(Fifo::Duplicate(out)) = fifo {
            // The first send's answer; its own Lsn may not be durable yet, so wait for
            // everything submitted so far.
            return Ok((out, self.engine.submitted_lsn()));
        }
        let size = message_size(&i);
        let max = f.config.maximum_message_bytes as usize;
        if size > max {
            return Err(AwsError::invalid_parameter_value(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {max} bytes."
            )));
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        // The digests of what was sent, before the body moves on.
        let mut out = SendMessageOutput::for_input(&i, message_id.clone(), None);
        let mut m = Message::new(
            "",
            f.queue.name.clone(),
            Bytes::from(std::mem::take(&mut i.message_body).into_bytes()),
        );
        let p = &mut m.properties;
        p.delivery_mode = Some(2);
        p.message_id = Some(message_id);
        p.timestamp = Some(now_ms() / 1000);
        p.user_id = Some(
            ctx.access_key_id
                .clone()
                .unwrap_or_else(|| ctx.account_id.clone()),
        );
        // Retention as a per-message TTL (see the module comment).
        p.expiration = Some((u64::from(f.config.retention_secs) * 1000).to_string());
        p.headers = mapping::to_headers(&i.message_attributes, &i.message_system_attributes);
        let mut sequence_number = None;
        if let Some(group) = &i.message_group_id {
            let h = p.headers.get_or_insert_with(Table::new);
            h.insert(GROUP_ID_HEADER.into(), Value::long_string(group.clone()));
            if let Some(Fifo::New { dedup_id, key }) = &fifo {
                let seq = format!("{:020}", self.sequence.fetch_add(1, Ordering::Relaxed));
                h.insert(DEDUP_ID_HEADER.into(), Value::long_string(dedup_id.clone()));
                h.insert(SEQUENCE_HEADER.into(), Value::long_string(seq.clone()));
                self.dedup
                    .insert(key.clone(), out.message_id.clone(), seq.clone(), now_ms())
                    .map_err(internal)?;
                sequence_number = Some(seq);
            }
        }
        let delay = i
            .delay_seconds
            .map_or(u64::from(f.config.delay_secs), |d| d as u64);
        if delay > 0 {
            // So a restart keeps it delayed until then (Queue::restore).
            let at = now_ms() + delay * 1000;
            p.headers
                .get_or_insert_with(Table::new)
                .insert(VISIBLE_AT_HEADER.into(), Value::long_string(at.to_string()));
        }
        let lsn = match f
            .queue
            .publish_delayed(&Arc::new(m), &mut None, Duration::from_secs(delay))
        {
            Enqueued::Accepted { lsn } => lsn,
            Enqueued::Rejected => {
                return Err(AwsError::invalid_parameter_value(format!(
                    "Queue {} is full (its AMQP x-overflow policy refuses messages).",
                    f.queue.name
                )))
            }
        };
        out.sequence_number = sequence_number;
        Ok((out, lsn))
    }

    /// FIFO send rules: a group id, no per-message delay, a deduplication id (given or the
    /// body's SHA-256); a repeat within 5 minutes answers the first send's ids.
    fn fifo_checks(
        &self,
        ctx: &RequestContext,
        f: &Found,
        i: &SendMessageInput,
    ) -> Result<Fifo, AwsError> {
        let group = i.message_group_id.as_deref().ok_or_else(|| {
            AwsError::missing_parameter("The request must contain the parameter MessageGroupId.")
        })?;
        if let Some(d) = i.delay_seconds.filter(|d| *d != 0) {
            return Err(AwsError::invalid_parameter_value(format!(
                "Value {d} for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type."
            )));
        }
        let dedup_id = match (&i.message_deduplication_id, f.config.content_based_deduplication) {
            (Some(id), _) => id.clone(),
            (None, true) => hex_sha256(&i.message_body),
            (None, false) => {
                return Err(AwsError::invalid_parameter_value(
                    "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                ))
            }
        };
        let scope = if f.config.deduplication_scope == "messageGroup" {
            format!("{group}\0{dedup_id}")
        } else {
            dedup_id.clone()
        };
        let key = (Self::vhost_name(ctx), f.queue.name.clone(), scope);
        if let Some((id, seq)) = self.dedup.lookup(&key, now_ms()) {
            return Ok(Fifo::Duplicate(SendMessageOutput::for_input(
                i,
                id,
                Some(seq),
            )));
        }
        Ok(Fifo::New { dedup_id, key })
    }

    async fn send_batch(
        &self,
        ctx: &RequestContext,
        i: SendMessageBatchInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let total: usize = i.entries.iter().map(SendMessageBatchEntry::size).sum();
        // AWS: the batch's total is capped at the service's message size ceiling whatever the
        // queue's MaximumMessageSize; each entry is still held to that attribute (in `send`).
        if total > BATCH_BYTES_MAX {
            return Err(AwsError::batch_request_too_long(format!(
                "Batch requests cannot be longer than {BATCH_BYTES_MAX} bytes. You have sent {total} bytes."
            )));
        }
        let mut out = SendMessageBatchOutput {
            successful: Vec::new(),
            failed: Vec::new(),
        };
        let mut last = 0;
        for e in i.entries {
            let (id, input) = e.into_send();
            match self.send(ctx, &f, input) {
                Ok((result, lsn)) => {
                    last = last.max(lsn);
                    out.successful
                        .push(SendMessageBatchResultEntry { id, result })
                }
                Err(err) => out
                    .failed
                    .push(BatchResultErrorEntry::from_error(&id, &err)),
            }
        }
        // Every successful entry is durable before the answer says so.
        self.engine.wait_durable(last).await;
        Ok(SqsResponse::SendMessageBatch(out))
    }

    async fn receive(
        &self,
        ctx: &RequestContext,
        i: ReceiveMessageInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let max = i.max_number_of_messages.unwrap_or(1) as usize;
        let visibility = Duration::from_secs(
            i.visibility_timeout
                .map_or(u64::from(f.config.visibility_timeout_secs), |v| v as u64),
        );
        let wait = Duration::from_secs(
            i.wait_time_seconds
                .map_or(u64::from(f.config.receive_wait_secs), |w| w as u64),
        );
        let redrive = f.config.redrive_policy.as_ref().map(|r| Redrive {
            max_receive_count: r.max_receive_count,
            dead_letter_queue: r
                .dead_letter_target_arn
                .rsplit(':')
                .next()
                .unwrap_or("")
                .to_string(),
        });
        let q = &f.queue;
        let attempt = i
            .receive_request_attempt_id
            .as_ref()
            .filter(|_| f.config.fifo)
            .map(|id| (Self::vhost_name(ctx), q.id, id.clone()));
        if let Some(key) = &attempt {
            if let Some(messages) = self.attempts.replay(key, q, visibility, now_ms()) {
                return Ok(SqsResponse::ReceiveMessage(ReceiveMessageOutput {
                    messages,
                }));
            }
        }
        let deadline = Instant::now() + wait;
        let waiting = q.wait_for_arrivals();
        let got = loop {
            let notified = waiting.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = q.receive(max, visibility, redrive.as_ref(), f.config.fifo);
            if !got.is_empty() || Instant::now() >= deadline || q.is_deleted() {
                break got;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        };
        // The bridge keeps only the attributes the request named: build none when it named
        // none (most receives), except for an answer remembered for a replay, whose retry may
        // name others.
        let want_system = attempt.is_some()
            || !i.attribute_names.is_empty()
            || !i.message_system_attribute_names.is_empty();
        let want_message_attributes = attempt.is_some() || !i.message_attribute_names.is_empty();
        let answer: Vec<(DeliveryId, u64, bridge::sqs::Message)> =
            got.into_iter()
                .map(|r| {
                    let m = &r.delivery.message;
                    let headers = m.properties.headers.as_ref();
                    let mut attributes = Attributes::new();
                    if want_system {
                        self.system_attributes(ctx, &r, &mut attributes);
                    }
                    let message =
                        bridge::sqs::Message {
                            message_id: m.properties.message_id.clone().unwrap_or_else(|| {
                                derived_message_id(&q.name, r.enqueued_ms, &m.body)
                            }),
                            receipt_handle: self.receipt_handle(q, r.delivery.id),
                            md5_of_body: String::new(),
                            // SQS bodies are text; a binary AMQP body is passed on lossily.
                            body: String::from_utf8_lossy(&m.body).into_owned(),
                            attributes,
                            md5_of_message_attributes: None,
                            message_attributes: if want_message_attributes {
                                mapping::from_headers(headers)
                            } else {
                                MessageAttributes::new()
                            },
                        };
                    (r.delivery.id, r.delivery.msg_id, message)
                })
                .collect();
        if let Some(key) = attempt {
            self.attempts.record(key, q, &answer, now_ms());
        }
        Ok(SqsResponse::ReceiveMessage(ReceiveMessageOutput {
            messages: answer.into_iter().map(|(_, _, m)| m).collect(),
        }))
    }

    /// Every system attribute of a received message (the bridge keeps the ones asked for).
    fn system_attributes(
        &self,
        ctx: &RequestContext,
        r: &crate::engine::queue::Received,
        attributes: &mut Attributes,
    ) {
        let m = &r.delivery.message;
        let headers = m.properties.headers.as_ref();
        attributes.insert(
            "SenderId".into(),
            m.properties
                .user_id
                .clone()
                .unwrap_or_else(|| ctx.account_id.clone()),
        );
        attributes.insert("SentTimestamp".into(), r.enqueued_ms.to_string());
        attributes.insert(
            "ApproximateReceiveCount".into(),
            r.delivery.delivery_count.to_string(),
        );
        attributes.insert(
            "ApproximateFirstReceiveTimestamp".into(),
            r.first_delivered_ms.to_string(),
        );
        if let Some(t) = mapping::trace_header(headers) {
            attributes.insert("AWSTraceHeader".into(), t);
        }
        for (header, attribute) in [
            (GROUP_ID_HEADER, "MessageGroupId"),
            (DEDUP_ID_HEADER, "MessageDeduplicationId"),
            (SEQUENCE_HEADER, "SequenceNumber"),
        ] {
            if let Some(v) = headers.and_then(|h| h.get(header)).and_then(Value::as_str) {
                attributes.insert(attribute.into(), v.to_string());
            }
        }
    }

    fn delete_message(&self, f: &Found, handle: &str) -> Result<(), AwsError> {
        if let Some(id) = self.parse_receipt(&f.queue, handle)? {
            // A stale handle deletes nothing and still succeeds, as in AWS.
            f.queue.delete_received(id);
        }
        Ok(())
    }

    fn change_visibility(&self, f: &Found, handle: &str, secs: i64) -> Result<(), AwsError> {
        let not_inflight = || {
            AwsError::message_not_inflight(format!(
                "Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change."
            ))
        };
        if !(0..=43_200).contains(&secs) {
            return Err(AwsError::invalid_parameter_value(format!(
                "Value {secs} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200."
            )));
        }
        let id = self
            .parse_receipt(&f.queue, handle)?
            .ok_or_else(not_inflight)?;
        // A message is invisible for at most 12 hours from its receive, however often its
        // visibility is extended.
        let ago = f.queue.received_ago(id).ok_or_else(not_inflight)?;
        if ago + Duration::from_secs(secs as u64) > Duration::from_secs(43_200) {
            return Err(AwsError::invalid_parameter_value(format!(
                "Value {secs} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )));
        }
        if f.queue
            .change_visibility(id, Duration::from_secs(secs as u64))
        {
            if f.config.fifo {
                // A receive attempt holding it can no longer be replayed, after a restart too.
                self.attempts
                    .touched(&f.vhost.name, f.queue.id, id, now_ms());
            }
            Ok(())
        } else {
            Err(not_inflight())
        }
    }

    fn dead_letter_sources(
        &self,
        ctx: &RequestContext,
        i: ListDeadLetterSourceQueuesInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let arn = ctx.queue_arn(&f.queue.name);
        let vname = Self::vhost_name(ctx);
        let mut names: Vec<String> = self
            .meta
            .in_vhost(&vname)
            .into_iter()
            .filter(|(name, m)| {
                m.config()
                    .redrive_policy
                    .is_some_and(|r| r.dead_letter_target_arn == arn)
                    && f.vhost
                        .queue(name, SQS_CONN)
                        .is_ok_and(|q| q.id == m.queue_id)
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        let limit = i.max_results.map_or(LIST_MAX, |m| m as usize);
        let start = match &i.next_token {
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| AwsError::invalid_parameter_value("Invalid NextToken value."))?,
            None => 0,
        };
        let page: Vec<String> = names.iter().skip(start).take(limit).cloned().collect();
        let next_token = (i.max_results.is_some() && start + page.len() < names.len())
            .then(|| (start + page.len()).to_string());
        Ok(SqsResponse::ListDeadLetterSourceQueues(
            ListDeadLetterSourceQueuesOutput {
                queue_urls: page.iter().map(|n| ctx.queue_url(n)).collect(),
                next_token,
            },
        ))
    }

    /// A queue of the caller's account and region by ARN.
    fn find_by_arn(&self, ctx: &RequestContext, arn: &str, param: &str) -> Result<Found, AwsError> {
        let name = arn.rsplit(':').next().unwrap_or("");
        if arn != ctx.queue_arn(name) {
            return Err(AwsError::resource_not_found(format!(
                "The resource that you specified for the {param} parameter doesn't exist."
            )));
        }
        self.find_by_name(ctx, name).map_err(|_| {
            AwsError::resource_not_found(format!(
                "The resource that you specified for the {param} parameter doesn't exist."
            ))
        })
    }

    fn start_move_task(
        &self,
        ctx: &RequestContext,
        i: StartMessageMoveTaskInput,
    ) -> Result<SqsResponse, AwsError> {
        let source = self.find_by_arn(ctx, &i.source_arn, "SourceArn")?;
        let is_dlq = self
            .meta
            .in_vhost(&Self::vhost_name(ctx))
            .into_iter()
            .any(|(_, m)| {
                m.config()
                    .redrive_policy
                    .is_some_and(|r| r.dead_letter_target_arn == i.source_arn)
            });
        if !is_dlq {
            return Err(AwsError::invalid_parameter_value(
                "Source queue must be configured as a Dead Letter Queue.",
            ));
        }
        let destination = match &i.destination_arn {
            Some(arn) => Some(
                self.find_by_arn(ctx, arn, "DestinationArn")?
                    .queue
                    .name
                    .clone(),
            ),
            None => None,
        };
        let mut all = self.move_tasks.lock();
        if all
            .iter()
            .any(|t| t.source_arn == i.source_arn && t.running())
        {
            return Err(AwsError::unsupported_operation(
                "There is already a task running. Only one active task is allowed for a source queue arn at a given time.",
            ));
        }
        let task = MoveTask::new(
            uuid::Uuid::new_v4().to_string(),
            i.source_arn.clone(),
            i.destination_arn.clone(),
            i.max_number_of_messages_per_second,
            i64::from(source.queue.message_count()),
            now_ms() as i64,
        );
        all.push(task.clone());
        let handle = task.handle.clone();
        tokio::spawn(tasks::run(
            task,
            self.engine.clone(),
            source.vhost,
            source.queue,
            destination,
        ));
        Ok(SqsResponse::StartMessageMoveTask(
            StartMessageMoveTaskOutput {
                task_handle: handle,
            },
        ))
    }

    /// AddPermission: a statement in the queue's Policy document (reported by
    /// GetQueueAttributes; Wharf has no IAM, so it grants nothing by itself).
    fn add_permission(
        &self,
        ctx: &RequestContext,
        i: AddPermissionInput,
    ) -> Result<SqsResponse, AwsError> {
        const ACTIONS: &[&str] = &[
            "*",
            "SendMessage",
            "ReceiveMessage",
            "DeleteMessage",
            "ChangeMessageVisibility",
            "GetQueueAttributes",
            "GetQueueUrl",
            "ListDeadLetterSourceQueues",
            "PurgeQueue",
            "ListQueueTags",
            "SendMessageBatch",
            "DeleteMessageBatch",
            "ChangeMessageVisibilityBatch",
        ];
        if let Some(bad) = i.actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(AwsError::invalid_parameter_value(format!(
                "Value SQS:{bad} for parameter ActionName is invalid. Reason: Please refer to the appropriate WSDL for a list of valid actions."
            )));
        }
        let f = self.find(ctx, &i.queue_url)?;
        let arn = ctx.queue_arn(&f.queue.name);
        let mut policy = f
            .config
            .policy
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .unwrap_or_else(|| {
                serde_json::json!({"Version": "2012-10-17", "Id": format!("{arn}/SQSDefaultPolicy"), "Statement": []})
            });
        let statements = policy["Statement"].as_array_mut().ok_or_else(|| {
            AwsError::invalid_parameter_value("The queue's Policy has no Statement list.")
        })?;
        if statements.iter().any(|s| s["Sid"] == i.label.as_str()) {
            return Err(AwsError::invalid_parameter_value(format!(
                "Value {} for parameter Label is invalid. Reason: Already exists.",
                i.label
            )));
        }
        let principals: Vec<String> = i
            .aws_account_ids
            .iter()
            .map(|a| format!("arn:aws:iam::{a}:root"))
            .collect();
        let actions: Vec<String> = i.actions.iter().map(|a| format!("SQS:{a}")).collect();
        statements.push(serde_json::json!({
            "Sid": i.label, "Effect": "Allow", "Principal": {"AWS": principals},
            "Action": actions, "Resource": arn,
        }));
        let text = policy.to_string();
        self.save_meta(ctx, &f, |m| {
            m.attributes.insert("Policy".into(), text);
            m.modified_secs = now_ms() / 1000;
        })?;
        Ok(SqsResponse::AddPermission(Empty {}))
    }

    fn remove_permission(
        &self,
        ctx: &RequestContext,
        i: RemovePermissionInput,
    ) -> Result<SqsResponse, AwsError> {
        let f = self.find(ctx, &i.queue_url)?;
        let not_found = || {
            AwsError::invalid_parameter_value(format!(
                "Value {} for parameter Label is invalid. Reason: can't find label.",
                i.label
            ))
        };
        let mut policy = f
            .config
            .policy
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .ok_or_else(not_found)?;
        let statements = policy["Statement"].as_array_mut().ok_or_else(not_found)?;
        let before = statements.len();
        statements.retain(|s| s["Sid"] != i.label.as_str());
        if statements.len() == before {
            return Err(not_found());
        }
        let empty = statements.is_empty();
        let text = policy.to_string();
        self.save_meta(ctx, &f, |m| {
            if empty {
                m.attributes.remove("Policy");
            } else {
                m.attributes.insert("Policy".into(), text);
            }
            m.modified_secs = now_ms() / 1000;
        })?;
        Ok(SqsResponse::RemovePermission(Empty {}))
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        request: SqsRequest,
    ) -> Result<SqsResponse, AwsError> {
        use SqsRequest as R;
        Ok(match request {
            R::CreateQueue(i) => return self.create_queue(ctx, i).await,
            R::GetQueueUrl(i) => {
                if i.queue_owner_aws_account_id
                    .as_ref()
                    .is_some_and(|a| *a != ctx.account_id)
                {
                    return Err(no_queue());
                }
                let f = self.find_by_name(ctx, &i.queue_name)?;
                SqsResponse::GetQueueUrl(QueueUrlOutput {
                    queue_url: ctx.queue_url(&f.queue.name),
                })
            }
            R::ListQueues(i) => return self.list_queues(ctx, i),
            R::DeleteQueue(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                f.vhost.delete_queue_unchecked(&f.queue).map_err(internal)?;
                // One write drops the settings and remembers the name for 60 s, so a restart
                // still refuses it (QueueDeletedRecently).
                self.meta
                    .remove_deleted(
                        &Self::vhost_name(ctx),
                        &f.queue.name,
                        now_ms(),
                        RECREATE_INTERVAL_MS,
                    )
                    .map_err(internal)?;
                SqsResponse::DeleteQueue(Empty {})
            }
            R::PurgeQueue(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                let now = now_ms();
                if f.meta.purged_ms != 0 && now.saturating_sub(f.meta.purged_ms) < PURGE_INTERVAL_MS
                {
                    return Err(AwsError::purge_queue_in_progress(format!(
                        "Only one PurgeQueue operation on {} is allowed every 60 seconds.",
                        f.queue.name
                    )));
                }
                self.save_meta(ctx, &f, |m| m.purged_ms = now)?;
                // In-flight messages go too, as on AWS; their receipt handles are then stale.
                f.queue.purge_with_receipts();
                SqsResponse::PurgeQueue(Empty {})
            }
            R::GetQueueAttributes(i) => return self.get_attributes(ctx, i),
            R::SetQueueAttributes(i) => return self.set_attributes(ctx, i),
            R::SendMessage(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                let (out, lsn) = self.send(ctx, &f, i)?;
                self.engine.wait_durable(lsn).await;
                SqsResponse::SendMessage(out)
            }
            R::SendMessageBatch(i) => return self.send_batch(ctx, i).await,
            R::ReceiveMessage(i) => return self.receive(ctx, i).await,
            R::DeleteMessage(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                self.delete_message(&f, &i.receipt_handle)?;
                // A 200 means the message will not come back after a crash.
                self.engine.wait_submitted_durable().await;
                SqsResponse::DeleteMessage(Empty {})
            }
            R::DeleteMessageBatch(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                let mut out = BatchOutput {
                    successful: Vec::new(),
                    failed: Vec::new(),
                };
                // Deleted together: one ack record, so the batch's acks are never split
                // across two group commits (the answer would wait for both).
                let mut ids = Vec::with_capacity(i.entries.len());
                for e in &i.entries {
                    match self.parse_receipt(&f.queue, &e.receipt_handle) {
                        Ok(id) => {
                            // A stale handle deletes nothing and still succeeds, as in AWS.
                            ids.extend(id);
                            out.successful.push(BatchResultEntry { id: e.id.clone() });
                        }
                        Err(err) => out
                            .failed
                            .push(BatchResultErrorEntry::from_error(&e.id, &err)),
                    }
                }
                f.queue.delete_received_many(&ids);
                // One wait for the whole batch.
                self.engine.wait_submitted_durable().await;
                SqsResponse::DeleteMessageBatch(out)
            }
            R::ChangeMessageVisibility(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                self.change_visibility(&f, &i.receipt_handle, i.visibility_timeout)?;
                SqsResponse::ChangeMessageVisibility(Empty {})
            }
            R::ChangeMessageVisibilityBatch(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                let mut out = BatchOutput {
                    successful: Vec::new(),
                    failed: Vec::new(),
                };
                for e in &i.entries {
                    match self.change_visibility(&f, &e.receipt_handle, e.visibility_timeout) {
                        Ok(()) => out.successful.push(BatchResultEntry { id: e.id.clone() }),
                        Err(err) => out
                            .failed
                            .push(BatchResultErrorEntry::from_error(&e.id, &err)),
                    }
                }
                SqsResponse::ChangeMessageVisibilityBatch(out)
            }
            R::TagQueue(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                if f.meta.tags.len() + i.tags.len() > 50 {
                    return Err(AwsError::invalid_parameter_value(
                        "Too many tags added for queue: at most 50 are allowed.",
                    ));
                }
                self.save_meta(ctx, &f, |m| m.tags.extend(i.tags))?;
                SqsResponse::TagQueue(Empty {})
            }
            R::UntagQueue(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                self.save_meta(ctx, &f, |m| {
                    for k in &i.tag_keys {
                        m.tags.remove(k);
                    }
                })?;
                SqsResponse::UntagQueue(Empty {})
            }
            R::ListQueueTags(i) => {
                let f = self.find(ctx, &i.queue_url)?;
                SqsResponse::ListQueueTags(TagsOutput { tags: f.meta.tags })
            }
            R::ListDeadLetterSourceQueues(i) => return self.dead_letter_sources(ctx, i),
            R::StartMessageMoveTask(i) => return self.start_move_task(ctx, i),
            R::ListMessageMoveTasks(i) => {
                self.find_by_arn(ctx, &i.source_arn, "SourceArn")?;
                let all = self.move_tasks.lock();
                let results = all
                    .iter()
                    .rev()
                    .filter(|t| t.source_arn == i.source_arn)
                    .take(i.max_results.unwrap_or(1) as usize)
                    .map(|t| t.report())
                    .collect();
                SqsResponse::ListMessageMoveTasks(ListMessageMoveTasksOutput { results })
            }
            R::CancelMessageMoveTask(i) => {
                let task = self
                    .move_tasks
                    .lock()
                    .iter()
                    .find(|t| t.handle == i.task_handle && t.running())
                    .cloned()
                    .ok_or_else(|| {
                        AwsError::resource_not_found(
                            "The resource that you specified for the TaskHandle parameter doesn't exist.",
                        )
                    })?;
                SqsResponse::CancelMessageMoveTask(CancelMessageMoveTaskOutput {
                    approximate_number_of_messages_moved: task.cancel(),
                })
            }
            R::AddPermission(i) => return self.add_permission(ctx, i),
            R::RemovePermission(i) => return self.remove_permission(ctx, i),
        })
    }
}

/// (boot, queue id, delivery id) of a well-formed receipt handle.
fn decode_receipt(handle: &str) -> Option<(u64, u64, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(handle)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let f: Vec<&str> = text.split(':').collect();
    let [boot, qid, did, _nonce] = f.as_slice() else {
        return None;
    };
    Some((
        u64::from_str_radix(boot, 16).ok()?,
        qid.parse().ok()?,
        did.parse().ok()?,
    ))
}

/// What the FIFO rules decided for a send.
enum Fifo {
    /// Seen within the window: answer with the first send's ids, enqueue nothing.
    Duplicate(SendMessageOutput),
    New {
        dedup_id: String,
        key: (String, String, String),
    },
}

fn hex_sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A stable id for a message published without one (AMQP, MQTT): UUID-shaped, from what
/// identifies it in its queue.
fn derived_message_id(queue: &str, enqueued_ms: u64, body: &[u8]) -> String {
    let d = bridge::md5::md5_of_body(&format!(
        "{queue}\0{enqueued_ms}\0{}",
        String::from_utf8_lossy(body)
    ));
    format!(
        "{}-{}-{}-{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    )
}

impl SqsBackend for SqsEngine {
    fn call(
        &self,
        ctx: &RequestContext,
        request: SqsRequest,
    ) -> impl std::future::Future<Output = Result<SqsResponse, AwsError>> + Send {
        self.dispatch(ctx, request)
    }
}
