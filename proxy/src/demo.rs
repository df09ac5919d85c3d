//! `sigmesh demo`: the proxy, two signaling upstreams (`stable`, `canary`) split 80/20 sticky by
//! room, and the demo page, all in one process on 127.0.0.1.

use std::net::SocketAddr;

use sigmesh_signaling_server::{ServerHandle, ServerOptions};
use tokio::net::TcpListener;

use crate::app::{Proxy, RunError};

/// The demo's config; `{STABLE}` and `{CANARY}` are replaced by the upstreams' addresses.
pub const DEMO_CONFIG: &str = r#"
listen: "{LISTEN}"
admin: "{ADMIN}"
shutdown:
  drain_timeout: 5s
routes:
  - name: signaling
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 65536
      idle_timeout: 300s
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      connections: { rate: 20, per: 1s, burst: 40, key: client_ip }
      messages: { rate: 50, per: 1s, burst: 100, on_exceed: drop }
      rooms: { rate: 200, per: 1s, burst: 400 }
    split:
      sticky: query:room
      override_header: x-sigmesh-upstream
    upstreams:
      - { name: stable, url: "ws://{STABLE}/ws", weight: 80 }
      - { name: canary, url: "ws://{CANARY}/ws", weight: 20 }
  # The demo page reads what sigmesh saw of its call (candidate types, setup time) here: the
  # admin API's /sessions, read-only, on the page's own origin.
  - name: sigmesh-sessions
    match: { path: /sigmesh/sessions }
    upstreams:
      - { name: admin, url: "http://{ADMIN}/sessions" }
  - name: page
    match: { path_prefix: / }
    upstreams:
      - { name: stable, url: "http://{STABLE}" }
"#;

/// A running demo.
pub struct Demo {
    pub proxy: Proxy,
    pub stable: ServerHandle,
    pub canary: ServerHandle,
}

impl Demo {
    pub async fn start(listen: SocketAddr, admin: SocketAddr) -> Result<Demo, RunError> {
        Demo::start_with(listen, admin, None).await
    }

    /// The demo with `tls:` on its listener (the page on `https://`, signaling on `wss://`).
    pub async fn start_with(
        listen: SocketAddr,
        admin: SocketAddr,
        tls: Option<sigmesh_core::config::Tls>,
    ) -> Result<Demo, RunError> {
        let upstream = |name: &'static str| async move {
            let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            sigmesh_signaling_server::serve(
                l,
                ServerOptions {
                    name: name.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|source| RunError::Bind { addr, source })
        };
        let stable = upstream("stable").await?;
        let canary = upstream("canary").await?;
        let text = DEMO_CONFIG
            .replace("{LISTEN}", &listen.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{STABLE}", &stable.local_addr.to_string())
            .replace("{CANARY}", &canary.local_addr.to_string());
        let mut config = sigmesh_core::config::load(&text)?;
        config.tls = tls;
        let proxy = Proxy::start(config, None).await?;
        Ok(Demo {
            proxy,
            stable,
            canary,
        })
    }

    /// What `sigmesh demo` prints.
    pub fn banner(&self) -> String {
        let p = self.proxy.listen;
        let admin = self.proxy.admin.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "sigmesh demo\n\
             \x20 demo page:   http://{p}/?room=demo   (open it in two tabs for a call)\n\
             \x20 signaling:   ws://{p}/ws?room=demo\n\
             \x20 admin API:   http://{admin}/sessions  /metrics  /config  /readyz\n\
             \x20 upstreams:   stable ws://{} (80%), canary ws://{} (20%), sticky by room\n\
             Ctrl-C to stop.",
            self.stable.local_addr, self.canary.local_addr
        )
    }

    pub async fn stop(self) {
        self.proxy.drain().await;
        self.stable.shutdown();
        self.canary.shutdown();
    }
}
