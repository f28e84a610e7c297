//! Peer exchange over streams: asking a peer for peers, and answering.
//! The wire format and its limits are `blackhole_discovery::px`.

use std::{sync::Arc, time::Duration};

use blackhole_discovery::px::{self, PeerAddrs};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p_identity::PeerId;
use libp2p_swarm::StreamProtocol;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::node::{Command, Error};

/// The protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(px::PROTOCOL);
/// Peer-exchange requests waiting to be taken (beyond them, new ones are
/// dropped).
pub(crate) const INBOUND_QUEUE: usize = 16;
/// Time allowed for one exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Answers served at once; more asking peers are turned away.
const MAX_CONCURRENT: usize = 8;

fn err(peer: PeerId, reason: impl ToString) -> Error {
    Error::Stream {
        peer,
        protocol: "peer exchange",
        reason: reason.to_string(),
    }
}

/// Asks `peer` for the peers it knows.
pub(crate) async fn request(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
) -> Result<Vec<PeerAddrs>, Error> {
    let exchange = async {
        let mut s = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| err(peer, e))?;
        s.close().await.map_err(|e| err(peer, e))?;
        let mut buf = Vec::new();
        (&mut s)
            .take(px::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| err(peer, e))?;
        px::decode(&buf).map_err(|e| err(peer, e))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Timeout {
            what: "peer exchange",
            after: TIMEOUT,
        })?
}

/// Answers peers that ask, with a sample the event loop picks.
pub(crate) async fn serve(
    mut incoming: blackhole_mux::accept::Incoming,
    commands: mpsc::WeakSender<Command>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            _ = stop.cancelled() => return,
        };
        let Some((peer, mut stream)) = next else {
            return;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "peer exchange refused: too many at once");
            continue;
        };
        let Some(commands) = commands.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(Command::PxSample {
                        asker: peer,
                        reply: tx,
                    })
                    .await
                    .ok()?;
                let peers = rx.await.ok()?;
                stream.write_all(&px::encode(&peers)).await.ok()?;
                stream.close().await.ok()
            };
            if tokio::time::timeout(TIMEOUT, answer)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                tracing::debug!(%peer, "peer exchange answer failed");
            }
        });
    }
}
