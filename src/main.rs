//! The `conduit` binary: parse the command line, load the configuration, then either serve
//! or run an administration command.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use conduit::{
    admin_socket::AdminSocket,
    backup,
    cli::{self, KeysCommand, MediaCommand, UserCommand},
    config::Config,
    server,
    service::Services,
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A lightweight Matrix homeserver.
#[derive(Parser)]
#[command(name = "conduit", version)]
struct Args {
    /// The configuration file (TOML, keys under [global]). Defaults to $CONDUIT_CONFIG;
    /// without either, CONDUIT_* environment variables alone configure the server.
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Try-out mode: server name `localhost`, data in ./conduit-dev-data, registration open.
    /// The config file and CONDUIT_* variables still override these.
    #[arg(long, global = true)]
    dev: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage accounts (works while the server is stopped).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage uploaded media (works while the server is stopped).
    #[command(subcommand)]
    Media(MediaCommand),
    /// The server's signing keys: show them, or rotate (works while the server is stopped).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write the whole database to one new FILE (works while the server is stopped).
    Export { file: PathBuf },
    /// Fill the empty data directory (database_path) from an export FILE.
    Import { file: PathBuf },
    /// Copy the database and the media files into DIR, new or empty (works while the server
    /// runs).
    Backup { dir: PathBuf },
    /// Fill the empty data directory (database_path) from a backup DIR.
    Restore { dir: PathBuf },
}

/// glibc raises its mmap threshold after a large block is freed, so the next password hash's
/// ~19 MiB comes from a per-thread heap arena and stays resident after it is freed: 41 logins
/// left 160 MB behind in the benchmark. A fixed threshold (which also turns off the dynamic
/// adjustment) returns large blocks to the system as soon as they are freed. 128 KiB is
/// glibc's own starting value, so nothing else changes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_malloc_mmap_threshold() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes allocator tuning; called once, before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_malloc_mmap_threshold() {}

fn main() -> ExitCode {
    pin_malloc_mmap_threshold();
    // rustls needs one crypto provider for outbound connections; we use ring throughout.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let path = args.config.or_else(|| {
        std::env::var_os("CONDUIT_CONFIG")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let loaded = match Config::load(path.as_deref(), args.dev) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("conduit: {error}");
            return ExitCode::FAILURE;
        }
    };
    let filter = match args.command {
        Some(_) => EnvFilter::try_new("warn"),
        None => EnvFilter::try_new(&loaded.config.log),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("conduit: configuration error: global.log: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if args.dev {
        tracing::warn!("development mode: anyone who can reach this server may register");
    }
    if loaded.config.allow_federation && !loaded.config.federation_verify_certificates {
        tracing::warn!(
            "federation_verify_certificates is false: other servers' TLS certificates are NOT \
             checked, so anyone on the network path can impersonate any server. Only for tests."
        );
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("conduit: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        None => runtime.block_on(serve(loaded.config)),
        Some(Command::User(command)) => runtime
            .block_on(cli::run(command, loaded.config))
            .map(print_output),
        Some(Command::Media(command)) => runtime
            .block_on(cli::run_media(command, loaded.config))
            .map(print_output),
        Some(Command::Keys(command)) => runtime
            .block_on(cli::run_keys(command, loaded.config))
            .map(print_output),
        Some(Command::Export { file }) => {
            backup::export_command(&loaded.config, &file).map(print_output)
        }
        Some(Command::Import { file }) => {
            backup::import_command(&loaded.config, &file).map(print_output)
        }
        Some(Command::Backup { dir }) => {
            backup::backup_command(&loaded.config, &dir).map(print_output)
        }
        Some(Command::Restore { dir }) => {
            backup::restore_command(&loaded.config, &dir).map(print_output)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("conduit: {error}");
            ExitCode::FAILURE
        }
    }
}

fn print_output(output: String) {
    if !output.is_empty() {
        println!("{output}");
    }
}

async fn serve(config: Config) -> Result<(), String> {
    let tls = match &config.tls {
        Some(tls) => Some(server::tls_acceptor(&tls.certs, &tls.key)?),
        None => None,
    };
    // Before anything opens files: every connection is a file descriptor.
    server::raise_open_files_limit();
    let federation_port = match config.federation_port {
        Some(_) if tls.is_none() => {
            return Err("federation_port needs [global.tls]: other servers speak HTTPS".into());
        }
        port => port,
    };
    let db = cli::open_database(&config)?;
    let address = SocketAddr::new(config.address, config.port);
    let services = Services::build(config, db).map_err(|e| e.to_string())?;
    services.federation.resume().map_err(|e| e.to_string())?;
    // `conduit backup` while we run (ready before "listening on"); the file is removed when
    // this is dropped, after the server stopped.
    let _admin_socket = AdminSocket::start(std::sync::Arc::clone(&services))
        .inspect_err(|e| tracing::warn!("{e}; `conduit backup` will not work while this runs"))
        .ok();
    let mut listeners = vec![bind(address, tls.clone()).await?];
    if let Some(port) = federation_port {
        let address = SocketAddr::new(address.ip(), port);
        listeners.push(bind(address, tls).await?);
    }
    server::run(listeners, services, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn bind(
    address: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<server::Listener, String> {
    let tcp = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{local}");
    Ok(server::Listener { tcp, tls })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
