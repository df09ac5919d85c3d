//! The `istio/` folder: every Kubernetes and Istio manifest validated against the schemas that
//! npm's `kubernetes-models` and `@kubernetes-models/istio` (Istio 1.29 CRDs) ship, through
//! `istio/validate.mjs` (`scripts/install/k8s-schemas.sh` installs them); the sigmesh
//! configurations they embed validated by sigmesh's own loaders; the standalone `envoy.yaml`
//! validated by Envoy itself (`--mode validate`) with the built filter.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sigmesh_filter::metrics::TAG_REGEXES;
use sigmesh_filter_e2e::{envoy_bin, filter_wasm};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("workspace root")
}

fn schemas() -> PathBuf {
    let dir = match std::env::var_os("SIGMESH_K8S_SCHEMAS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default())
            .join(".local/share/sigmesh/k8s-schemas"),
    };
    assert!(
        dir.join("node_modules/@kubernetes-models/istio").is_dir(),
        "Kubernetes/Istio schemas not found in {}: run `bash scripts/install/k8s-schemas.sh` \
         (or set SIGMESH_K8S_SCHEMAS)",
        dir.display()
    );
    dir
}

fn manifests() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["istio", "istio/sidecar"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .expect("istio/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            // envoy.yaml is an Envoy bootstrap, not a Kubernetes object (checked below).
            .filter(|p| p.file_name().is_some_and(|n| n != "envoy.yaml"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

fn validate(files: &[PathBuf]) -> (bool, Vec<Value>) {
    let out = Command::new("node")
        .arg(root().join("istio/validate.mjs"))
        .arg(schemas())
        .args(files)
        .output()
        .expect("run node (scripts/install/k8s-schemas.sh installs it)");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        out.status.success() || !out.stdout.is_empty(),
        "validator failed to run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), lines)
}

#[test]
fn manifests_validate_against_kubernetes_and_istio_schemas() {
    let files = manifests();
    let (ok, docs) = validate(&files);
    for d in &docs {
        assert_eq!(d["ok"], true, "{d}");
    }
    assert!(ok);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for want in [
        "WasmPlugin",
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "EnvoyFilter",
        "Deployment",
        "ConfigMap",
        "Service",
        "Canary",
        "MetricTemplate",
        "AnalysisTemplate",
        "Rollout",
    ] {
        assert!(kinds.contains(&want), "no {want} among {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "WasmPlugin").count(),
        2,
        "oci:// and file://"
    );
    let urls: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("url: ").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(urls.iter().any(|u| u.starts_with("oci://")), "{urls:?}");
    assert!(urls.iter().any(|u| u.starts_with("file://")), "{urls:?}");

    // The sigmesh configurations inside, by sigmesh's own validation.
    let mut checked = 0;
    for d in &docs {
        if let Some(cfg) = d.get("pluginConfig") {
            let s = sigmesh_filter::settings::parse(cfg.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e:?}", d["file"]));
            assert!(!s.compiled.config.routes.is_empty());
            checked += 1;
        }
        if let Some(cfg) = d.get("filterConfig").and_then(Value::as_str) {
            sigmesh_filter::settings::parse(cfg.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e:?}", d["file"]));
            checked += 1;
        }
        if let Some(cfg) = d.get("proxyConfig").and_then(Value::as_str) {
            sigmesh_core::config::load(cfg).unwrap_or_else(|e| panic!("{}: {e}", d["file"]));
            checked += 1;
        }
    }
    assert_eq!(
        checked, 4,
        "two WasmPlugins, the EnvoyFilter, the sidecar's ConfigMap"
    );
    let json = std::fs::read(root().join("istio/plugin-config.json")).expect("plugin-config.json");
    sigmesh_filter::settings::parse(&json).expect("istio/plugin-config.json");
}

#[test]
fn the_validator_refuses_a_broken_manifest() {
    let dir = std::env::temp_dir().join(format!("sigmesh-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: x}\n\
         spec: {url: 'oci://r/x:1', phase: BEFORE_ROUTER, failStrategy: FAIL_OPEN}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  \
         template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n        \
         ports: [{containerPort: http}]\n---\napiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n",
    )
    .expect("write");
    let (ok, docs) = validate(&[bad]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert_eq!(docs.len(), 3);
    assert!(docs.iter().all(|d| d["ok"] == false), "{docs:?}");
    assert!(
        docs[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("phase")
    );
    assert!(
        docs[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("containerPort")
    );
    assert!(
        docs[2]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no schema")
    );
}

#[test]
fn standalone_envoy_yaml_is_valid_for_envoy_with_the_built_filter() {
    let text = std::fs::read_to_string(root().join("istio/envoy.yaml")).expect("envoy.yaml");
    let filter = filter_wasm();
    let rel = "target/wasm32-wasip1/wasm-release/sigmesh_filter.wasm";
    assert!(text.contains(rel));
    let cfg = text.replace(rel, &filter.to_string_lossy());
    let dir = std::env::temp_dir().join(format!("sigmesh-envoy-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, cfg).expect("write");
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "envoy --mode validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The stats tags in both Envoy configs are the filter's own.
    let filter_yaml =
        std::fs::read_to_string(root().join("istio/envoyfilter.yaml")).expect("envoyfilter.yaml");
    for (name, regex) in TAG_REGEXES {
        for t in [&text, &filter_yaml] {
            assert!(t.contains(&format!("tag_name: {name}")), "{name}");
            assert!(t.contains(regex), "{regex}");
        }
    }
}

/// `istio/ratelimit.yaml`'s Envoy half (the ratelimit filter and its descriptor actions, how
/// `scope: global` is said in Istio mode) in a real Envoy against a real gRPC rate limit
/// service: 20 of 30 handshakes through, the rest 429, the descriptor as documented, fail open
/// when the service is gone (`istio/ratelimit-check/run.sh`).
#[test]
fn the_global_rate_limit_example_works_in_a_real_envoy() {
    let out = Command::new("bash")
        .arg(root().join("istio/ratelimit-check/run.sh"))
        .env("SIGMESH_ENVOY", envoy_bin())
        .env("SIGMESH_K8S_SCHEMAS", schemas())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ratelimit-check: ok: 20/30"), "{stdout}");
}
