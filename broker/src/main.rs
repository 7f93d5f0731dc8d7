//! The `wharf` binary: configuration, logging, listeners, signals, graceful shutdown.
//!
//! Startup: load and validate the configuration; set up logging; bind every listener (an address
//! in use fails here, before the data directory is touched); open the engine (recovery); start
//! accepting. Shutdown on SIGTERM or SIGINT: stop accepting, let sessions close politely (AMQP
//! connection.close 320) for up to `shutdown_timeout_secs`, then close the engine, which flushes
//! the message store. Exit 0. A second signal skips the wait for connections.
//!
//! Exit codes: 0 after a clean shutdown, 1 for a fatal startup error, 2 for bad configuration
//! (a TLS certificate or key that cannot be read or used included).
//!
//! `wharf certs ...` makes development certificates instead (certs/README.md).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use wharf::aws::sns_delivery::SqsDeadLetters;
use wharf::aws::sns_http::SnsHttp;
use wharf::aws::AwsContext;
use wharf::config::{self, Config, LoadError, Loaded, LISTENERS};
use wharf::engine::Engine;
use wharf::net::tls::Tls;
use wharf::net::ws::{self, WsProtocol};
use wharf::net::{self, BoundListener, Listeners, Peer};
use wharf::protocol::amqp::AmqpContext;
use wharf::protocol::mqtt::MqttContext;
use wharf::protocol::stomp::StompContext;
use wharf::protocol::Service;

