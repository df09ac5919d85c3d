//! `sigmesh-loadgen report`: one table comparing a direct and a proxied run of each kind.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::Serialize;

use crate::read_json;
use crate::run::RunReport;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Closed-loop throughput runs: DIRECT.json SIGMESH.json.
    #[arg(long, num_args = 2, value_names = ["DIRECT", "SIGMESH"])]
    throughput: Vec<PathBuf>,
    /// Fixed-rate latency runs: DIRECT.json SIGMESH.json.
    #[arg(long, num_args = 2, value_names = ["DIRECT", "SIGMESH"])]
    latency: Vec<PathBuf>,
    /// CPU seconds (user + system) the sigmesh process used during its throughput run.
    #[arg(long)]
    sigmesh_cpu_seconds: Option<f64>,
    /// Free-form `key=value` facts recorded with the results (machine, pinning, git revision...).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Write the Markdown table here (it is printed to stdout as well).
    #[arg(long)]
    md: Option<PathBuf>,
    /// Write the combined JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Pair {
    direct: RunReport,
    sigmesh: RunReport,
}

#[derive(Serialize)]
struct Combined {
    meta: serde_json::Map<String, serde_json::Value>,
    throughput: Option<Pair>,
    latency: Option<Pair>,
    ratios: serde_json::Map<String, serde_json::Value>,
    sigmesh_cpu_seconds: Option<f64>,
    /// CPU seconds per million round trips (each round trip is two messages relayed by sigmesh).
    sigmesh_cpu_s_per_million_msgs: Option<f64>,
}

fn pair(paths: &[PathBuf]) -> anyhow::Result<Option<Pair>> {
    match paths {
        [] => Ok(None),
        [d, s] => Ok(Some(Pair {
            direct: read_json(d)?,
            sigmesh: read_json(s)?,
        })),
        _ => anyhow::bail!("expected two files (direct, sigmesh)"),
    }
}

fn ratio(s: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| (s / d * 1000.0).round() / 1000.0)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
}

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let throughput = pair(&args.throughput).context("--throughput")?;
    let latency = pair(&args.latency).context("--latency")?;
    let mut meta = serde_json::Map::new();
    for kv in &args.meta {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--meta {kv:?}: expected KEY=VALUE"))?;
        meta.insert(k.to_owned(), v.into());
    }

    let mut md = String::from("# sigmesh end-to-end load\n\n");
    for (k, v) in &meta {
        md.push_str(&format!("- {k}: {}\n", v.as_str().unwrap_or_default()));
    }
    md.push_str("\n| metric | direct | sigmesh | sigmesh/direct |\n|---|---:|---:|---:|\n");
    let mut ratios = serde_json::Map::new();
    let mut row = |key: &str, name: String, d: f64, s: f64, prec: usize| {
        let r = ratio(s, d);
        md.push_str(&format!(
            "| {name} | {d:.prec$} | {s:.prec$} | {} |\n",
            fmt_ratio(r)
        ));
        ratios.insert(key.to_owned(), r.into());
    };
    if let Some(p) = &throughput {
        let (d, s) = (&p.direct, &p.sigmesh);
        let what = format!(
            "{} sessions × {} B, window {}",
            d.sessions,
            d.size,
            d.window.unwrap_or(1)
        );
        row(
            "throughput_msgs_per_sec",
            format!("throughput msgs/s ({what})"),
            d.msgs_per_sec,
            s.msgs_per_sec,
            0,
        );
        row(
            "throughput_p50",
            "throughput run p50 µs".into(),
            d.p50_us,
            s.p50_us,
            1,
        );
        row(
            "throughput_p99",
            "throughput run p99 µs".into(),
            d.p99_us,
            s.p99_us,
            1,
        );
    }
    if let Some(p) = &latency {
        let (d, s) = (&p.direct, &p.sigmesh);
        let what = format!(
            "{} sessions × {}/s, {} B",
            d.sessions,
            d.rate_per_session.unwrap_or(0.0),
            d.size
        );
        row(
            "latency_p50",
            format!("latency p50 µs ({what})"),
            d.p50_us,
            s.p50_us,
            1,
        );
        row(
            "latency_p99",
            "latency p99 µs".into(),
            d.p99_us,
            s.p99_us,
            1,
        );
        row(
            "latency_p999",
            "latency p99.9 µs".into(),
            d.p999_us,
            s.p999_us,
            1,
        );
        row(
            "latency_max",
            "latency max µs".into(),
            d.max_us,
            s.max_us,
            1,
        );
        row(
            "latency_msgs_per_sec",
            "latency run msgs/s".into(),
            d.msgs_per_sec,
            s.msgs_per_sec,
            0,
        );
    }
    let errs = |p: &Option<Pair>, direct: bool| {
        p.as_ref().map_or(0, |p| {
            if direct {
                p.direct.errors
            } else {
                p.sigmesh.errors
            }
        })
    };
    md.push_str(&format!(
        "| errors (throughput + latency runs) | {} | {} | |\n",
        errs(&throughput, true) + errs(&latency, true),
        errs(&throughput, false) + errs(&latency, false)
    ));
    let per_million = match (&throughput, args.sigmesh_cpu_seconds) {
        (Some(p), Some(cpu)) if p.sigmesh.msgs_per_sec > 0.0 => {
            // Round trips completed over the whole run (warmup included), as the CPU time is.
            let msgs = p.sigmesh.received as f64;
            let v = (cpu / (msgs / 1e6) * 1000.0).round() / 1000.0;
            md.push_str(&format!(
                "| sigmesh CPU s per 1M round trips (throughput run, {cpu:.2} CPU s, {msgs:.0} round trips) | | {v:.2} | |\n"
            ));
            Some(v)
        }
        _ => None,
    };
    md.push_str(
        "\nA round trip is one client→upstream and one upstream→client message, so sigmesh relays two \
         messages per round trip. Fixed-rate latency is measured from the scheduled send time.\n",
    );

    print!("{md}");
    if let Some(path) = &args.md {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let combined = Combined {
            meta,
            throughput,
            latency,
            ratios,
            sigmesh_cpu_seconds: args.sigmesh_cpu_seconds,
            sigmesh_cpu_s_per_million_msgs: per_million,
        };
        let text = serde_json::to_string_pretty(&combined)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
