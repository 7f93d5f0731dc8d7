//! The workload on the lapin library (`--client lapin`): one publish call, and one write, per
//! message; one ack call per delivery.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Notify;

use crate::{now_nanos, Args, Mode, Outcome};

pub(crate) async fn run(args: &Args, queue: &str) -> anyhow::Result<Outcome> {
    let persistent = args.mode == Mode::Persistent;

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
        .queue_declare(queue.into(), declare, FieldTable::default())
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
            queue.into(),
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
                queue.into(),
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
    let latencies_ns = consumer_task.await??;
    let elapsed = start.elapsed();
    if let Err(e) = pub_ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
    {
        eprintln!("queue.delete: {e}");
    }
    let _ = pub_conn.close(200, "bye".into()).await;
    let _ = con_conn.close(200, "bye".into()).await;
    Ok(Outcome {
        elapsed,
        latencies_ns,
    })
}
