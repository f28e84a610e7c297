//! Inbound ping streams: a peer may hold two at once on one connection (the
//! ping spec's listener limit; js-libp2p's connection monitor pings beside
//! its explicit pings), and one more closes the oldest.

use std::time::Duration;

use blackhole_node::PeerId;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p_swarm::{Stream, StreamProtocol, SwarmEvent};

use crate::support::{addr, config, start};

const STEP: Duration = Duration::from_secs(20);
const PING: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");

/// One ping on `stream`: 32 bytes out, the same 32 back.
async fn ping(stream: &mut Stream, byte: u8) -> std::io::Result<()> {
    let payload = [byte; 32];
    tokio::time::timeout(STEP, async {
        stream.write_all(&payload).await?;
        stream.flush().await?;
        let mut echo = [0u8; 32];
        stream.read_exact(&mut echo).await?;
        assert_eq!(echo, payload, "the echo differs");
        Ok(())
    })
    .await
    .expect("a ping is answered or fails in time")
}

#[tokio::test]
async fn two_inbound_ping_streams_are_answered_and_a_third_closes_the_oldest() {
    let ours = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let target = addr(&ours, "/tcp/").await;

    // A bare peer: our transport and raw streams, nothing else.
    let key = blackhole_security::identity::generate();
    let built = blackhole_transport::build(
        &key,
        &blackhole_transport::Config::default(),
        &Default::default(),
        &mut Default::default(),
    )
    .unwrap();
    let behaviour = libp2p_stream::Behaviour::new();
    let mut control = behaviour.new_control();
    let mut swarm = libp2p_swarm::Swarm::new(
        built.transport,
        behaviour,
        key.public().to_peer_id(),
        libp2p_swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(300)),
    );
    swarm.dial(target).unwrap();
    let peer: PeerId = tokio::time::timeout(STEP, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => return peer_id,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    assert_eq!(peer, ours.peer_id());
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut open = async || {
        tokio::time::timeout(STEP, control.open_stream(peer, PING))
            .await
            .expect("a stream opens in time")
            .expect("a ping stream")
    };

    // Two streams open at once (each negotiated before the next opens):
    // both answer, in any order, more than once.
    let mut a = open().await;
    let mut b = open().await;
    ping(&mut a, 1).await.expect("the first stream answers");
    ping(&mut b, 2).await.expect("the second stream answers");
    ping(&mut a, 3)
        .await
        .expect("the first stream still answers");

    // A third closes the oldest; the other two go on.
    let mut c = open().await;
    ping(&mut c, 4).await.expect("the third stream answers");
    ping(&mut b, 5)
        .await
        .expect("the second stream still answers");
    assert!(
        ping(&mut a, 6).await.is_err(),
        "the oldest stream is closed once a third opens"
    );

    driver.abort();
    ours.shutdown().await;
}
