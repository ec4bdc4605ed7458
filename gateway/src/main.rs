//! `kp-gateway` binary: command line, logging, signals; everything else is in the library.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kp_gateway::commission;
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
        global = true,
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
    /// Forget the web page's admin password and print a new one-time setup code (root).
    ResetAdmin,
    /// The configuration history kept in the state directory.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    #[command(flatten)]
    Tool(Box<commission::ToolCommand>),
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// List the kept versions (newest first) and which one is in force.
    History,
    /// Use the configuration file again at the next start (the history stays).
    UseFile,
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
                let parts = kp_gateway::config::dropins::fragments(&file).unwrap_or_default();
                for p in &parts {
                    println!("{}: merged", p.display());
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
        Some(Command::ResetAdmin) => reset_admin(&cli.config, cli.state_dir.as_deref()),
        Some(Command::Config { action }) => {
            config_history(&cli.config, cli.state_dir.as_deref(), action)
        }
        Some(Command::Tool(cmd)) => commission::run(*cmd, &cli.config),
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

/// The state directory the service uses: `--state-dir`, else the file's.
fn state_dir_of(
    config: &std::path::Path,
    over: Option<&std::path::Path>,
) -> Result<PathBuf, ExitCode> {
    if let Some(dir) = over {
        return Ok(dir.to_owned());
    }
    match Config::load(config) {
        Ok(c) => Ok(c.state_dir),
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            Err(ExitCode::from(2))
        }
    }
}

