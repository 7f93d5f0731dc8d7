//! `wharf-bench sqs`: the SQS workload of issue 5 against any SQS endpoint (Wharf, moto's
//! server), with the same client for both so the ratio compares servers.
//!
//! The workload on one standard queue: `--producers` tasks send SendMessageBatch (10 entries
//! of `--size` bytes) until `--messages` are sent; `--consumers` tasks loop ReceiveMessage
//! (MaxNumberOfMessages 10, WaitTimeSeconds 1: a long poll) then DeleteMessageBatch of what
//! they got. Every task has its own HTTP/1.1 keep-alive connection (hyper's client
//! connection, no pool). msgs/s = messages deleted / time from the first send to the answer
//! of the delete that completed the count, so it is end to end. (Until this round the time ran
//! until every task had returned, which added the consumers' last long polls: up to 1 s
//! (WaitTimeSeconds) of an empty queue after the last delete. That figure is still printed, as
//! `seconds_all_tasks` and `rate_all_tasks`.) Requests are JSON 1.0 (`X-Amz-Target`), unsigned: Wharf runs
//! with `--sigv4 off`, moto does not check signatures, so neither side pays for signing.
//! `--sign` signs every request with SigV4 (key `guest`/`guest`, the broker's development
//! pair) for a Wharf started with signing on, to measure what verification costs it.
//!
//! Runs on a multi-thread runtime of `--threads` workers (2 by default: the machine's cores
//! are shared with the server, the client must not starve it).

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "SQS load generator: SendMessageBatch / ReceiveMessage / DeleteMessageBatch")]
pub struct SqsArgs {
    /// Ignored: the subcommand name.
    #[arg(hide = true)]
    _cmd: String,
    /// host:port of the SQS endpoint.
    #[arg(long)]
    endpoint: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    producers: usize,
    #[arg(long, default_value_t = 16)]
    consumers: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "server")]
    label: String,
    /// Give up after this many seconds (a server too slow or losing messages).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Sign every request with SigV4 (access key and secret `guest`, region us-east-1), for a
    /// server that verifies signatures.
    #[arg(long)]
    sign: bool,
}

/// A syntactically valid SigV4 header with a dummy signature (see `Conn::call`).
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=000000000000/20260101/us-east-1/sqs/aws4_request, \
                    SignedHeaders=host, Signature=00";

/// One keep-alive connection speaking SQS JSON 1.0.
///
/// The client shares the machine's cores with the server, so it does as little as it can per
/// request: request bodies that never change are serialized once, responses are parsed into
/// borrowed typed shapes (no `serde_json::Value`), and the delete batch is written straight
/// into a buffer.
struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    endpoint: String,
    sign: bool,
}

/// The signed headers of `--sign` (the least SigV4 asks for, plus what routes the request).
const SIGNED_HEADERS: [&str; 4] = ["content-type", "host", "x-amz-date", "x-amz-target"];

/// Signs a request the way an SDK does, with the same canonicalization the broker verifies.
fn sign(
    req: hyper::Request<Full<Bytes>>,
    body: &[u8],
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    use bridge::sigv4;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let when = time_of(now.as_secs());
    let amz_date = format!("{}T{}Z", when.0, when.1);
    let scope = sigv4::Scope {
        access_key_id: "guest".into(),
        date: when.0.clone(),
        region: "us-east-1".into(),
        service: "sqs".into(),
    };
    let (mut parts, b) = req.into_parts();
    parts
        .headers
        .insert("x-amz-date", HeaderValue::from_str(&amz_date)?);
    let names: Vec<String> = SIGNED_HEADERS.iter().map(|s| s.to_string()).collect();
    let canonical = sigv4::canonical_request(&parts, body, &names, false);
    let signature = sigv4::sign("guest", &scope, &amz_date, &canonical);
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=guest/{}/us-east-1/sqs/aws4_request, SignedHeaders={}, Signature={signature}",
        scope.date,
        SIGNED_HEADERS.join(";")
    );
    parts
        .headers
        .insert(hyper::header::AUTHORIZATION, HeaderValue::from_str(&auth)?);
    Ok(hyper::Request::from_parts(parts, b))
}

