//! The `multiprocess` command: serve a manager standalone, look at a running one, and look at a
//! pool on a broker.
//!
//! ```text
//! multiprocess manager serve  --address 0.0.0.0:5000 --authkey-file key [--tls-cert c.pem --tls-key k.pem | --python [--share get_queue=Queue]]
//! multiprocess manager status --address 10.0.0.7:5000 --authkey-file key [--tls-ca ca.pem [--tls-name NAME]]
//! multiprocess manager stop   --address ... --authkey-file key
//! multiprocess pool status    --redis redis://10.0.0.9:6379 [--pool NAME]
//! ```
//!
//! An address is `host:port` (TCP), `unix:PATH` (a socket file) or `@name` (a Linux abstract name).
//! The key is the whole content of the key file (keep it unreadable to others); it is mandatory:
//! a manager reachable from the network must require one. Logs go to stderr through `tracing`
//! (`RUST_LOG=debug` for more).

use clap::{Args, Parser, Subcommand};
use multiprocess::manager::python::PythonServer;
use multiprocess::manager::{Manager, Server};
use multiprocess::{Address, Listener};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "multiprocess",
    version,
    about = "Serve and inspect multiprocess managers, and inspect pools on a broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A manager server: shared dicts, lists, namespaces, values and locks.
    #[command(subcommand)]
    Manager(ManagerCommand),
    /// A pool on a broker (Redis Streams): its workers and tasks.
    #[command(subcommand)]
    Pool(PoolCommand),
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Lists a pool's live workers, its tasks queued, in flight, reclaimed and lost, and its dead
    /// consumers (every pool on the broker when no --pool is given).
    Status(PoolStatusArgs),
}

#[derive(Args)]
struct PoolStatusArgs {
    /// The broker: `redis://[:password@]host[:port][/db]`.
    #[arg(long)]
    redis: String,
    /// The pool's name (default: every pool on the broker).
    #[arg(long)]
    pool: Option<String>,
}

#[derive(Subcommand)]
enum ManagerCommand {
    /// Serves a manager until stopped (Ctrl-C, or `multiprocess manager stop`).
    Serve(Serve),
    /// Lists a running manager's objects and clients.
    Status(Remote),
    /// Stops a running manager.
    Stop(Remote),
}

#[derive(Args)]
struct Where {
    /// `host:port`, `unix:PATH` or `@name`.
    #[arg(long)]
    address: String,
    /// A file whose content is the key.
    #[arg(long)]
    authkey_file: PathBuf,
}

#[derive(Args)]
struct Serve {
    #[command(flatten)]
    at: Where,
    /// The server's certificate chain (PEM), to serve over TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serves Python clients (`multiprocessing.managers.SyncManager(address, authkey).connect()`)
    /// with Python's protocol and pickles, instead of this crate's clients.
    #[arg(long, conflicts_with = "tls_cert")]
    python: bool,
    /// With --python: one object of type KIND (Queue, dict, list, Lock, ...) that every client's
    /// TYPEID() returns, as a Python `BaseManager.register('get_queue', callable=...)` serves
    /// (repeatable: --share get_queue=Queue --share get_dict=dict).
    #[arg(long, value_name = "TYPEID=KIND", requires = "python")]
    share: Vec<String>,
    /// With --python: give back the semaphore slots a dead client process had taken (off by
    /// default, as in CPython: see `PythonServer::give_back_slots`).
    #[arg(long, requires = "python")]
    give_back_slots: bool,
}

#[derive(Args)]
struct Remote {
    #[command(flatten)]
    at: Where,
    /// The certificates (PEM) to trust, to connect over TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate carries (default: the address's IP).
    #[arg(long, requires = "tls_ca")]
    tls_name: Option<String>,
}

