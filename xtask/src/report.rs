//! The HTML report of a test-net run: the summary table, latency
//! distributions and the topology, as inline SVG (no scripts, no network).

use std::fmt::Write;

use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A histogram of `xs` as an SVG bar chart.
pub(crate) fn histogram(title: &str, unit: &str, xs: &[f64]) -> String {
    let (w, h, bins) = (560.0, 180.0, 30usize);
    let mut svg = format!("<h3>{}</h3>", esc(title));
    if xs.is_empty() {
        svg.push_str("<p>no samples</p>");
        return svg;
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let span = (hi - lo).max(1e-9);
    let mut counts = vec![0usize; bins];
    for &x in xs {
        counts[(((x - lo) / span) * (bins as f64 - 1.0)).round() as usize] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = w / bins as f64;
    let _ = write!(
        svg,
        r#"<svg width="{w}" height="{}" xmlns="http://www.w3.org/2000/svg">"#,
        h + 30.0
    );
    for (i, c) in counts.iter().enumerate() {
        let bh = *c as f64 / max * h;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4a7bd0"><title>{c}</title></rect>"##,
            i as f64 * bw,
            h - bh,
            bw - 1.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{}" font-size="12">{lo:.2} {unit}</text><text x="{}" y="{}" font-size="12" text-anchor="end">{hi:.2} {unit}</text><text x="{}" y="{}" font-size="12" text-anchor="middle">{} samples</text></svg>"#,
        h + 20.0,
        w,
        h + 20.0,
        w / 2.0,
        h + 20.0,
        xs.len()
    );
    svg
}

/// Points (x, y) as an SVG scatter plot.
pub(crate) fn scatter(title: &str, x_unit: &str, y_unit: &str, points: &[(f64, f64)]) -> String {
    let (w, h) = (560.0, 180.0);
    let mut svg = format!("<h3>{}</h3>", esc(title));
    if points.is_empty() {
        svg.push_str("<p>no samples</p>");
        return svg;
    }
    let x_hi = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_hi = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let _ = write!(
        svg,
        r##"<svg width="{w}" height="{}" xmlns="http://www.w3.org/2000/svg"><rect width="{w}" height="{h}" fill="none" stroke="#ccc"/>"##,
        h + 30.0
    );
    for (x, y) in points {
        let _ = write!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2" fill="#4a7bd0"/>"##,
            x / x_hi * w,
            h - y / y_hi * h
        );
    }
    let _ = write!(
        svg,
        r#"<text x="0" y="{}" font-size="12">0 {x_unit}</text><text x="{w}" y="{}" font-size="12" text-anchor="end">{x_hi:.1} {x_unit}</text><text x="4" y="14" font-size="12">{y_hi:.1} {y_unit}</text></svg>"#,
        h + 20.0,
        h + 20.0,
    );
    svg
}

/// Nodes on a circle, connections as lines.
pub(crate) fn topology(nodes: usize, edges: &[(usize, usize)]) -> String {
    let (size, r) = (520.0, 230.0);
    let pos = |i: usize| {
        let a = i as f64 / nodes.max(1) as f64 * std::f64::consts::TAU;
        (size / 2.0 + r * a.cos(), size / 2.0 + r * a.sin())
    };
    let mut svg = format!(
        r#"<h3>Topology at the end ({nodes} nodes, {} connections)</h3>"#,
        edges.len()
    );
    let _ = write!(
        svg,
        r#"<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg">"#
    );
    for &(a, b) in edges {
        let ((x1, y1), (x2, y2)) = (pos(a), pos(b));
        let _ = write!(
            svg,
            r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="#999" stroke-width="0.6"/>"##
        );
    }
    for i in 0..nodes {
        let (x, y) = pos(i);
        let _ = write!(
            svg,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="#d04a4a"><title>node {i}</title></circle>"##
        );
    }
    svg.push_str("</svg>");
    svg
}

fn samples(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The whole report page for a test-net report.
pub(crate) fn html(report: &Value) -> String {
    let mut page = String::from(
        "<!doctype html><meta charset=utf-8><title>Blackhole test-net</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.pass{color:#070}.fail{color:#b00}</style>",
    );
    let _ = write!(
        page,
        "<h1>Blackhole test-net</h1><p>{} nodes, seed {}, {:.1} s</p><table><tr><th>scenario</th><th>result</th><th>seconds</th><th>numbers</th><th>notes</th></tr>",
        report["nodes"],
        report["seed"],
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    for s in report["scenarios"].as_array().into_iter().flatten() {
        let passed = s["passed"].as_bool().unwrap_or(false);
        let numbers: Vec<String> = s["headline"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                format!(
                    "{}: {}",
                    kv[0].as_str().unwrap_or(""),
                    kv[1].as_str().unwrap_or("")
                )
            })
            .collect();
        let notes: Vec<String> = s["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(esc))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td class={}>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
            esc(s["name"].as_str().unwrap_or("")),
            if passed { "pass" } else { "fail" },
            if passed { "pass" } else { "FAIL" },
            s["seconds"].as_f64().unwrap_or(0.0),
            esc(&numbers.join("; ")),
            notes.join("<br>")
        );
    }
    page.push_str("</table>");
    for s in report["scenarios"].as_array().into_iter().flatten() {
        if s["name"] == "dht" {
            page.push_str(&histogram(
                "DHT get latency (every node, every record)",
                "ms",
                &samples(&s["data"]["get_ms_samples"]),
            ));
        }
        if s["name"] == "rpc" {
            page.push_str(&histogram(
                "RPC call latency (through the control API)",
                "ms",
                &samples(&s["data"]["latency_ms_samples"]),
            ));
        }
        if s["name"] == "pubsub" {
            page.push_str(&histogram(
                "Pubsub delivery latency (publish to subscriber)",
                "ms",
                &samples(&s["data"]["latency_ms_samples"]),
            ));
            let points: Vec<(f64, f64)> = s["data"]["delivery_over_time"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect();
            page.push_str(&scatter(
                "Pubsub deliveries over time (x: when published, y: latency)",
                "s",
                "ms",
                &points,
            ));
        }
        if s["name"] == "connectivity" {
            page.push_str(&histogram(
                "Dial latency through the control API",
                "ms",
                &samples(&s["data"]["dial_ms_samples"]),
            ));
            page.push_str(&histogram(
                "Ping round trip between connected nodes",
                "ms",
                &samples(&s["data"]["ping_rtt_ms_samples"]),
            ));
        }
    }
    let edges: Vec<(usize, usize)> = report["topology"]["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e[0].as_u64()? as usize, e[1].as_u64()? as usize)))
        .collect();
    page.push_str(&topology(
        report["topology"]["nodes"].as_u64().unwrap_or(0) as usize,
        &edges,
    ));
    page
}
