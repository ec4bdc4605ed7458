//! The command-line commissioning tools for SSH users — `kp-gateway scan`, `read` and
//! `write`, mbpoll-like — on their own link to the bus, with the web page's implementation
//! (`source::modbus::tools`) and output. A serial port the service polls is locked, so a
//! tool run beside it says so instead of garbling the bus.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::modbus::codec::PointCodec;
use crate::modbus::interpret::{as_text, interpret, render_text};
use crate::modbus::types::{ByteOrder, DataType, RegisterTable};
use crate::source::modbus::tools::{self, RawValues, ScanProgress, ScanRequest};
use crate::source::modbus::{Bus, Link};

/// The commissioning subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// Find the unit IDs that answer on a bus (a cheap read of each; exceptions count).
    Scan {
        #[command(flatten)]
        bus: BusArgs,
        /// First unit ID.
        #[arg(long, default_value_t = 1)]
        from: u8,
        /// Last unit ID.
        #[arg(long, default_value_t = 247)]
        to: u8,
        /// How long to wait for each ID, ms.
        #[arg(long, default_value_t = SCAN_ID_TIMEOUT.as_millis() as u64)]
        id_timeout_ms: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read registers or bits and show every interpretation (u16 … f64 in every byte order).
    Read {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        target: Target,
        /// How many registers or bits.
        #[arg(long, short = 'n', default_value_t = 10)]
        count: u16,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one value (asks for confirmation unless --yes), then read it back.
    Write {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        target: Target,
        /// u16, i16, u32, i32, u64, i64, f32 or f64 (ignored for coils).
        #[arg(long = "type", default_value = "u16")]
        data_type: String,
        /// Byte order: ABCD, DCBA, BADC or CDAB.
        #[arg(long, default_value = "ABCD")]
        order: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        /// The value: a number, or true/false for a coil.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// List the device profiles (shipped and the site's), or print one's points.
    Profiles {
        /// A profile's id: print its points as `[[devices.points]]` TOML.
        id: Option<String>,
    },
}

/// Runs a commissioning subcommand; errors go to stderr, exit 1.
pub fn run(cmd: ToolCommand, config: &Path) -> ExitCode {
    let result = match cmd {
        ToolCommand::Scan {
            bus,
            from,
            to,
            id_timeout_ms,
            json,
        } => bus_of(&bus, config).and_then(|b| {
            let req = ScanRequest {
                first: from.min(to),
                last: to.max(from),
                timeout: Duration::from_millis(id_timeout_ms.max(1)),
            };
            scan(b, req, json)
        }),
        ToolCommand::Read {
            bus,
            target,
            count,
            json,
        } => bus_of(&bus, config).and_then(|b| read(b, &target, count, json)),
        ToolCommand::Write {
            bus,
            target,
            data_type,
            order,
            yes,
            value,
        } => bus_of(&bus, config).and_then(|b| write(b, &target, &data_type, &order, &value, yes)),
        ToolCommand::Profiles { id } => profiles(config, id.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kp-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

/// `kp-gateway profiles [ID]`: the site's directory comes from the configuration file (its
/// default when the file cannot be read).
fn profiles(config: &Path, id: Option<&str>) -> Result<(), String> {
    let dir = Config::load(config).map_or_else(
        |_| std::path::PathBuf::from("/etc/kp-gateway/profiles"),
        |c| c.profiles_dir,
    );
    let (all, problems) = crate::profiles::all(Some(&dir));
    for p in &problems {
        eprintln!("warning: {p}");
    }
    match id {
        None => {
            for p in &all {
                println!(
                    "{:<16} {} {} ({} points)",
                    p.id,
                    p.vendor,
                    p.model,
                    p.points.len()
                );
            }
            Ok(())
        }
        Some(id) => {
            let p = all
                .iter()
                .find(|p| p.id == id)
                .ok_or_else(|| format!("no profile {id:?} (kp-gateway profiles lists them)"))?;
            print!("{}", crate::profiles::points_toml(p));
            Ok(())
        }
    }
}

/// Which bus a tool talks to: one of the configuration file's, or one given here.
#[derive(Debug, Args)]
pub struct BusArgs {
    /// A bus of the configuration file (`-c`), by name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rtu", "tcp", "rtu_over_tcp"])]
    pub bus: Option<String>,
    /// Modbus RTU on this serial port (e.g. /dev/ttyUSB0).
    #[arg(long, value_name = "DEVICE")]
    pub rtu: Option<String>,
    /// Modbus TCP at IP:port.
    #[arg(long, value_name = "IP:PORT")]
    pub tcp: Option<String>,
    /// RTU framing over a TCP stream (a serial-to-Ethernet converter) at IP:port.
    #[arg(long, value_name = "IP:PORT")]
    pub rtu_over_tcp: Option<String>,
    /// RTU: baud rate.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// RTU: none, even or odd.
    #[arg(long, default_value = "none")]
    pub parity: String,
    /// RTU: stop bits.
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Time-out of each request, ms (a scan's per-ID time-out is `--id-timeout-ms`).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Where to read or write.
#[derive(Debug, Args)]
pub struct Target {
    /// Unit ID (slave address), 0–247.
    #[arg(long, short = 'a', default_value_t = 1)]
    pub unit: u8,
    /// holding, input, coil or discrete_input.
    #[arg(long, short = 't', default_value = "holding")]
    pub table: String,
    /// First address (protocol, 0-based).
    #[arg(long, short = 'r')]
    pub address: u16,
}

/// The bus described by the options (checked like a configured one).
pub fn bus_of(args: &BusArgs, config: &Path) -> Result<Bus, String> {
    if let Some(name) = &args.bus {
        let c = Config::load(config).map_err(|e| format!("{}: {e}", config.display()))?;
        return c
            .buses
            .into_iter()
            .find(|b| &b.name == name)
            .ok_or_else(|| format!("{}: no bus named {name:?}", config.display()));
    }
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let place = match (&args.rtu, &args.tcp, &args.rtu_over_tcp) {
        (Some(port), None, None) => format!(
            "kind = \"rtu\"\nport = {}\nbaud = {}\nparity = {}\nstop_bits = {}",
            q(port),
            args.baud,
            q(&args.parity),
            args.stop_bits
        ),
        (None, Some(a), None) => format!("kind = \"tcp\"\naddress = {}", q(a)),
        (None, None, Some(a)) => format!("kind = \"rtu_over_tcp\"\naddress = {}", q(a)),
        _ => return Err("give one of --bus, --rtu, --tcp or --rtu-over-tcp".into()),
    };
    let text = format!(
        "name = \"cli\"\n{place}\ntimeout_ms = {}\nretries = 0\n",
        args.timeout_ms
    );
    Config::bus_from_toml(&text).map_err(|e| e.to_string().replace("modbus.buses[0].", "--"))
}

fn table_of(t: &str) -> Result<RegisterTable, String> {
    t.parse()
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The scan's result as text (the same lines the web page shows).
pub fn render_scan(p: &ScanProgress) -> String {
    let mut out = String::new();
    for hit in &p.found {
        out.push_str(&format!("unit {:>3}: {}\n", hit.unit, hit.answer));
    }
    for g in &p.garbled {
        out.push_str(&format!(
            "unit {:>3}: garbled answer: {}\n",
            g.unit, g.answer
        ));
    }
    out.push_str(&format!(
        "found {} of {} ID(s) in {:.1} s",
        p.found.len(),
        p.done,
        p.elapsed_ms as f64 / 1000.0
    ));
    if p.lower_bound_ms > 0 {
        out.push_str(&format!(
            " (lower bound for this range: {:.1} s)",
            p.lower_bound_ms as f64 / 1000.0
        ));
    }
    if p.cancelled {
        out.push_str(", cancelled");
    }
    if let Some(e) = &p.error {
        out.push_str(&format!("; stopped: {e}"));
    }
    out.push('\n');
    out
}

/// `kp-gateway scan`.
pub fn scan(bus: Bus, req: ScanRequest, json: bool) -> Result<(), String> {
    let rt = runtime()?;
    let done = rt.block_on(async move {
        let mut link = Link::new(bus);
        let (tx, mut rx) = watch::channel(ScanProgress::default());
        let cancel = CancellationToken::new();
        let on_ctrl_c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.cancel();
            }
        });
        let tty = std::io::stderr().is_terminal();
        let show = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if tty && !p.finished {
                    eprint!(
                        "\rscanned {}/{}, {} found, ~{} s left   ",
                        p.done,
                        p.total,
                        p.found.len(),
                        p.eta_ms.div_ceil(1000)
                    );
                }
            }
            if tty {
                eprintln!();
            }
        });
        let done = tools::scan(&mut link, &req, &tx, &cancel).await;
        drop(tx);
        let _ = show.await;
        link.close().await;
        done
    });
    if json {
        println!("{}", serde_json::to_string(&done).unwrap_or_default());
    } else {
        print!("{}", render_scan(&done));
    }
    match done.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The answer to a read as text or JSON.
fn render_values(start: u16, v: &RawValues, json: bool) -> String {
    match (v, json) {
        (RawValues::Words(w), false) => format!(
            "{}as text: {:?}\n",
            render_text(&interpret(start, w)),
            as_text(w)
        ),
        (RawValues::Words(w), true) => serde_json::json!({
            "start": start, "words": w, "interpretations": interpret(start, w), "text": as_text(w)
        })
        .to_string(),
        (RawValues::Bits(b), false) => b
            .iter()
            .enumerate()
            .map(|(i, bit)| format!("{:<8} {}\n", usize::from(start) + i, u8::from(*bit)))
            .collect(),
        (RawValues::Bits(b), true) => serde_json::json!({"start": start, "bits": b}).to_string(),
    }
}

/// `kp-gateway read`.
pub fn read(bus: Bus, t: &Target, count: u16, json: bool) -> Result<(), String> {
    let table = table_of(&t.table)?;
    let rt = runtime()?;
    let got = rt.block_on(async {
        let mut link = Link::new(bus);
        let r = tools::read_range(&mut link, t.unit, table, t.address, count).await;
        link.close().await;
        r
    })?;
    let text = render_values(t.address, &got, json);
    println!("{}", text.trim_end());
    Ok(())
}

/// The codec a value is written with (`--type`, `--order`).
pub fn write_codec(table: RegisterTable, ty: &str, order: &str) -> Result<PointCodec, String> {
    let data_type = if table.is_bits() {
        DataType::Bool
    } else {
        match ty {
            "string" => return Err("strings are written from a point with a length".into()),
            "bool" => return Err("a bit of a register is written from a point".into()),
            other => DataType::parse(other, None)?,
        }
    };
    Ok(PointCodec {
        table,
        data_type,
        order: order.parse::<ByteOrder>()?,
        bit: None,
        scale: 1.0,
        offset: 0.0,
    })
}

/// `kp-gateway write`: asks for confirmation on a terminal unless `yes`.
pub fn write(
    bus: Bus,
    t: &Target,
    ty: &str,
    order: &str,
    value: &str,
    yes: bool,
) -> Result<(), String> {
    let table = table_of(&t.table)?;
    let codec = write_codec(table, ty, order)?;
    let value: Value = serde_json::from_str(value)
        .map_err(|_| format!("{value:?} is not a number, true or false"))?;
    let what = format!(
        "write {value} as {ty} {order} to unit {} {} {} on {}",
        t.unit,
        table.name(),
        t.address,
        bus.name
    );
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(format!("{what}: add --yes to confirm"));
        }
        eprint!("{what}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Err("not written".into());
        }
    }
    let rt = runtime()?;
    let back = rt.block_on(async {
        let mut link = Link::new(bus);
        let r = tools::write_value(&mut link, t.unit, &codec, t.address, &value).await;
        link.close().await;
        r
    })?;
    println!("written; read back:");
    println!("{}", render_values(t.address, &back, false).trim_end());
    Ok(())
}

/// The default per-ID time-out of a scan.
pub const SCAN_ID_TIMEOUT: Duration = Duration::from_millis(100);
