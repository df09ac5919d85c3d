//! An OTLP collector stand-in: the real OTLP/gRPC service (tonic, HTTP/2) and the real
//! OTLP/HTTP endpoint (`POST /v1/traces`, protobuf), both decoding `opentelemetry-proto`
//! messages and keeping every span they receive, with its resource and transport.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One received span.
#[derive(Clone, Debug)]
pub struct Received {
    /// `grpc` or `http`.
    pub transport: &'static str,
    pub resource: Vec<KeyValue>,
    pub scope: String,
    pub span: Span,
}

impl Received {
    pub fn name(&self) -> &str {
        &self.span.name
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn attr(&self, key: &str) -> Option<Val> {
        attr(&self.span.attributes, key)
    }
    pub fn resource_attr(&self, key: &str) -> Option<Val> {
        attr(&self.resource, key)
    }
    /// The events named `name`, as attribute maps.
    pub fn events(&self, name: &str) -> Vec<HashMap<String, Val>> {
        self.span
            .events
            .iter()
            .filter(|e| e.name == name)
            .map(|e| {
                e.attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), val(kv.value.as_ref()?)?)))
                    .collect()
            })
            .collect()
    }
}

/// An attribute value, simplified.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    S(String),
    I(i64),
    B(bool),
    F(f64),
}

impl Val {
    pub fn s(&self) -> &str {
        match self {
            Val::S(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
    pub fn i(&self) -> i64 {
        match self {
            Val::I(i) => *i,
            other => panic!("not an int: {other:?}"),
        }
    }
}

fn val(v: &AnyValue) -> Option<Val> {
    Some(match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Val::S(s.clone()),
        any_value::Value::IntValue(i) => Val::I(*i),
        any_value::Value::BoolValue(b) => Val::B(*b),
        any_value::Value::DoubleValue(f) => Val::F(*f),
        _ => return None,
    })
}

fn attr(kvs: &[KeyValue], key: &str) -> Option<Val> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| val(kv.value.as_ref()?))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Received>>,
}

impl Store {
    fn keep(&self, transport: &'static str, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    spans.push(Received {
                        transport,
                        resource: resource.clone(),
                        scope: scope.clone(),
                        span,
                    });
                }
            }
        }
    }
}

/// The collector: `grpc` and `http` listen on 127.0.0.1.
pub struct Collector {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    store: Arc<Store>,
}

impl Collector {
    pub async fn start() -> Collector {
        let store = Arc::new(Store::default());
        let grpc_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_l.local_addr().unwrap();
        let http = http_l.local_addr().unwrap();
        tokio::spawn(serve_grpc(grpc_l, store.clone()));
        tokio::spawn(serve_http(http_l, store.clone()));
        Collector { grpc, http, store }
    }

    /// Both over TLS with `config`: OTLP/gRPC (ALPN `h2`) at `grpcs_url`, OTLP/HTTP at
    /// `https_url`.
    pub async fn start_https(config: Arc<rustls::ServerConfig>) -> Collector {
        let store = Arc::new(Store::default());
        let grpc_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (grpc_l.local_addr().unwrap(), http_l.local_addr().unwrap());
        let mut h2 = (*config).clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let h2 = tokio_rustls::TlsAcceptor::from(Arc::new(h2));
        let s = store.clone();
        tokio::spawn(async move {
            let svc = TraceServiceServer::new(Grpc(s));
            while let Ok((tcp, _)) = grpc_l.accept().await {
                let (svc, h2) = (TowerToHyperService::new(svc.clone()), h2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = h2.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let s = store.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = http_l.accept().await {
                let (store, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let store = store.clone();
                        async move { Ok::<_, Infallible>(http_export(&store, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Collector { grpc, http, store }
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.http.port())
    }

    pub fn grpcs_url(&self) -> String {
        format!("https://localhost:{}", self.grpc.port())
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.spans.lock().unwrap().clone()
    }

    pub fn named(&self, name: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|s| s.span.name == name)
            .collect()
    }
}

// === gRPC ===

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.keep("grpc", request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn serve_grpc(l: TcpListener, store: Arc<Store>) {
    let svc = TraceServiceServer::new(Grpc(store));
    while let Ok((s, _)) = l.accept().await {
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

// === HTTP/protobuf ===

async fn serve_http(l: TcpListener, store: Arc<Store>) {
    while let Ok((s, _)) = l.accept().await {
        let store = store.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(http_export(&store, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

async fn http_export(store: &Store, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: Vec<u8>| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        r
    };
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" || !protobuf {
        return reply(404, Vec::new());
    }
    let Ok(body) = req.into_body().collect().await else {
        return reply(400, Vec::new());
    };
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
        Ok(r) => {
            store.keep("http", r);
            reply(
                200,
                ExportTraceServiceResponse {
                    partial_success: None,
                }
                .encode_to_vec(),
            )
        }
        Err(_) => reply(400, Vec::new()),
    }
}

/// A collector that accepts connections and never answers: exports hang until they time out.
pub async fn black_hole() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
