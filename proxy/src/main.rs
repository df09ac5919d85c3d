//! The `sigmesh` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// The system allocator unless a build picks another (`--features mimalloc` or `jemalloc`), for
// measuring them: see docs/performance.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sigmesh",
    version,
    about = "A signaling-aware L7 proxy for WebRTC signaling over WebSocket"
)]
struct Cli {
    /// Log format; `RUST_LOG` sets the level (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The config file (YAML or JSON).
        #[arg(long, env = "SIGMESH_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every error and exit 1.
    Check {
        #[arg(long, env = "SIGMESH_CONFIG")]
        config: PathBuf,
    },
    /// The proxy, two signaling upstreams and a demo page on 127.0.0.1.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
    /// Print a TURN REST credential (coturn `use-auth-secret`) as JSON, as the HTTP endpoint
    /// `turn.credentials_path` serves it.
    TurnCredentials {
        /// The shared secret (coturn's `static-auth-secret`).
        #[arg(long, env = "SIGMESH_TURN_SECRET", hide_env_values = true)]
        secret: String,
        /// The user ID the credential is for.
        #[arg(long)]
        user: String,
        /// Lifetime (`30m`, `1h`, `1d`).
        #[arg(long, default_value = "1h", value_parser = sigmesh_core::config::duration_str::parse)]
        ttl: std::time::Duration,
        /// A TURN/STUN URI to list in `uris` (repeat for more).
        #[arg(long = "uri")]
        uris: Vec<String>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Loads and checks a config; `sigmesh check` also prints the warnings (`run` logs them).
fn read_config(
    path: &PathBuf,
    print_warnings: bool,
) -> Result<sigmesh_core::config::Config, ExitCode> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Err(ExitCode::from(1));
        }
    };
    let config = sigmesh_core::config::load(&text).map_err(|errors| {
        eprintln!("{}: {} error(s):", path.display(), errors.0.len());
        for e in &errors.0 {
            eprintln!("  {}: {e}", path.display());
        }
        ExitCode::from(1)
    })?;
    // Valid, but can this build serve it (a wss:// upstream without TLS, ...)?
    let warnings = sigmesh::app::check(&config).map_err(|errors| {
        eprintln!("{}: {} error(s):", path.display(), errors.len());
        for e in &errors {
            eprintln!("  {}: {e}", path.display());
        }
        ExitCode::from(1)
    })?;
    // The certificate and key files must make a usable set.
    if let Err(e) = sigmesh::app::check_tls(&config) {
        eprintln!(
            "{}: 1 error(s):\n  {}: tls: {e}",
            path.display(),
            path.display()
        );
        return Err(ExitCode::from(1));
    }
    for w in warnings.iter().filter(|_| print_warnings) {
        eprintln!("{}: warning: {w}", path.display());
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(2)
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { config } => match read_config(&config, true) {
            Ok(c) => {
                println!("{}: ok ({} routes)", config.display(), c.routes.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config: path } => {
            let config = match read_config(&path, false) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(sigmesh::app::run(config, Some(path))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::TurnCredentials {
            secret,
            user,
            ttl,
            uris,
        } => {
            let now = sigmesh::clock::unix_secs();
            match sigmesh_core::credentials::credential(&secret, &user, now, ttl, &uris) {
                Ok(c) => {
                    println!("{}", serde_json::to_string(&c).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo { listen, admin } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            rt.block_on(async move {
                let demo = match sigmesh::demo::Demo::start(listen, admin).await {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                println!("{}", demo.banner());
                sigmesh::app::shutdown_signal().await;
                demo.stop().await;
                ExitCode::SUCCESS
            })
        }
    }
}
