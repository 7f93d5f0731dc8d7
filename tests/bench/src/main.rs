//! `wharf-bench`: drives one workload against one broker and prints one result line.
//!
//! The same client (lapin) runs against Wharf and RabbitMQ, so the ratio between two runs
//! compares brokers. `tests/bench/run-amqp` starts both brokers and runs every workload.
//!
//! A workload: one publisher connection -> one queue -> one consumer connection. Each body
//! carries its send time, so the consumer measures end-to-end latency. The publisher keeps at
//! most `--window` messages unconsumed, so latency measures the broker, not an ever-growing
//! backlog (RabbitMQ's PerfTest bounds its publishers the same way with confirms).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Transient messages, no confirms, consumer in auto-ack mode.
    Transient,
    /// Persistent messages to a durable queue, publisher confirms, manual acks.
    Persistent,
}

#[derive(Debug, Parser)]
#[command(about = "AMQP 0-9-1 load generator: 1 publisher -> 1 queue -> 1 consumer")]
struct Args {
    /// amqp://user:pass@host:port/vhost
    #[arg(long)]
    url: String,
    /// Body size in bytes (at least 16: send time and sequence number).
    #[arg(long, default_value_t = 16)]
    size: usize,
    #[arg(long, value_enum, default_value_t = Mode::Transient)]
    mode: Mode,
    /// Messages to send.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Most messages published and not yet consumed (and, with confirms, not yet confirmed).
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Name printed in the result line.
    #[arg(long, default_value = "broker")]
    label: String,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.size < 16 {
        bail!("--size must be at least 16");
    }
    let persistent = args.mode == Mode::Persistent;
    let queue = format!("bench-{}-{}", std::process::id(), now_nanos() % 1_000_000);

    let pub_conn = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .context("publisher connection")?;
    let con_conn = Connection::connect(&args.url, ConnectionProperties::default())
        .await
        .context("consumer connection")?;
    let pub_ch = pub_conn.create_channel().await?;
    let con_ch = con_conn.create_channel().await?;
    let declare = QueueDeclareOptions {
        durable: persistent,
        ..Default::default()
    };
    pub_ch
        .queue_declare(queue.as_str().into(), declare, FieldTable::default())
        .await?;
    if persistent {
        pub_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        con_ch
            .basic_qos(
                args.window.min(u16::MAX as u64) as u16,
                BasicQosOptions::default(),
            )
            .await?;
    }
    let consumer = con_ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions {
                no_ack: !persistent,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let consumed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let total = args.messages;
    let consumer_task = {
        let consumed = consumed.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            let mut latencies_ns = Vec::with_capacity(total as usize);
            while latencies_ns.len() < total as usize {
                let delivery = match consumer.next().await {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(anyhow::anyhow!("consumer: {e}")),
                    None => bail!("consumer stream ended"),
                };
                let sent = u64::from_be_bytes(delivery.data[..8].try_into()?);
                latencies_ns.push(now_nanos().saturating_sub(sent));
                if persistent {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                consumed.fetch_add(1, Ordering::Release);
                progress.notify_one();
            }
            Ok(latencies_ns)
        })
    };

    let properties = if persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut body = vec![0u8; args.size];
    let mut confirms = VecDeque::new();
    let start = Instant::now();
    for seq in 0..total {
        while seq - consumed.load(Ordering::Acquire) >= args.window {
            // A timeout guards against a lost wakeup between the load and the wait.
            let _ = tokio::time::timeout(Duration::from_millis(5), progress.notified()).await;
        }
        body[..8].copy_from_slice(&now_nanos().to_be_bytes());
        body[8..16].copy_from_slice(&seq.to_be_bytes());
        let confirm = pub_ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        if persistent {
            confirms.push_back(confirm);
            while confirms.len() as u64 >= args.window {
                if let Some(c) = confirms.pop_front() {
                    if !c.await?.is_ack() {
                        bail!("publish nacked");
                    }
                }
            }
        }
    }
    for c in confirms {
        if !c.await?.is_ack() {
            bail!("publish nacked");
        }
    }
    let mut latencies = consumer_task.await??;
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "result label={} mode={:?} size={} messages={} secs={:.3} rate={:.0} p50_us={} p99_us={}",
        args.label,
        args.mode,
        args.size,
        total,
        elapsed.as_secs_f64(),
        rate,
        percentile(&latencies, 0.50) / 1000,
        percentile(&latencies, 0.99) / 1000,
    );
    pub_ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = pub_conn.close(200, "bye".into()).await;
    let _ = con_conn.close(200, "bye".into()).await;
    Ok(())
}
