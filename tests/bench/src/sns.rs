//! `wharf-bench sns`: the SNS workload of issue 6 against any SNS+SQS endpoint (Wharf, moto's
//! server), with the same client for both so the ratio compares servers.
//!
//! Setup: one standard topic and `--queues` (10) SQS queues, each subscribed to the topic
//! (envelope delivery, AWS's default; `--raw`: RawMessageDelivery). Then `--producers` tasks Publish (one message of
//! `--size` bytes per request, SNS Query protocol) until `--messages` are published, while one
//! consumer per queue loops ReceiveMessage (10, long poll 1 s) and DeleteMessageBatch until its
//! queue has given `--messages`. msgs/s = messages delivered (deleted, all queues) / time from
//! the first Publish to the last delete: fan-out end to end.
//!
//! Requests are unsigned (Wharf runs with `--sigv4 off`, moto checks no signatures), with a
//! dummy SigV4 header whose credential scope names the service, which both servers route by.
//! Every task has its own HTTP/1.1 connection (moto closes it after each response; reopening
//! is part of its cost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "SNS load generator: Publish to a topic fanned out to SQS queues")]
pub struct SnsArgs {
    /// Ignored: the subcommand name.
    #[arg(hide = true)]
    _cmd: String,
    /// host:port of the endpoint serving SNS and SQS.
    #[arg(long)]
    endpoint: String,
    /// Messages to publish (each is delivered to every queue).
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// SQS queues subscribed to the topic.
    #[arg(long, default_value_t = 10)]
    queues: usize,
    #[arg(long, default_value_t = 8)]
    producers: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Subscribe with RawMessageDelivery=true (no envelope, nothing to sign).
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "server")]
    label: String,
    /// Give up after this many seconds (a server too slow or losing messages).
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

fn auth(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=000000000000/20260101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=00"
    )
}

/// One HTTP/1.1 connection, reopened when the server closed it.
struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(endpoint: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(endpoint)
            .await
            .with_context(|| format!("connect {endpoint}"))?;
        s.set_nodelay(true)?;
        let (tx, conn) = http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            tx,
            host: endpoint.to_string(),
        })
    }

    async fn post(
        &mut self,
        what: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let mut req = hyper::Request::post("/")
            .header("host", &self.host)
            .header("x-amz-date", "20260101T000000Z");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        if self.tx.is_closed() || self.tx.ready().await.is_err() {
            *self = Conn::open(&self.host.clone()).await?;
            self.tx.ready().await?;
        }
        let resp = self.tx.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// An SQS JSON 1.0 call.
    async fn sqs(&mut self, op: &str, input: &Value) -> anyhow::Result<Value> {
        let headers = [
            ("content-type", "application/x-amz-json-1.0".to_string()),
            ("x-amz-target", format!("AmazonSQS.{op}")),
            ("authorization", auth("sqs")),
        ];
        let body = self.post(op, &headers, serde_json::to_vec(input)?).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// An SNS Query call; returns the XML text.
    async fn sns(&mut self, op: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let form = query_form(op, params);
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            ("authorization", auth("sns")),
        ];
        let body = self.post(op, &headers, form.into_bytes()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The form body of an SNS Query request.
fn query_form(op: &str, params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", op);
    form.append_pair("Version", "2010-03-31");
    for (k, v) in params {
        form.append_pair(k, v);
    }
    form.finish()
}

/// The text of the first `<name>` element.
fn element(xml: &str, name: &str) -> anyhow::Result<String> {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .with_context(|| format!("no {name} in {xml}"))?
        + open.len();
    let end = xml[start..]
        .find(&format!("</{name}>"))
        .with_context(|| format!("unterminated {name}"))?;
    Ok(xml[start..start + end].to_string())
}

struct Shared {
    topic_arn: String,
    published: AtomicU64,
    delivered: AtomicU64,
    total: u64,
}

async fn produce(endpoint: String, s: Arc<Shared>, body: String) -> anyhow::Result<()> {
    let mut c = Conn::open(&endpoint).await?;
    while s.published.fetch_add(1, Ordering::Relaxed) < s.total {
        c.sns(
            "Publish",
            &[
                ("TopicArn", s.topic_arn.as_str()),
                ("Message", body.as_str()),
            ],
        )
        .await?;
    }
    Ok(())
}

async fn consume(endpoint: String, s: Arc<Shared>, url: String) -> anyhow::Result<()> {
    let mut c = Conn::open(&endpoint).await?;
    let mut mine = 0;
    while mine < s.total {
        let got = c
            .sqs(
                "ReceiveMessage",
                &json!({"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}),
            )
            .await?;
        let Some(msgs) = got["Messages"].as_array().filter(|m| !m.is_empty()) else {
            continue;
        };
        let entries: Vec<Value> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| json!({"Id": i.to_string(), "ReceiptHandle": m["ReceiptHandle"]}))
            .collect();
        let out = c
            .sqs(
                "DeleteMessageBatch",
                &json!({"QueueUrl": url, "Entries": entries}),
            )
            .await?;
        let ok = out["Successful"].as_array().map_or(0, Vec::len) as u64;
        mine += ok;
        s.delivered.fetch_add(ok, Ordering::Relaxed);
    }
    Ok(())
}

pub fn main(args: SnsArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(a: SnsArgs) -> anyhow::Result<()> {
    let mut c = Conn::open(&a.endpoint).await?;
    let name = format!(
        "bench-{}-{}",
        std::process::id(),
        crate::now_nanos() % 1_000_000
    );
    let topic_arn = element(
        &c.sns("CreateTopic", &[("Name", name.as_str())]).await?,
        "TopicArn",
    )?;
    let mut urls = Vec::new();
    for i in 0..a.queues {
        let url = c
            .sqs("CreateQueue", &json!({"QueueName": format!("{name}-{i}")}))
            .await?["QueueUrl"]
            .as_str()
            .context("CreateQueue without QueueUrl")?
            .to_string();
        let arn = c
            .sqs(
                "GetQueueAttributes",
                &json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
            )
            .await?["Attributes"]["QueueArn"]
            .as_str()
            .context("no QueueArn")?
            .to_string();
        let mut params = vec![
            ("TopicArn", topic_arn.as_str()),
            ("Protocol", "sqs"),
            ("Endpoint", arn.as_str()),
        ];
        if a.raw {
            params.push(("Attributes.entry.1.key", "RawMessageDelivery"));
            params.push(("Attributes.entry.1.value", "true"));
        }
        c.sns("Subscribe", &params).await?;
        urls.push(url);
    }
    let s = Arc::new(Shared {
        topic_arn,
        published: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        total: a.messages,
    });
    let body = "x".repeat(a.size);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.producers {
        tasks.push(tokio::spawn(produce(
            a.endpoint.clone(),
            s.clone(),
            body.clone(),
        )));
    }
    for url in urls {
        tasks.push(tokio::spawn(consume(a.endpoint.clone(), s.clone(), url)));
    }
    let all = async {
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(a.timeout), all)
        .await
        .context("timed out")??;
    let secs = start.elapsed().as_secs_f64();
    let n = s.delivered.load(Ordering::Relaxed);
    println!(
        "{} published={} delivered={} seconds={:.2} msgs_per_s={:.0} queues={} producers={} delivery={}",
        a.label,
        a.messages,
        n,
        secs,
        n as f64 / secs,
        a.queues,
        a.producers,
        if a.raw { "raw" } else { "envelope" }
    );
    Ok(())
}
