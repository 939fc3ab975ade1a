//! Results: the human table, ratios between systems (min/median/max over rounds), JSON, and an
//! SVG chart of throughput and p99 per system.

use serde::Serialize;

/// One system in one round of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub system: String,
    pub round: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub bytes_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Proxy CPU (user + system) per request, microseconds. None for `direct`.
    pub cpu_us_per_request: Option<f64>,
    pub rss_idle_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// idle-conns: resident bytes per idle downstream connection.
    pub bytes_per_idle_connection: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub scenario: String,
    pub pair: String,
    pub metric: String,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn metric(r: &Row, name: &str) -> Option<f64> {
    match name {
        "rps" => Some(r.rps),
        "bytes_per_sec" => Some(r.bytes_per_sec),
        "p99_ms" => Some(r.p99_ms),
        "cpu_us_per_request" => r.cpu_us_per_request,
        "rss_peak_bytes" => r.rss_peak_bytes.map(|b| b as f64),
        "bytes_per_idle_connection" => r.bytes_per_idle_connection,
        _ => None,
    }
}

/// remora/X for each other system, per round, summarised.
pub fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut scenarios: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for sc in scenarios {
        let mut others: Vec<&str> = rows
            .iter()
            .filter(|r| r.scenario == sc && r.system != "remora")
            .map(|r| r.system.as_str())
            .collect();
        others.sort();
        others.dedup();
        for other in others {
            for m in [
                "rps",
                "bytes_per_sec",
                "p99_ms",
                "cpu_us_per_request",
                "rss_peak_bytes",
                "bytes_per_idle_connection",
            ] {
                let mut vals = Vec::new();
                for a in rows
                    .iter()
                    .filter(|r| r.scenario == sc && r.system == "remora")
                {
                    if let Some(b) = rows
                        .iter()
                        .find(|r| r.scenario == sc && r.system == other && r.round == a.round)
                        && let (Some(x), Some(y)) = (metric(a, m), metric(b, m))
                        && y > 0.0
                    {
                        vals.push(x / y);
                    }
                }
                if vals.is_empty() {
                    continue;
                }
                let min = vals.iter().cloned().fold(f64::INFINITY, f64::min);
                let max = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                out.push(Ratio {
                    scenario: sc.into(),
                    pair: format!("remora/{other}"),
                    metric: m.into(),
                    min,
                    median: median(&mut vals),
                    max,
                });
            }
        }
    }
    out
}

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1}", b as f64 / 1_048_576.0))
        .unwrap_or_else(|| "-".into())
}

/// Median per (scenario, system) for the table.
pub fn summary(rows: &[Row]) -> Vec<Row> {
    let mut keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.scenario.clone(), r.system.clone()))
        .collect();
    keys.dedup();
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys.into_iter()
        .map(|(sc, sys)| {
            let rs: Vec<&Row> = rows
                .iter()
                .filter(|r| r.scenario == sc && r.system == sys)
                .collect();
            let med =
                |f: &dyn Fn(&Row) -> f64| median(&mut rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let med_opt = |f: &dyn Fn(&Row) -> Option<f64>| {
                let mut v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            Row {
                scenario: sc,
                system: sys,
                round: 0,
                requests: rs.iter().map(|r| r.requests).sum(),
                errors: rs.iter().map(|r| r.errors).sum(),
                rps: med(&|r| r.rps),
                bytes_per_sec: med(&|r| r.bytes_per_sec),
                p50_ms: med(&|r| r.p50_ms),
                p90_ms: med(&|r| r.p90_ms),
                p99_ms: med(&|r| r.p99_ms),
                p999_ms: med(&|r| r.p999_ms),
                max_ms: med(&|r| r.max_ms),
                cpu_us_per_request: med_opt(&|r| r.cpu_us_per_request),
                rss_idle_bytes: med_opt(&|r| r.rss_idle_bytes.map(|b| b as f64)).map(|v| v as u64),
                rss_peak_bytes: med_opt(&|r| r.rss_peak_bytes.map(|b| b as f64)).map(|v| v as u64),
                bytes_per_idle_connection: med_opt(&|r| r.bytes_per_idle_connection),
            }
        })
        .collect()
}

pub fn table(rows: &[Row], ratios: &[Ratio]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:<8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>10} {:>7}",
        "scenario",
        "system",
        "req/s",
        "MiB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "cpu us/req",
        "idle MiB",
        "peak MiB",
        "B/idle cx",
        "errors"
    );
    for r in summary(rows) {
        let _ = writeln!(
            s,
            "{:<12} {:<8} {:>10.0} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.2} {:>10} {:>9} {:>9} {:>10} {:>7}",
            r.scenario,
            r.system,
            r.rps,
            r.bytes_per_sec / 1_048_576.0,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.cpu_us_per_request
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            mb(r.rss_idle_bytes),
            mb(r.rss_peak_bytes),
            r.bytes_per_idle_connection
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "-".into()),
            r.errors,
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(s, "\nratios (per round, same run): min / median / max");
        for q in ratios {
            let _ = writeln!(
                s,
                "  {:<12} {:<16} {:<26} {:>7.3} {:>7.3} {:>7.3}",
                q.scenario, q.pair, q.metric, q.min, q.median, q.max
            );
        }
    }
    s
}

