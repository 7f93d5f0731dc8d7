//! The `wharf` binary: configuration, logging, listeners, signals, graceful shutdown.
//!
//! Startup: load and validate the configuration; set up logging; bind every listener (an address
//! in use fails here, before the data directory is touched); open the engine (recovery); start
//! accepting. Shutdown on SIGTERM or SIGINT: stop accepting, let sessions close politely (AMQP
//! connection.close 320) for up to `shutdown_timeout_secs`, then close the engine, which flushes
//! the message store. Exit 0. A second signal skips the wait for connections.
//!
//! Exit codes: 0 after a clean shutdown, 1 for a fatal startup error, 2 for bad configuration.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use wharf::aws::{self, AwsContext};
use wharf::config::{self, Config, LoadError, Loaded, LISTENERS};
use wharf::engine::Engine;
use wharf::net::{self, BoundListener, Listeners};
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
        // --help and --version land here too: clap prints them and exits 0.
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Invalid(problems)) => {
            for p in problems {
                eprintln!("wharf: configuration error: {p}");
            }
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
    let result = runtime.block_on(run(Arc::new(config)));
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

async fn run(config: Arc<Config>) -> anyhow::Result<()> {
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
        if let Some(addr) = (spec.listen)(&config).addr() {
            bound.push(net::bind(spec.protocol, addr)?);
        } else {
            tracing::info!(protocol = %spec.protocol, "listener off");
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
    let aws_ctx = AwsContext::new(engine.clone(), config.aws_config(), &config.data_dir)?;
    if !config.sigv4 {
        tracing::warn!("sigv4 is off: AWS API requests are not authenticated");
    }
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
            "http" => {
                let ctx = aws_ctx.clone();
                listeners.serve(b, move |stream, peer, token| {
                    aws::serve(stream, peer, ctx.clone(), token)
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
    drop(aws_ctx);
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