/// (`YYYYMMDD`, `HHMMSS`) of a Unix time, UTC (civil-from-days, Howard Hinnant's algorithm).
fn time_of(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

impl Conn {
    async fn open(endpoint: &str, sign: bool) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(endpoint)
            .await
            .with_context(|| format!("connect {endpoint}"))?;
        s.set_nodelay(true)?;
        let (tx, conn) = http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            tx,
            host: HeaderValue::from_str(endpoint)?,
            endpoint: endpoint.to_string(),
            sign,
        })
    }

    /// Posts one request; returns the response body of a 2xx answer.
    async fn call(&mut self, target: &'static str, body: Bytes) -> anyhow::Result<Bytes> {
        let mut req = hyper::Request::post("/").body(Full::new(body.clone()))?;
        let h = req.headers_mut();
        h.insert(hyper::header::HOST, self.host.clone());
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        h.insert("x-amz-target", HeaderValue::from_static(target));
        // Unsigned, but moto's server routes by the credential scope's service (and
        // region); Wharf with `--sigv4 off` reads only the account from it.
        if self.sign {
            req = sign(req, &body)?;
        } else {
            h.insert(hyper::header::AUTHORIZATION, HeaderValue::from_static(AUTH));
            h.insert("x-amz-date", HeaderValue::from_static("20260101T000000Z"));
        }
        // moto's server (werkzeug) closes the connection after each response; reconnecting is
        // part of what it costs. Wharf keeps it open.
        if self.tx.is_closed() || self.tx.ready().await.is_err() {
            *self = Conn::open(&self.endpoint.clone(), self.sign).await?;
            self.tx.ready().await?;
        }
        let resp = self.tx.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{target}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    async fn call_json(&mut self, target: &'static str, input: &Value) -> anyhow::Result<Value> {
        let body = self
            .call(target, Bytes::from(serde_json::to_vec(input)?))
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

/// The parts of SQS answers the workload reads.
#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(rename = "Successful", default, borrow)]
    successful: Vec<BatchEntry<'a>>,
    #[serde(rename = "Failed", default)]
    failed: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
struct BatchEntry<'a> {
    #[serde(rename = "Id", borrow)]
    _id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ReceiveAnswer<'a> {
    #[serde(rename = "Messages", default, borrow)]
    messages: Vec<Received<'a>>,
}

#[derive(Deserialize)]
struct Received<'a> {
    #[serde(rename = "ReceiptHandle", borrow)]
    receipt_handle: Cow<'a, str>,
}

struct Shared {
    url: String,
    sign: bool,
    /// Total µs spent waiting for each kind of answer, and how many: (send, receive, delete).
    waited_us: [AtomicU64; 3],
    calls: [AtomicU64; 3],
    batches_taken: AtomicU64,
    deleted: AtomicU64,
    total: u64,
    start: Instant,
    /// µs from `start` to the answer of the delete that brought `deleted` to `total`.
    done_us: AtomicU64,
}

