//! `kp-gateway` binary: command line, logging, signals; everything else is in the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kp_gateway::config::Config;
use kp_gateway::supervisor::{self, RunOptions};
use tokio_util::sync::CancellationToken;

/// Edge gateway: Modbus and serial sensors to Kaa 1/KP endpoints, with a store-and-forward
/// buffer that never loses a reading.
#[derive(Debug, Parser)]
#[command(name = "kp-gateway", version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/kp-gateway/gateway.toml"
    )]
    config: PathBuf,
    /// Run the built-in demo: simulated devices and the in-process core, no hardware.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// Override `gateway.state_dir` (where the buffer and core databases live).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log a status line every N seconds (0: never; the demo defaults to 5).
    #[arg(long, value_name = "SECS")]
    status_every: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file, print every problem, and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Read a password from stdin and print its Argon2id hash for `core.credentials`.
    HashPassword,
    /// Inspect, resend or purge batches the upstream refused (4xx).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Print every dead letter as one JSON object per line.
    List,
    /// Put dead letters back in the queue (all, or the given sequence numbers).
    Retry { seqs: Vec<i64> },
    /// Delete dead letters for good (all, or the given sequence numbers).
    Purge { seqs: Vec<i64> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(config) => {
                for w in config.warnings() {
                    println!("{}: warning: {w}", file.display());
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Some(Command::HashPassword) => hash_password(),
        Some(Command::DeadLetters { action }) => dead_letters(&cli.config, action),
        None => run(cli),
    }
}

fn dead_letters(config: &std::path::Path, action: DeadLetterAction) -> ExitCode {
    use kp_gateway::buffer::dead_letter;
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    let path = &config.buffer.path;
    let result = match action {
        DeadLetterAction::List => dead_letter::list(path).map(|rows| {
            for r in &rows {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
            rows.len()
        }),
        DeadLetterAction::Retry { seqs } => {
            dead_letter::retry(path, &seqs).inspect(|n| println!("{n} moved back to the queue"))
        }
        DeadLetterAction::Purge { seqs } => {
            dead_letter::purge(path, &seqs).inspect(|n| println!("{n} purged"))
        }
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn hash_password() -> ExitCode {
    if std::io::stdin().is_terminal() {
        eprintln!("password (one line):");
    }
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim_end().is_empty() {
        eprintln!("no password on stdin");
        return ExitCode::from(2);
    }
    match platform_core::ccm::hash_password(line.trim_end_matches(['\r', '\n'])) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> ExitCode {
    // TLS (upstream) uses rustls with the ring provider; install it once, first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = if cli.demo {
        Ok(kp_gateway::DEMO_CONFIG.to_owned())
    } else {
        std::fs::read_to_string(&cli.config).map_err(|e| {
            kp_gateway::config::ConfigErrors(vec![format!(
                "{}: cannot read: {e}",
                cli.config.display()
            )])
        })
    };
    let loaded = text.clone().and_then(|t| Config::from_toml(&t));
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            let source = if cli.demo {
                "demo config".into()
            } else {
                cli.config.display().to_string()
            };
            eprintln!("{source}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = cli
        .state_dir
        .or_else(|| cli.demo.then(|| PathBuf::from("kp-gateway-demo")))
    {
        rebase_state_dir(&mut config, dir);
    }
    init_logging(config.log_level);
    for w in config.warnings() {
        log::warn!("configuration: {w}");
    }
    if cli.demo {
        demo_port_fallback(&mut config);
    }
    let status_every = match cli.status_every {
        Some(0) => None,
        Some(n) => Some(Duration::from_secs(n)),
        None if cli.demo => Some(Duration::from_secs(5)),
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // Install the handlers before anything else, so an early SIGTERM is a clean stop.
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => {
                tokio::spawn(watch_signals(term, int, shutdown.clone()));
            }
            _ => log::error!("cannot install signal handlers; stop with SIGKILL only"),
        }
        let opts = RunOptions {
            status_every,
            config_text: text.ok(),
        };
        supervisor::run(config, opts, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo's core wants 127.0.0.1:1883 and :8080; if either is taken, take a free port.
fn demo_port_fallback(config: &mut Config) {
    let Some(core) = &mut config.core else {
        return;
    };
    let mut listens = vec![&mut core.mqtt.listen];
    if let Some(http) = &mut core.http {
        listens.push(&mut http.listen);
    }
    for listen in listens {
        if std::net::TcpListener::bind(*listen).is_err() {
            log::warn!("{listen} is taken; the demo core takes a free port instead (logged below)");
            listen.set_port(0);
        }
    }
}

/// Moves every state file that lives under the old state dir to `dir`.
fn rebase_state_dir(config: &mut Config, dir: PathBuf) {
    let old = config.state_dir.clone();
    let rebase = |p: &mut PathBuf| {
        if let Ok(rel) = p.strip_prefix(&old) {
            *p = dir.join(rel);
        }
    };
    rebase(&mut config.buffer.path);
    if let Some(core) = &mut config.core {
        rebase(&mut core.database);
    }
    config.state_dir = dir;
}

fn init_logging(level: log::LevelFilter) {
    // Under systemd (JOURNAL_STREAM set) log to the journal with structured fields.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
}

async fn watch_signals(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
    shutdown.cancel();
}
