//! The Grafana dashboard only queries metrics that nodes really export.

use std::collections::BTreeSet;

use crate::support::{addr, config, start, wait_event};

/// Metric names (`libp2p_*`, `blackhole_*`) in the dashboard's queries.
fn queried_metrics() -> BTreeSet<String> {
    let path =
        crate::support::manifest_dir().join("../crates/blackhole-metrics/grafana/blackhole.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("libp2p_") || word.starts_with("blackhole_") {
                    names.insert(word.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported() {
    let a = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let b = start(config(&[])).await;
    let peer = b.dial(addr(&a, "tcp").await).await.unwrap();
    b.ping(peer).await.unwrap();
    b.perf(peer, 1 << 16, 1 << 16).await.unwrap();
    // And one failed handshake, so that the failure counters have a sample.
    let mut events = a.events();
    let port: u16 = a.listen_addrs().await.unwrap()[0]
        .to_string()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"\x13/multistream/1.0.0\n\x07/noise\n\x00\x05hello",
    )
    .await
    .unwrap();
    wait_event(&mut events, std::time::Duration::from_secs(30), |e| {
        matches!(e, blackhole_node::Event::IncomingConnectionFailed { .. }).then_some(())
    })
    .await;
    let text = a.metrics().encode().unwrap();
    let queried = queried_metrics();
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|name| {
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !text.contains(&format!("# TYPE {base} "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
    // Two families of one name make the whole scrape invalid.
    let mut families = std::collections::HashSet::new();
    let twice: Vec<_> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| !families.insert(*name))
        .collect();
    assert!(
        twice.is_empty(),
        "metric families registered twice: {twice:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
