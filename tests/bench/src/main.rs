//! `wharf-bench`: drives one workload against one broker and prints one result line.
//!
//! The same client runs against Wharf and RabbitMQ, so the ratio between two runs compares
//! brokers. `tests/bench/run-amqp` starts both brokers and runs every workload.
//!
//! Two clients implement the workload:
//! - `--client raw` (default, [`raw`]): speaks AMQP 0-9-1 through the project's own codec
//!   (`codecs::amqp`), batching publishes into one write and acking once per read batch, as
//!   efficient real clients do. It costs a fraction of what the broker costs, so the ratio
//!   measures brokers.
//! - `--client lapin` ([`lapin_client`]): the lapin library, one write per publish. It costs
//!   more CPU than either broker, so on a 2-core machine it mostly measures lapin.
//!
//! A workload: one publisher connection -> one queue -> one consumer connection. Each body
//! carries its send time, so the consumer measures end-to-end latency. The publisher keeps at
//! most `--window` messages unconsumed, so latency measures the broker, not an ever-growing
//! backlog (RabbitMQ's PerfTest bounds its publishers the same way with confirms).
//!
//! `wharf-bench mqtt ...` runs the MQTT workloads instead ([`mqtt`], `tests/bench/run-mqtt`
//! runs them against Wharf and Mosquitto).
//!
//! `wharf-bench stomp ...` runs the STOMP workload instead ([`stomp`], `tests/bench/run-stomp`
//! runs it against Wharf and RabbitMQ's STOMP plugin).
//!
//! `wharf-bench sqs ...` runs the SQS workload ([`sqs`], `tests/bench/run-sqs` runs it against
//! Wharf and moto's server).
//!
//! `wharf-bench sns ...` runs the SNS fan-out workload ([`sns`], `tests/bench/run-sns` runs it
//! against Wharf and moto's server).

mod lapin_client;
mod mqtt;
mod raw;
mod sns;
mod sqs;
mod stomp;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Transient messages, no confirms, consumer in auto-ack mode.
    Transient,
    /// Persistent messages to a durable queue, publisher confirms, manual acks.
    Persistent,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Client {
    /// Our own client on `codecs::amqp`: batched writes, one multiple-ack per read batch.
    Raw,
    /// The lapin library.
    Lapin,
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
    /// Client implementation.
    #[arg(long, value_enum, default_value_t = Client::Raw)]
    client: Client,
    /// Raw client: most publishes encoded into one write.
    #[arg(long, default_value_t = 128)]
    batch: u64,
}

/// What a workload measured.
struct Outcome {
    elapsed: Duration,
    /// End-to-end latency of every message, nanoseconds, in arrival order.
    latencies_ns: Vec<u64>,
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

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("mqtt") {
        return mqtt::main(mqtt::MqttArgs::parse_from(std::env::args().skip(1)));
    }
    if std::env::args().nth(1).as_deref() == Some("sns") {
        return sns::main(sns::SnsArgs::parse());
    }
    if std::env::args().nth(1).as_deref() == Some("sqs") {
        return sqs::main(sqs::SqsArgs::parse());
    }
    if std::env::args().nth(1).as_deref() == Some("stomp") {
        return stomp::main(stomp::StompArgs::parse_from(std::env::args().skip(1)));
    }
    let args = Args::parse();
    if args.size < 16 {
        bail!("--size must be at least 16");
    }
    if args.window == 0 || args.batch == 0 {
        bail!("--window and --batch must be at least 1");
    }
    let queue = format!("bench-{}-{}", std::process::id(), now_nanos() % 1_000_000);
    let outcome = match args.client {
        // lapin runs its I/O on threads of its own; keep the multi-threaded runtime it had.
        Client::Lapin => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(lapin_client::run(&args, &queue))?,
        // Publisher and consumer are two tasks on one thread: no cross-thread wakeups, and the
        // client leaves the second core to the broker.
        Client::Raw => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(raw::run(&args, &queue))?,
    };
    let mut latencies = outcome.latencies_ns;
    latencies.sort_unstable();
    let secs = outcome.elapsed.as_secs_f64();
    println!(
        "result label={} mode={:?} size={} messages={} secs={:.3} rate={:.0} p50_us={} p99_us={}",
        args.label,
        args.mode,
        args.size,
        args.messages,
        secs,
        args.messages as f64 / secs,
        percentile(&latencies, 0.50) / 1000,
        percentile(&latencies, 0.99) / 1000,
    );
    Ok(())
}
