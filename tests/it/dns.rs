//! DNS bootstrap against a real DNS server on loopback (dnsmasq serving the
//! `_dnsaddr` TXT record), and a `/dns4` dial through it.
//!
//! Needs dnsmasq (`apt-get install dnsmasq-base`; `.ci/run` installs it).
//! Without it the test says so and passes, unless
//! BLACKHOLE_REQUIRE_INTEROP=1 (set by CI).

use std::{process::Stdio, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};

use blackhole_node::Event;

use crate::support::{config, start, wait_event};

/// dnsmasq on 127.0.0.1 with `records` (`--txt-record` and `--address`
/// arguments), killed on drop; returns it and its port.
///
/// dnsmasq binds its port over both UDP and TCP, and other tests open TCP
/// listeners all the time, so a port found free can be taken before dnsmasq
/// binds it. It therefore tries up to 5 fresh ports, each time waiting (up
/// to 10 s) for the "started" log line that dnsmasq prints once its sockets
/// are bound, and fails with dnsmasq's own last log lines.
async fn dnsmasq(records: &[String]) -> Option<(tokio::process::Child, u16)> {
    let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        let msg =
            "DNS bootstrap test skipped: dnsmasq is not installed (apt-get install dnsmasq-base)";
        if std::env::var("BLACKHOLE_REQUIRE_INTEROP").as_deref() == Ok("1") {
            panic!("{msg} (BLACKHOLE_REQUIRE_INTEROP=1)");
        }
        eprintln!("{msg}");
        return None;
    };
    let mut log = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
                &format!("--port={port}"),
            ])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let up = line.contains("started");
                log.push(line);
                if up {
                    return true;
                }
            }
            false
        })
        .await
        .expect("dnsmasq starts or exits within 10 s");
        if started {
            // Keep draining its log so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Some((child, port));
        }
        eprintln!("dnsmasq on port {port} exited; trying another port");
    }
    panic!(
        "dnsmasq did not start on 5 ports; its log:\n{}",
        log.join("\n")
    );
}

/// A loopback port that is free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_dnsaddr_and_dial_dns4() {
    let target = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let addr = target.listen_addrs().await.unwrap()[0].clone();
    let records = vec![
        format!(
            "--txt-record=_dnsaddr.boot.blackhole.test,dnsaddr={addr}/p2p/{}",
            target.peer_id()
        ),
        "--address=/node.blackhole.test/127.0.0.1".to_owned(),
    ];
    let Some((_dns, port)) = dnsmasq(&records).await else {
        return;
    };

    let dns = vec![format!("127.0.0.1:{port}").parse().unwrap()];

    // A /dns4 dial through the server.
    let tcp_port = addr.to_string().rsplit('/').next().unwrap().to_owned();
    let other = start({
        let mut c = config(&[]);
        c.transport.dns.nameservers = dns.clone();
        c
    })
    .await;
    let by_name: blackhole_node::Multiaddr = format!(
        "/dns4/node.blackhole.test/tcp/{tcp_port}/p2p/{}",
        target.peer_id()
    )
    .parse()
    .unwrap();
    let peer = other
        .dial(by_name.clone())
        .await
        .unwrap_or_else(|e| panic!("{by_name}: {e}"));
    assert_eq!(peer, target.peer_id());
    // A name nobody serves is a dial error, not a hang.
    let err = other
        .dial("/dns4/missing.blackhole.test/tcp/1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dial failed"), "{err}");

    // A node whose only bootstrap entry is the /dnsaddr name connects to
    // the peer its TXT record names, by itself.
    let mut c = config(&[]);
    c.transport.dns.nameservers = dns;
    c.discovery.bootstrap = vec!["/dnsaddr/boot.blackhole.test".parse().unwrap()];
    let mut events = target.events();
    let joiner = start(c).await;
    let joined = wait_event(&mut events, Duration::from_secs(20), |e| match e {
        Event::ConnectionEstablished { peer_id, .. } if *peer_id == joiner.peer_id() => Some(()),
        _ => None,
    })
    .await;
    let _: () = joined;
    for h in [joiner, other, target] {
        h.shutdown().await;
    }
}