fn reset_admin(config: &std::path::Path, over: Option<&std::path::Path>) -> ExitCode {
    let dir = match state_dir_of(config, over) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match kp_gateway::web::auth::reset_admin(&dir) {
        Ok(code) => {
            println!("The web page's admin password is forgotten; every session is ended.");
            println!("Open the page and claim the gateway again with the setup code: {code}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{}: {e} (run as root or as the service user)",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn config_history(
    config: &std::path::Path,
    over: Option<&std::path::Path>,
    action: ConfigAction,
) -> ExitCode {
    let dir = match state_dir_of(config, over) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let store = kp_gateway::config_store::ConfigStore::new(&dir);
    match action {
        ConfigAction::History => {
            let active = store.active_number();
            for v in store.list() {
                let mark = if Some(v.number) == active {
                    " (in force)"
                } else {
                    ""
                };
                println!(
                    "{:>4}{mark}  {}  {:<12}  {}  {}  {}",
                    v.number,
                    v.ts_ms,
                    v.origin.as_str(),
                    v.who,
                    v.from,
                    v.note
                );
            }
            if active.is_none() {
                println!("in force: the configuration file {}", config.display());
            }
            ExitCode::SUCCESS
        }
        ConfigAction::UseFile => match store.clear_active() {
            Ok(true) => {
                println!("{} is used again from the next start (restart the service); the history stays.", config.display());
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("the configuration file is already in use");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
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
        kp_gateway::config::dropins::read(&cli.config)
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
    if let Some(why) = root_on_a_service_dir(&config.state_dir) {
        eprintln!("{why}");
        return ExitCode::from(2);
    }
    init_logging(config.log_level);
    let mut text = text.ok();
    if !cli.demo {
        if let Some(t) = &text {
            if let Some((active_config, active_text)) = active_version(&cli.config, t, &config) {
                config = active_config;
                text = Some(active_text);
            }
        }
    }
    // Before any thread starts: the core's request path wants glibc's larger per-thread
    // cache, which only a fresh start of the program can set (see `malloc_tuning`).
    if config.core.is_some() {
        if let Err(why) = kp_gateway::malloc_tuning::reexec_with_tcache() {
            log::warn!("{why}");
        }
    }
    for w in config.warnings() {
        log::warn!("configuration: {w}");
    }
    if let Some(w) = kp_gateway::systemd::fit_open_files(config.open_files_needed()) {
        log::warn!("{w}");
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
    // Bridge mode only: the embedded core's request path runs much of the code, and
    // paging it out under load showed as a 45 ms p99 in the core benchmark.
    let bridge_only = config.core.is_none();
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
        // SIGHUP (systemctl reload): read the configuration again, apply it if valid.
        let reload = std::sync::Arc::new(tokio::sync::Notify::new());
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let reload = reload.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        log::info!("SIGHUP received: reading the configuration again");
                        reload.notify_one();
                    }
                });
            }
            Err(e) => log::warn!("cannot install the SIGHUP handler (no reload): {e}"),
        }
        if bridge_only {
            tokio::spawn(async {
                tokio::time::sleep(kp_gateway::footprint::AFTER_START).await;
                let n = kp_gateway::footprint::give_back_code_pages();
                log::debug!("footprint: {n} bytes of code mappings handed back after start-up");
            });
        }
        let opts = RunOptions {
            status_every,
            config_text: text,
            config_file: (!cli.demo).then(|| cli.config.clone()),
            reload: Some(reload),
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

/// The version of the configuration history in force, when one is (saved on the web page
/// or pushed over 7/CMP): it wins over the file. Otherwise the file is recorded in the
/// history (when it changed) and `None` says "use the file".
fn active_version(
    path: &std::path::Path,
    file_text: &str,
    file: &Config,
) -> Option<(Config, String)> {
    let store = kp_gateway::config_store::ConfigStore::new(&file.state_dir);
    let Some((v, text)) = store.active() else {
        if let Err(e) = store.note_file(path, file_text) {
            log::warn!("{e}");
        }
        return None;
    };
    match Config::from_toml(&text) {
        Ok(mut c) => {
            // The same paths as the file's (a --state-dir override included).
            c.state_dir = file.state_dir.clone();
            c.buffer.path = file.buffer.path.clone();
            if let (Some(core), Some(fc)) = (&mut c.core, &file.core) {
                core.database = fc.database.clone();
            }
            log::info!(
                "configuration: version {} of the history is in force ({}, {}); {} is not read. `kp-gateway config use-file` goes back to the file",
                v.number,
                v.origin.as_str(),
                v.note,
                path.display()
            );
            Some((c, text))
        }
        Err(e) => {
            log::error!(
                "configuration: version {} of the history no longer validates ({}); using {} instead",
                v.number,
                e.0.join("; "),
                path.display()
            );
            None
        }
    }
}

/// Run as root on a state directory that belongs to another user (the package's
/// `kp-gateway`), the files made now would be root's and the service could not write them
/// afterwards ("attempt to write a readonly database"). Refused, with the way out.
fn root_on_a_service_dir(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let owner = std::fs::metadata(dir).ok()?.uid();
    (owner != 0).then(|| {
        format!(
            "refusing to run as root on {} (it belongs to uid {owner}, the service's user): files made now \
             would be root's and the service could not write them later. Start the service instead \
             (`sudo systemctl start kp-gateway`), or run as its user (`sudo -u kp-gateway kp-gateway ...`), \
             or use another --state-dir",
            dir.display()
        )
    })
}

/// The demo wants 127.0.0.1:1883, :8080 and :8088; any that is taken becomes a free port.
fn demo_port_fallback(config: &mut Config) {
    let Some(core) = config.core.as_mut() else {
        return;
    };
    let mut listens = vec![&mut core.mqtt.listen];
    if let Some(http) = &mut core.http {
        listens.push(&mut http.listen);
    }
    if let Some(web) = &mut config.web {
        listens.push(&mut web.listen);
    }
    for listen in listens {
        if std::net::TcpListener::bind(*listen).is_err() {
            log::warn!("{listen} is taken; the demo takes a free port instead (logged below)");
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

/// Logs to the journal (under systemd) or stderr, with a copy of the last lines in
/// memory for the web page.
fn init_logging(level: log::LevelFilter) {
    // Under systemd (JOURNAL_STREAM set) log to the journal with structured fields.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if kp_gateway::logring::install(Box::new(j), level).is_ok() {
                return;
            }
        }
    }
    let logger = env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .build();
    // RUST_LOG may ask for more than the config's level.
    let max = logger.filter().max(level);
    let _ = kp_gateway::logring::install(Box::new(logger), max);
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