/// An SVG chart: throughput and p99 per system, one row of panels per scenario.
pub fn chart(rows: &[Row], path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    let summary = summary(rows);
    let mut scenarios: Vec<String> = summary.iter().map(|r| r.scenario.clone()).collect();
    scenarios.dedup();
    let height = 320 * scenarios.len().max(1) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((scenarios.len().max(1), 2));
    for (i, sc) in scenarios.iter().enumerate() {
        let rs: Vec<&Row> = summary.iter().filter(|r| &r.scenario == sc).collect();
        let names: Vec<String> = rs.iter().map(|r| r.system.clone()).collect();
        let large = sc == "large-body";
        for (j, (title, values)) in [
            (
                if large {
                    format!("{sc}: MiB/s")
                } else {
                    format!("{sc}: requests/s")
                },
                rs.iter()
                    .map(|r| {
                        if large {
                            r.bytes_per_sec / 1_048_576.0
                        } else {
                            r.rps
                        }
                    })
                    .collect::<Vec<f64>>(),
            ),
            (
                format!("{sc}: p99 latency (ms)"),
                rs.iter().map(|r| r.p99_ms).collect(),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let area = &panels[i * 2 + j];
            let top = values.iter().cloned().fold(0.0f64, f64::max).max(1e-9) * 1.15;
            let mut c = ChartBuilder::on(area)
                .caption(&title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..top)
                .map_err(|e| e.to_string())?;
            let labels = names.clone();
            c.configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&move |v| match v {
                    SegmentValue::CenterOf(k) => labels.get(*k).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .draw()
                .map_err(|e| e.to_string())?;
            c.draw_series(values.iter().enumerate().map(|(k, v)| {
                let color = if names[k] == "remora" {
                    RGBColor(0, 110, 190)
                } else {
                    RGBColor(150, 150, 150)
                };
                Rectangle::new(
                    [
                        (SegmentValue::Exact(k), 0.0),
                        (SegmentValue::Exact(k + 1), *v),
                    ],
                    color.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sys: &str, round: usize, rps: f64, cpu: Option<f64>) -> Row {
        Row {
            scenario: "http1".into(),
            system: sys.into(),
            round,
            requests: 100,
            errors: 0,
            rps,
            bytes_per_sec: 0.0,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: 2.0,
            p999_ms: 3.0,
            max_ms: 4.0,
            cpu_us_per_request: cpu,
            rss_idle_bytes: Some(1 << 20),
            rss_peak_bytes: Some(2 << 20),
            bytes_per_idle_connection: None,
        }
    }

    #[test]
    fn ratios_pair_rounds() {
        let rows = vec![
            row("remora", 0, 100.0, Some(10.0)),
            row("nginx", 0, 50.0, Some(20.0)),
            row("remora", 1, 90.0, Some(12.0)),
            row("nginx", 1, 60.0, Some(20.0)),
        ];
        let r = ratios(&rows);
        let rps = r.iter().find(|q| q.metric == "rps").unwrap();
        assert_eq!(rps.pair, "remora/nginx");
        assert!((rps.min - 1.5).abs() < 1e-9 && (rps.max - 2.0).abs() < 1e-9);
        let cpu = r.iter().find(|q| q.metric == "cpu_us_per_request").unwrap();
        assert!((cpu.median - 0.55).abs() < 1e-9);
        assert!(table(&rows, &r).contains("remora/nginx"));
        let dir = std::env::temp_dir().join(format!("bench-chart-{}.svg", std::process::id()));
        chart(&rows, &dir).unwrap();
        assert!(std::fs::read_to_string(&dir).unwrap().contains("<svg"));
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn median_works() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
