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

/// A bare peer (our transport and raw streams, nothing else) connected to
/// `target`; its swarm runs until the task is aborted.
async fn bare_peer(
    target: blackhole_node::Multiaddr,
) -> (PeerId, libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let key = blackhole_security::identity::generate();
    let built = blackhole_transport::build(
        &key,
        &blackhole_transport::Config::default(),
        &Default::default(),
        &mut Default::default(),
    )
    .unwrap();
    let behaviour = libp2p_stream::Behaviour::new();
    let control = behaviour.new_control();
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
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (peer, control, driver)
}

async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Stream {
    tokio::time::timeout(STEP, control.open_stream(peer, PING))
        .await
        .expect("a stream opens in time")
        .expect("a ping stream")
}

#[tokio::test]
async fn two_inbound_ping_streams_are_answered_and_a_third_closes_the_oldest() {
    let ours = start(config(&["/ip4/127.0.0.1/tcp/0"])).await;
    let (peer, mut control, driver) = bare_peer(addr(&ours, "/tcp/").await).await;
    assert_eq!(peer, ours.peer_id());

    // Two streams open at once (each negotiated before the next opens):
    // both answer, in any order, more than once.
    let mut a = open(&mut control, peer).await;
    let mut b = open(&mut control, peer).await;
    ping(&mut a, 1).await.expect("the first stream answers");
    ping(&mut b, 2).await.expect("the second stream answers");
    ping(&mut a, 3)
        .await
        .expect("the first stream still answers");

    // A third closes the oldest; the other two go on.
    let mut c = open(&mut control, peer).await;
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

/// A peer that begins a ping and stalls has its stream closed after
/// `ping.inbound_idle_timeout`, not held for ever.
#[tokio::test]
async fn a_stalled_inbound_ping_stream_is_closed_after_the_idle_timeout() {
    let mut c = config(&["/ip4/127.0.0.1/tcp/0"]);
    c.ping.inbound_idle_timeout = Duration::from_millis(500);
    let ours = start(c).await;
    let (peer, mut control, driver) = bare_peer(addr(&ours, "/tcp/").await).await;

    let mut s = open(&mut control, peer).await;
    ping(&mut s, 1).await.expect("a whole ping is answered");
    // Half a ping, then nothing: our side gives up and closes the stream.
    s.write_all(&[2; 16]).await.unwrap();
    s.flush().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(STEP, s.read_to_end(&mut rest))
        .await
        .expect("the stalled stream is closed in time");
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "no echo of a half ping: {read:?}"
    );

    driver.abort();
    ours.shutdown().await;
}
