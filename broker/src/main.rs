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

use wharf::config::{self, Config, LoadError, Loaded, LISTENERS};
use wharf::engine::Engine;
use wharf::net::tls::Tls;
use wharf::net::ws::{self, WsProtocol};
use wharf::net::{self, BoundListener, Listeners, Peer};
use wharf::protocol::amqp::{self, AmqpContext};
use wharf::protocol::mqtt::{self, MqttContext};

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

/// The sessions a WebSocket connection can be handed to, by subprotocol.
struct WsServices {
    mqtt: Arc<MqttContext>,
    handshake_timeout: Duration,
}

/// Upgrades `stream` to WebSocket and runs the session of the subprotocol the client picked.
/// STOMP: add `WsProtocol::Stomp => stomp::serve(stream, peer, svc.stomp.clone(), token).await`
/// once net/ws.rs maps v1x.stomp to it.
async fn serve_websocket<S>(stream: S, peer: Peer, svc: Arc<WsServices>, token: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = tokio::select! {
        () = token.cancelled() => return,
        r = ws::accept(stream, svc.handshake_timeout) => r,
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
        WsProtocol::Mqtt => mqtt::serve(stream, peer, svc.mqtt.clone(), token).await,
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

    let mut bound: Vec<BoundListener> = Vec::new();
    for spec in LISTENERS {
        match (spec.listen)(&config).addr() {
            Some(_) if spec.tls && tls.is_none() => tracing::info!(
                protocol = %spec.protocol,
                "listener off: no TLS certificate (set tls.cert_file and tls.key_file)"
            ),
            Some(addr) => bound.push(net::bind(spec.protocol, addr)?),
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
    let ws_services = Arc::new(WsServices {
        mqtt: mqtt_ctx.clone(),
        handshake_timeout: config.ws_handshake_timeout(),
    });
    // Only TLS rows are bound without a certificate (see above), so this is set for them.
    let tls = tls.map(Arc::new);
    let tls_of = |protocol: &str| {
        tls.clone()
            .unwrap_or_else(|| unreachable!("TLS listener {protocol} bound without a certificate"))
    };
    for b in bound {
        match b.protocol() {
            "amqp" => {
                let ctx = amqp_ctx.clone();
                listeners.serve(b, move |stream, peer, token| {
                    amqp::serve(stream, peer, ctx.clone(), token)
                });
            }
            "mqtt" => {
                let ctx = mqtt_ctx.clone();
                listeners.serve(b, move |stream, peer, token| {
                    mqtt::serve(stream, peer, ctx.clone(), token)
                });
            }
            "amqps" => {
                let (ctx, tls) = (amqp_ctx.clone(), tls_of("amqps"));
                listeners.serve(b, move |tcp, addr, token| {
                    let (ctx, tls) = (ctx.clone(), tls.clone());
                    async move {
                        if let Some((stream, peer)) = tls.accept(tcp, addr, &token).await {
                            amqp::serve(stream, peer, ctx, token).await;
                        }
                    }
                });
            }
            "mqtts" => {
                let (ctx, tls) = (mqtt_ctx.clone(), tls_of("mqtts"));
                listeners.serve(b, move |tcp, addr, token| {
                    let (ctx, tls) = (ctx.clone(), tls.clone());
                    async move {
                        if let Some((stream, peer)) = tls.accept(tcp, addr, &token).await {
                            mqtt::serve(stream, peer, ctx, token).await;
                        }
                    }
                });
            }
            "ws" => {
                let svc = ws_services.clone();
                listeners.serve(b, move |tcp, addr, token| {
                    serve_websocket(tcp, Peer::from(addr), svc.clone(), token)
                });
            }
            "wss" => {
                let (svc, tls) = (ws_services.clone(), tls_of("wss"));
                listeners.serve(b, move |tcp, addr, token| {
                    let (svc, tls) = (svc.clone(), tls.clone());
                    async move {
                        if let Some((stream, peer)) = tls.accept(tcp, addr, &token).await {
                            serve_websocket(stream, peer, svc, token).await;
                        }
                    }
                });
            }
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
    drop(ws_services);
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