fn address(text: &str) -> Result<Address, String> {
    match text.strip_prefix("unix:") {
        Some(path) => Ok(Address::Unix(path.into())),
        None => text
            .parse()
            .map_err(|e| format!("{text:?} is not an address: {e}")),
    }
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn key(at: &Where) -> Result<Vec<u8>, String> {
    let key = read(&at.authkey_file, "key file")?;
    if key.is_empty() {
        return Err(format!(
            "the key file {} is empty",
            at.authkey_file.display()
        ));
    }
    Ok(key)
}

fn serve(args: Serve) -> Result<(), String> {
    let at = address(&args.at.address)?;
    let key = key(&args.at)?;
    let mut b = Listener::builder(&at).authkey(&key);
    if let (Some(cert), Some(k)) = (&args.tls_cert, &args.tls_key) {
        let config =
            multiprocess::tls::server_config(&read(cert, "certificate")?, &read(k, "key")?)
                .map_err(|e| format!("TLS: {e}"))?;
        b = b.tls(config);
    }
    let listener = b
        .bind()
        .map_err(|e| format!("cannot listen at {at}: {e}"))?;
    if args.python {
        let mut server = PythonServer::new(listener)
            .map_err(|e| e.to_string())?
            .give_back_slots(args.give_back_slots);
        for s in &args.share {
            let Some((typeid, kind)) = s.split_once('=') else {
                return Err(format!(
                    "--share {s:?}: expected TYPEID=KIND, such as get_queue=Queue"
                ));
            };
            server = server
                .share(typeid, kind)
                .map_err(|e| format!("--share {s:?}: {e}"))?;
        }
        tracing::info!("manager serving Python clients at {}", server.address());
        server.serve().map_err(|e| e.to_string())?;
        tracing::info!("manager stopped");
        return Ok(());
    }
    let server = Server::new(listener).map_err(|e| e.to_string())?;
    let tls = if args.tls_cert.is_some() {
        " over TLS"
    } else {
        ""
    };
    tracing::info!("manager serving at {}{tls}", server.address());
    server.serve().map_err(|e| e.to_string())?;
    tracing::info!("manager stopped");
    Ok(())
}

fn connect(args: &Remote) -> Result<Manager, String> {
    let at = address(&args.at.address)?;
    let key = key(&args.at)?;
    let m = match &args.tls_ca {
        None => Manager::connect(&at, &key),
        Some(ca) => {
            let config = multiprocess::tls::client_config(&read(ca, "CA certificates")?)
                .map_err(|e| format!("TLS: {e}"))?;
            Manager::connect_with(
                multiprocess::Client::builder(&at)
                    .authkey(&key)
                    .tls(config)
                    .server_name(args.tls_name.clone().unwrap_or_else(|| match &at {
                        Address::Tcp(a) => a.ip().to_string(),
                        _ => "localhost".into(),
                    })),
            )
        }
    };
    m.map_err(|e| e.to_string())
}

fn status(args: Remote) -> Result<(), String> {
    let m = connect(&args)?;
    let s = m.status().map_err(|e| e.to_string())?;
    println!("manager at {}", m.address());
    println!("{} objects", s.objects.len());
    println!(
        "  {:>6}  {:<22} {:<24} {:>8} {:>6} {:>8}",
        "id", "kind", "name", "entries", "holds", "version"
    );
    for o in &s.objects {
        println!(
            "  {:>6}  {:<22} {:<24} {:>8} {:>6} {:>8}",
            o.id,
            match &o.served {
                Some(name) => format!("Served({name})"),
                None => format!("{:?}", o.kind),
            },
            o.name.as_deref().unwrap_or("-"),
            o.len,
            o.holds,
            o.version
        );
    }
    println!("{} clients (this one included)", s.clients.len());
    println!(
        "  {:>6}  {:<28} {:>6} {:>10}",
        "id", "peer", "holds", "requests"
    );
    for c in &s.clients {
        println!(
            "  {:>6}  {:<28} {:>6} {:>10}",
            c.id, c.peer, c.holds, c.requests
        );
    }
    Ok(())
}

fn pool_status(args: PoolStatusArgs) -> Result<(), String> {
    use multiprocess::cluster;
    let pools = match args.pool {
        Some(p) => vec![p],
        None => cluster::pools(&args.redis).map_err(|e| e.to_string())?,
    };
    if pools.is_empty() {
        println!("no pool on this broker");
    }
    for name in pools {
        let s = cluster::status(&args.redis, &name).map_err(|e| e.to_string())?;
        let live = s.workers.iter().filter(|w| w.alive).count();
        println!("pool {name}");
        println!(
            "  tasks: {} queued, {} in flight, {} reclaimed, {} lost",
            s.queued, s.in_flight, s.reclaimed, s.lost
        );
        println!(
            "  workers: {live} live ({} processes), {} not responding",
            s.workers
                .iter()
                .filter(|w| w.alive)
                .map(|w| w.processes)
                .sum::<usize>(),
            s.workers.len() - live
        );
        if !s.workers.is_empty() {
            println!(
                "    {:<44} {:<16} {:>8} {:>6} {:>6} {:<16} state",
                "consumer", "host", "pid", "procs", "holds", "build"
            );
        }
        for w in &s.workers {
            println!(
                "    {:<44} {:<16} {:>8} {:>6} {:>6} {:<16} {}",
                w.consumer,
                w.host,
                w.pid,
                w.processes,
                w.pending,
                w.build.chars().take(16).collect::<String>(),
                if w.alive { "live" } else { "dead" }
            );
        }
        println!("  dead consumers: {}", s.dead_consumers.len());
        for (name, holds) in &s.dead_consumers {
            println!("    {name} (holds {holds})");
        }
    }
    Ok(())
}

fn stop(args: Remote) -> Result<(), String> {
    connect(&args)?.shutdown().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = multiprocess::init() {
        eprintln!("multiprocess: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manager(ManagerCommand::Serve(a)) => serve(a),
        Command::Manager(ManagerCommand::Status(a)) => status(a),
        Command::Manager(ManagerCommand::Stop(a)) => stop(a),
        Command::Pool(PoolCommand::Status(a)) => pool_status(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multiprocess: {e}");
            ExitCode::FAILURE
        }
    }
}
