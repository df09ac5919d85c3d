//! The proxy-wasm glue: `RootContext` (configuration, shared-data slots, metrics) and
//! `HttpContext` (headers → [`crate::stream`] verdict; body chunks → frame readers). Nothing
//! here decides anything; a host call that fails is logged and the request goes on unchanged.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

use sigmesh_core::frame::Forward;

use sigmesh_core::route::host_without_port;

use crate::metrics::{Metrics, Sink};
use crate::settings::{Settings, parse};
use crate::shared::{SetError, Store, prepare};
use crate::stream::{
    FilterSession, HeadersVerdict, HostFacts, ResponseVerdict, on_request_headers,
};
use sigmesh_core::request::Bucket;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

// === host services ===

/// proxy-wasm shared data.
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }
}

/// The metrics ABI, with metric ids cached per VM.
#[derive(Clone, Default)]
struct HostSink {
    ids: Rc<RefCell<HashMap<String, Option<u32>>>>,
}

impl HostSink {
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(name) {
            return *id;
        }
        let id = hostcalls::define_metric(kind, name).ok();
        if id.is_none() {
            log(
                LogLevel::Warn,
                &format!("sigmesh: cannot define metric {name}"),
            );
        }
        self.ids.borrow_mut().insert(name.to_owned(), id);
        id
    }
}

impl Sink for HostSink {
    fn counter(&mut self, name: &str, delta: u64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn gauge(&mut self, name: &str, delta: i64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    fn histogram(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// Time since the Unix epoch, from the host (the same clock in every VM).
fn now() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

/// A per-VM random sequence (splitmix64), seeded from the host's randomness and clock.
#[derive(Clone)]
struct Rng(Rc<Cell<u64>>);

impl Rng {
    fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now().as_nanos());
        Rng(Rc::new(Cell::new(h.finish())))
    }

    fn next(&self) -> u32 {
        let s = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 32) as u32
    }
}

// === impl Root ===

struct Root {
    settings: Option<Rc<Settings>>,
    sink: HostSink,
    rng: Rng,
}

impl Root {
    fn new() -> Self {
        Root {
            settings: None,
            sink: HostSink::default(),
            rng: Rng::new(),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        match parse(&bytes) {
            Ok(s) => {
                let fresh = (u64::from(self.rng.next()) << 32) | u64::from(self.rng.next());
                s.settle_seed(&HostStore, fresh);
                // Create every shared bucket slot before traffic (see crate::shared).
                let buckets = s.buckets(&HostStore);
                for (route, r) in s.compiled.config.routes.iter().enumerate() {
                    if r.limits.connections.is_some() {
                        prepare(&HostStore, &buckets.family(Bucket::Connections { route }));
                    }
                    if r.limits.rooms.is_some() {
                        prepare(&HostStore, &buckets.family(Bucket::Rooms { route }));
                    }
                }
                if s.compiled.config.turn.is_some() {
                    prepare(&HostStore, &buckets.family(Bucket::Credentials));
                }
                log(
                    LogLevel::Info,
                    &format!(
                        "sigmesh: configured {} route(s), permessage-deflate {:?}",
                        s.compiled.config.routes.len(),
                        s.filter.permessage_deflate
                    ),
                );
                let mut m = Metrics {
                    sink: &mut self.sink,
                };
                for r in s.compiled.routes.iter().map(|r| &r.route) {
                    if r.websocket.is_some() {
                        for u in &r.upstreams {
                            m.closes_at_zero(&r.name, &u.name);
                        }
                    }
                }
                m.config(true);
                self.settings = Some(Rc::new(s));
                true
            }
            Err(errors) => {
                for e in &errors {
                    log(
                        LogLevel::Error,
                        &format!("sigmesh: bad plugin configuration: {e}"),
                    );
                }
                Metrics {
                    sink: &mut self.sink,
                }
                .config(false);
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            settings: self.settings.clone(),
            sink: self.sink.clone(),
            rng: self.rng.clone(),
            session: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// === impl Http ===

struct Http {
    settings: Option<Rc<Settings>>,
    sink: HostSink,
    rng: Rng,
    session: Option<Box<FilterSession>>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Some(s) = self.settings.clone() else {
            return Action::Continue;
        };
        let headers = self.get_http_request_headers();
        let source = self
            .get_property(vec!["source", "address"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let cx = HostFacts {
            client_ip: host_without_port(&source),
            now: now(),
            random: self.rng.next(),
        };
        match on_request_headers(&s, &HostStore, &mut self.sink, &headers, cx) {
            HeadersVerdict::Pass => Action::Continue,
            HeadersVerdict::Respond {
                status,
                headers,
                body,
            } => {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.send_http_response(status, h, Some(body.as_bytes()));
                Action::Pause
            }
            HeadersVerdict::Proceed {
                set,
                remove,
                reroute,
                session,
            } => {
                for (k, v) in &set {
                    self.set_http_request_header(k, Some(v));
                }
                for k in &remove {
                    self.set_http_request_header(k, None);
                }
                if reroute {
                    // Envoy re-selects the route when a filter changes headers; this makes it
                    // explicit where the host offers it (Envoy does).
                    let _ = hostcalls::call_foreign_function("clear_route_cache", None);
                }
                self.session = session;
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.session.is_none() {
            return Action::Continue;
        }
        let status = self
            .get_http_response_header(":status")
            .and_then(|v| v.parse().ok());
        let extensions = self.get_http_response_header("sec-websocket-extensions");
        let Some(session) = self.session.as_mut() else {
            return Action::Continue;
        };
        let verdict = session.on_response_headers(status, extensions.as_deref(), &mut self.sink);
        let route = session.route().to_owned();
        match verdict {
            ResponseVerdict::Continue => {}
            ResponseVerdict::SetExtensions(v) => {
                self.set_http_response_header("sec-websocket-extensions", Some(&v));
            }
            ResponseVerdict::Failed => {}
            ResponseVerdict::Refuse(why) => {
                log(
                    LogLevel::Warn,
                    &format!("sigmesh: refusing an upgrade on route {route}: {why}"),
                );
                self.send_http_response(
                    502,
                    vec![("content-type", "text/plain")],
                    Some(format!("upstream handshake: {why}\n").as_bytes()),
                );
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, _eos: bool) -> Action {
        let Some(s) = self.settings.clone() else {
            return Action::Continue;
        };
        let Some(session) = self.session.as_mut() else {
            return Action::Continue;
        };
        let chunk = hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let route = session.route().to_owned();
        let p = session.on_request_body(&s, &HostStore, &mut self.sink, &chunk, now());
        if let Some(c) = p.close {
            log(
                LogLevel::Info,
                &format!("sigmesh: closing a session on route {route}: {c}"),
            );
        }
        if let Forward::Bytes(b) = p.forward {
            let _ =
                hostcalls::set_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, size, b);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _eos: bool) -> Action {
        let Some(s) = self.settings.clone() else {
            return Action::Continue;
        };
        let Some(session) = self.session.as_mut() else {
            return Action::Continue;
        };
        if !session.is_open() {
            return Action::Continue;
        }
        let chunk = hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let p = session.on_response_body(&s, &HostStore, &mut self.sink, &chunk, now());
        if let Forward::Bytes(b) = p.forward {
            let _ =
                hostcalls::set_buffer(proxy_wasm::types::BufferType::HttpResponseBody, 0, size, b);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.on_end(&mut self.sink);
        }
    }
}