/// mimalloc rather than the system allocator: see its entry in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long tasks still running after shutdown (connections past the timeout) get to be
/// dropped before the process exits anyway.
const RUNTIME_DROP_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let (config, warnings) = match config::load(std::env::args_os(), std::env::vars_os()) {
        Ok(Loaded::Run { config, warnings }) => (config, warnings),
        Ok(Loaded::PrintConfig { toml, warnings }) => {
            for w in warnings {
                eprintln!("wharf: warning: {w}");
            }
            print!("{toml}");
            return ExitCode::SUCCESS;
        }
        Ok(Loaded::Certs(args)) => return make_certs(&args),
        // --help and --version land here too: clap prints them and exits 0.
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Invalid(problems)) => {
            for p in problems {
                eprintln!("wharf: configuration error: {p}");
            }
            return ExitCode::from(2);
        }
    };

    // The certificate and key are read now, so that a bad file is a configuration error before
    // anything starts.
    let tls = match config.tls_settings().map(|s| Tls::load(&s)).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("wharf: configuration error: {e}");
            return ExitCode::from(2);
        }
    };

    init_logging(&config.log);
    for w in warnings {
        tracing::warn!("{w}");
    }
    if !config.transparent_huge_pages {
        // Before the runtime and the engine allocate: pages touched from now on are 4 KiB ones.
        if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
            tracing::debug!(error = %e, "cannot turn transparent huge pages off");
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharf-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(Arc::new(config), tls));
    // Connections that outlived the shutdown timeout are dropped here.
    runtime.shutdown_timeout(RUNTIME_DROP_TIMEOUT);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line, whatever the log filter says.
            eprintln!("wharf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; colour only on a terminal (tests and log collectors parse the lines) and
/// never when `NO_COLOR` is set (no-color.org).
fn init_logging(filter: &str) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // The filter was checked by Config::validate, so this fallback is never taken.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// `wharf certs`: writes the files and says how to use them.
fn make_certs(args: &wharf_certs::CertsArgs) -> ExitCode {
    match wharf_certs::generate(args) {
        Ok(written) => {
            println!(
                "Development certificates written to {} (not for production).",
                args.out.display()
            );
            println!("Configuration using them:\n\n{}", written.config_snippet());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wharf certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts accepting on `b` for `service`, each connection after a TLS handshake when `tls` is
/// given (the handshake runs in the connection's own task, never in the accept loop).
fn listen<P: Service>(
    listeners: &mut Listeners,
    b: BoundListener,
    service: Arc<P>,
    tls: Option<Arc<Tls>>,
) {
    // Two handlers rather than one that branches: a connection's task is as big as its future,
    // and one future that may also hold a TLS stream and a session over it is the size of both
    // (a plain MQTT connection's was 3,856 bytes instead of 1,272).
    match tls {
        None => listeners.serve(b, move |tcp, addr, token| {
            service.clone().serve(tcp, Peer::from(addr), token)
        }),
        Some(tls) => listeners.serve(b, move |tcp, addr, token| {
            let (service, tls) = (service.clone(), tls.clone());
            async move {
                if let Some((stream, peer)) = tls.accept(tcp, addr, &token).await {
                    service.serve(stream, peer, token).await;
                }
            }
        }),
    }
}

/// The sessions a WebSocket connection can be handed to, by subprotocol.
struct WsServices {
    mqtt: Arc<MqttContext>,
    stomp: Arc<StompContext>,
    handshake_timeout: Duration,
    limits: ws::MessageLimits,
}

impl Service for WsServices {
    /// Upgrades `stream` to WebSocket and runs the session of the subprotocol the client picked.
    async fn serve<S>(self: Arc<Self>, stream: S, peer: Peer, token: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let accepted = tokio::select! {
            () = token.cancelled() => return,
            r = ws::accept(stream, self.handshake_timeout, self.limits) => r,
        };
        let (stream, protocol, subprotocol) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(peer = %peer, error = %e, "WebSocket upgrade refused");
                return;
            }
        };
        tracing::debug!(subprotocol = %subprotocol, "WebSocket upgraded");
        match protocol {
            WsProtocol::Mqtt => self.mqtt.clone().serve(stream, peer, token).await,
            WsProtocol::Stomp => self.stomp.clone().serve(stream, peer, token).await,
        }
    }
}

async fn run(config: Arc<Config>, tls: Option<Tls>) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives right after the "listening" line must find them,
    // or the default action would kill the process without a clean shutdown.
    let mut signals = Signals::new()?;

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.data_dir.display(),
        memory_high_watermark_bytes = config.memory_high_watermark_bytes,
        fsync = config.fsync,
        "starting"
    );

    // Each bound listener, with whether it is a TLS row.
    let mut bound: Vec<(BoundListener, bool)> = Vec::new();
    for spec in LISTENERS {
        match (spec.listen)(&config).addr() {
            Some(_) if spec.tls && tls.is_none() => tracing::info!(
                protocol = %spec.protocol,
                "listener off: no TLS certificate (set tls.cert_file and tls.key_file)"
            ),
            Some(addr) => bound.push((net::bind(spec.protocol, addr)?, spec.tls)),
            None => tracing::info!(protocol = %spec.protocol, "listener off"),
        }
    }
    if bound.is_empty() {
        tracing::warn!("every listener is off: nothing will connect");
    }

    let engine_config = config.engine_config();
    let data_dir = engine_config.data_dir.clone();
    // Recovery reads the store from disk: keep it off the other workers' way.
    let engine = tokio::task::block_in_place(|| Engine::open(engine_config)).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the data directory {}: {e:#}",
            data_dir.display()
        )
    })?;

    let shutdown = CancellationToken::new();
    let mut listeners = Listeners::new(shutdown.clone());
    let amqp_ctx = Arc::new(AmqpContext {
        engine: engine.clone(),
        config: config.amqp_config(),
    });
    let mqtt_ctx = MqttContext::new(engine.clone(), config.mqtt_config())?;
    mqtt_ctx.enable_parking(listeners.tracker(), shutdown.clone())?;
    let aws_ctx = AwsContext::new(engine.clone(), config.aws_config(), &config.data_dir)?;
    // SNS delivery to HTTP/S subscribers; resumes the posts pending from before a restart.
    let sns_http = SnsHttp::start(
        &config.data_dir,
        config.sns_http_config(),
        Arc::new(SqsDeadLetters {
            engine: engine.clone(),
            context: Arc::downgrade(&aws_ctx),
        }),
        shutdown.clone(),
    )?;
    aws_ctx
        .sns
        .attach_http(sns_http.clone())
        .map_err(anyhow::Error::msg)?;
    if let Some((b, _)) = bound.iter().find(|(b, _)| b.protocol() == "http") {
        // SNS envelopes name the broker (UnsubscribeURL): the address it answers on.
        let addr = b.local_addr();
        aws_ctx.sns.set_base_url(if addr.ip().is_unspecified() {
            format!("http://localhost:{}", addr.port())
        } else {
            format!("http://{addr}")
        });
    }
    if !config.sigv4 {
        tracing::warn!("sigv4 is off: AWS API requests are not authenticated");
    }
    let stomp_ctx = Arc::new(StompContext {
        engine: engine.clone(),
        config: config.stomp_config(),
    });
    let ws_services = Arc::new(WsServices {
        mqtt: mqtt_ctx.clone(),
        stomp: stomp_ctx.clone(),
        handshake_timeout: config.ws_handshake_timeout(),
        limits: config.ws_message_limits(),
    });
    let tls = tls.map(Arc::new);
    for (b, is_tls) in bound {
        let tls = match (is_tls, &tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls.clone()),
            // TLS rows are bound only when a certificate is configured (see above).
            (true, None) => unreachable!("{} bound without a certificate", b.protocol()),
        };
        match b.protocol() {
            "amqp" | "amqps" => listen(&mut listeners, b, amqp_ctx.clone(), tls),
            "mqtt" | "mqtts" => listen(&mut listeners, b, mqtt_ctx.clone(), tls),
            "stomp" | "stomps" => listen(&mut listeners, b, stomp_ctx.clone(), tls),
            "ws" | "wss" => listen(&mut listeners, b, ws_services.clone(), tls),
            "http" => listen(&mut listeners, b, aws_ctx.clone(), tls),
            other => unreachable!("listener {other} has a row in LISTENERS but no serve arm"),
        }
    }

    let name = signals.recv().await;
    tracing::info!(
        signal = name,
        timeout_secs = config.shutdown_timeout_secs,
        "shutting down"
    );
    shutdown.cancel();
    tokio::select! {
        _ = listeners.shutdown(config.shutdown_timeout()) => {}
        name = signals.recv() => {
            tracing::warn!(signal = name, "second signal: not waiting for connections");
        }
    }
    drop(amqp_ctx);
    drop(mqtt_ctx);
    drop(stomp_ctx);
    drop(ws_services);
    drop(aws_ctx);
    // Delivery tasks stop at the cancelled token; what they had not delivered stays pending.
    sns_http.closed().await;
    // Flushes and fsyncs the store; blocking, so off the async workers' way.
    tokio::task::block_in_place(|| engine.close());
    Ok(())
}

/// SIGTERM (service managers, `kill`) and SIGINT (Ctrl-C).
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
