//! Idle connections: what an IoT fleet costs a broker in memory.
//!
//! Reads the broker's `VmRSS` (`/proc/<pid>/status`, from outside the broker), opens
//! `--clients` connections (`--concurrency` at a time; each CONNECT with `--keepalive` and
//! clean session, and with `--subscribe` one QoS 1 subscription to a topic of its own), waits
//! `--settle-secs`, reads `VmRSS` again and reports the difference per connection. The
//! connections stay open, silent, until the process exits: the settle time is shorter than
//! the keep-alive, so no PINGREQ is due.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{Conn, MqttArgs};
use crate::now_nanos;

/// Resident memory of a process, bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a value")?
        .parse()?;
    Ok(kb * 1024)
}

pub(super) async fn run(args: Arc<MqttArgs>) -> anyhow::Result<()> {
    let Some(pid) = args.broker_pid else {
        bail!("--workload idle needs --broker-pid");
    };
    if args.settle_secs >= u64::from(args.keepalive) && args.keepalive > 0 {
        bail!("--settle-secs must be shorter than --keepalive (no PINGREQ is sent)");
    }
    let run_id = format!("{}-{}", std::process::id(), now_nanos() % 1_000_000);
    let before = rss_bytes(pid)?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let conns: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::with_capacity(args.clients)));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(args.clients) {
        let next = next.clone();
        let conns = conns.clone();
        let args = args.clone();
        let run_id = run_id.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.clients {
                    return anyhow::Ok(());
                }
                let mut conn = Conn::open(&args, format!("wb-{run_id}-idle-{i}"), true).await?;
                if args.subscribe {
                    conn.subscribe(&format!("bench/{run_id}/idle/{i}"), 1)
                        .await?;
                }
                conns.lock().expect("not poisoned").push(conn);
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = rss_bytes(pid)?;
    let open = conns.lock().expect("not poisoned").len();
    let per_conn = after.saturating_sub(before) as f64 / open.max(1) as f64;
    println!(
        "result label={} workload=idle connections={open} subscribe={} keepalive={} \
         connect_secs={connect_secs:.2} rss_before={before} rss_after={after} \
         bytes_per_conn={per_conn:.0}",
        args.label, args.subscribe, args.keepalive,
    );
    Ok(())
}