impl Shared {
    fn note(&self, kind: usize, since: Instant) {
        self.waited_us[kind].fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.calls[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// Mean µs per answer of one kind.
    fn mean_us(&self, kind: usize) -> u64 {
        self.waited_us[kind].load(Ordering::Relaxed)
            / self.calls[kind].load(Ordering::Relaxed).max(1)
    }
}

async fn produce(endpoint: String, s: Arc<Shared>, body: String) -> anyhow::Result<()> {
    let mut c = Conn::open(&endpoint, s.sign).await?;
    let batches = s.total.div_ceil(10);
    let entries: Vec<Value> = (0..10)
        .map(|i| json!({"Id": i.to_string(), "MessageBody": body}))
        .collect();
    let request = Bytes::from(serde_json::to_vec(
        &json!({"QueueUrl": s.url, "Entries": entries}),
    )?);
    while s.batches_taken.fetch_add(1, Ordering::Relaxed) < batches {
        let t = Instant::now();
        let out = c
            .call("AmazonSQS.SendMessageBatch", request.clone())
            .await?;
        s.note(0, t);
        let answer: BatchAnswer = serde_json::from_slice(&out)?;
        if !answer.failed.is_empty() || answer.successful.len() != 10 {
            bail!(
                "SendMessageBatch failed entries: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    Ok(())
}

async fn consume(endpoint: String, s: Arc<Shared>) -> anyhow::Result<()> {
    let mut c = Conn::open(&endpoint, s.sign).await?;
    let receive = Bytes::from(serde_json::to_vec(
        &json!({"QueueUrl": s.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
    )?);
    let delete_head = format!(
        "{{\"QueueUrl\":{},\"Entries\":[",
        serde_json::to_string(&s.url)?
    );
    while s.deleted.load(Ordering::Relaxed) < s.total {
        let t = Instant::now();
        let got = c.call("AmazonSQS.ReceiveMessage", receive.clone()).await?;
        s.note(1, t);
        let answer: ReceiveAnswer = serde_json::from_slice(&got)?;
        if answer.messages.is_empty() {
            continue;
        }
        let mut delete = Vec::with_capacity(delete_head.len() + answer.messages.len() * 160);
        delete.extend_from_slice(delete_head.as_bytes());
        for (i, m) in answer.messages.iter().enumerate() {
            if i > 0 {
                delete.push(b',');
            }
            write!(delete, "{{\"Id\":\"{i}\",\"ReceiptHandle\":")?;
            serde_json::to_writer(&mut delete, &m.receipt_handle)?;
            delete.push(b'}');
        }
        delete.extend_from_slice(b"]}");
        let t = Instant::now();
        let out = c
            .call("AmazonSQS.DeleteMessageBatch", Bytes::from(delete))
            .await?;
        s.note(2, t);
        let ok = serde_json::from_slice::<BatchAnswer>(&out)?
            .successful
            .len() as u64;
        let before = s.deleted.fetch_add(ok, Ordering::Relaxed);
        if before < s.total && before + ok >= s.total {
            s.done_us
                .store(s.start.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

pub fn main(args: SqsArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(a: SqsArgs) -> anyhow::Result<()> {
    let mut c = Conn::open(&a.endpoint, a.sign).await?;
    let name = format!(
        "bench-{}-{}",
        std::process::id(),
        crate::now_nanos() % 1_000_000
    );
    let url = c
        .call_json("AmazonSQS.CreateQueue", &json!({"QueueName": name}))
        .await?["QueueUrl"]
        .as_str()
        .context("CreateQueue without QueueUrl")?
        .to_string();
    let s = Arc::new(Shared {
        url,
        sign: a.sign,
        waited_us: Default::default(),
        calls: Default::default(),
        batches_taken: AtomicU64::new(0),
        deleted: AtomicU64::new(0),
        total: a.messages.div_ceil(10) * 10,
        start: Instant::now(),
        done_us: AtomicU64::new(0),
    });
    let body = "x".repeat(a.size);
    let start = s.start;
    let mut tasks = Vec::new();
    for _ in 0..a.producers {
        tasks.push(tokio::spawn(produce(
            a.endpoint.clone(),
            s.clone(),
            body.clone(),
        )));
    }
    for _ in 0..a.consumers {
        tasks.push(tokio::spawn(consume(a.endpoint.clone(), s.clone())));
    }
    let producers = a.producers;
    let all = async {
        // Producers come first: when they are all done, every message was sent.
        let mut sent_secs = 0.0;
        for (i, t) in tasks.into_iter().enumerate() {
            t.await??;
            if i + 1 == producers {
                sent_secs = start.elapsed().as_secs_f64();
            }
        }
        anyhow::Ok(sent_secs)
    };
    let sent_secs = tokio::time::timeout(Duration::from_secs(a.timeout), all)
        .await
        .context("timed out")??;
    let all_secs = start.elapsed().as_secs_f64();
    let secs = match s.done_us.load(Ordering::Relaxed) {
        0 => all_secs,
        us => us as f64 / 1e6,
    };
    let n = s.deleted.load(Ordering::Relaxed);
    // sent_seconds close to seconds: the producers set the pace; well below: the consumers.
    // The mean time each kind of request took, send to answer, says where a cycle goes.
    println!(
        "{} messages={} seconds={:.2} msgs_per_s={:.0} producers={} consumers={} sent_seconds={:.2} \
         seconds_all_tasks={:.2} rate_all_tasks={:.0} \
         mean_us_send={} mean_us_receive={} mean_us_delete={}",
        a.label,
        n,
        secs,
        n as f64 / secs,
        a.producers,
        a.consumers,
        sent_secs,
        all_secs,
        n as f64 / all_secs,
        s.mean_us(0),
        s.mean_us(1),
        s.mean_us(2)
    );
    Ok(())
}
