//! One authenticated connection to a peer, multiplexed: either side sends requests and
//! answers the other's; each request carries an id that its response repeats, so many
//! requests are in flight at once, from every group.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::wire::{self, Frame, MAX_FRAME, Reply, Request, Unanswered};
use super::{Network, NodeStream, lock};
use crate::replication::consensus::{GroupId, NodeId, RpcError, rpc_failed, rpc_unreachable};

/// The read buffer of a connection: one read takes in every frame that has arrived.
const READ_BUFFER: usize = 64 * 1024;

/// Frames waiting to be written on one connection.
const OUTGOING_CAPACITY: usize = 1_024;

/// One live connection to a peer.
pub(super) struct Link {
    peer: NodeId,
    outgoing: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Reply, Unanswered>>>>,
    next_id: AtomicU64,
    /// When the connection was made, and how long after that its last frame came (ms).
    opened: Instant,
    last_heard: AtomicU64,
    /// Cancelled when the connection ends, from either side.
    closed: CancellationToken,
}

impl Link {
    fn new(peer: NodeId, outgoing: mpsc::Sender<Frame>) -> Link {
        Link {
            peer,
            outgoing,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            opened: Instant::now(),
            last_heard: AtomicU64::new(0),
            closed: CancellationToken::new(),
        }
    }

    /// Sends `request` for `group` and waits for its reply.
    pub(super) async fn call(&self, group: GroupId, request: Request) -> Result<Reply, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(id, reply);
        // Forgets the request if the caller gives up (a timeout drops this future), so
        // that unanswered requests do not pile up on a long-lived connection.
        let _forget = Forget { link: self, id };
        let frame = Frame::Request { id, group: group.0, request };
        let lost = || rpc_unreachable(format!("connection to node {} lost", self.peer));
        if self.outgoing.send(frame).await.is_err() {
            return Err(lost());
        }
        match answer.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(unanswered)) => Err(rpc_failed(format!("node {}: {unanswered}", self.peer))),
            Err(_) => Err(lost()),
        }
    }

    /// Notes that a frame came from the peer.
    fn heard(&self) {
        let since_opened = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard.store(since_opened, Ordering::Relaxed);
    }

    /// How long since the peer's last frame (or since the connection was made).
    pub(super) fn silent_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_heard.load(Ordering::Relaxed)))
    }

    /// Ends the connection; requests waiting for replies fail at once.
    pub(super) fn close(&self) {
        self.closed.cancel();
        lock(&self.pending).clear();
    }
}

/// Removes a request from its link's pending table when dropped.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.link.pending).remove(&self.id);
    }
}

/// Serves one authenticated connection until it drops, is closed, or the network stops.
pub(super) async fn run(network: Network, peer: NodeId, stream: NodeStream) {
    match stream {
        NodeStream::Plain(stream) => {
            let (reader, writer) = stream.into_split();
            run_halves(network, peer, reader, writer).await;
        }
        NodeStream::Tls(stream) => {
            let (reader, writer) = tokio::io::split(*stream);
            run_halves(network, peer, reader, writer).await;
        }
    }
}

async fn run_halves<R, W>(network: Network, peer: NodeId, reader: R, writer: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (outgoing, queue) = mpsc::channel(OUTGOING_CAPACITY);
    let link = Arc::new(Link::new(peer, outgoing));
    if let Some(old) = network.set_link(peer, Some(Arc::clone(&link))) {
        old.close();
    }
    let writing = network.tasks().spawn(write_loop(FramedWrite::new(writer, wire::codec(MAX_FRAME)), queue));
    let reading = read_loop(&network, &link, FramedRead::with_capacity(reader, wire::codec(MAX_FRAME), READ_BUFFER));
    tokio::select! {
        result = reading => {
            if let Err(error) = result {
                tracing::debug!(peer, %error, "connection read failed");
            }
        }
        () = link.closed.cancelled() => {}
        () = network.stopping().cancelled() => {}
    }
    writing.abort();
    link.close();
    network.unset_link(peer, &link);
}

async fn read_loop<R: AsyncRead + Unpin>(
    network: &Network,
    link: &Arc<Link>,
    mut frames: FramedRead<R, LengthDelimitedCodec>,
) -> io::Result<()> {
    while let Some(bytes) = frames.next().await {
        let frame: Frame = wire::decode(&bytes?)?;
        link.heard();
        match frame {
            Frame::Request { id, group, request } => {
                let answering = network.clone();
                let outgoing = link.outgoing.clone();
                network.tasks().spawn(async move {
                    let reply = answering.answer(group, request).await;
                    let _ = outgoing.send(Frame::Response { id, reply }).await;
                });
            }
            Frame::Response { id, reply } => {
                if let Some(waiting) = lock(&link.pending).remove(&id) {
                    let _ = waiting.send(reply);
                }
            }
        }
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut frames: FramedWrite<W, LengthDelimitedCodec>,
    mut queue: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = queue.recv().await {
        // Whatever else is waiting goes out with it, in one flush.
        let mut result = feed(&mut frames, &frame).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(frame) => result = feed(&mut frames, &frame).await,
                Err(_) => break,
            }
        }
        if let Err(error) = result.and(SinkExt::<bytes::Bytes>::flush(&mut frames).await) {
            tracing::debug!(%error, "connection write failed");
            return;
        }
    }
}

async fn feed<W: AsyncWrite + Unpin>(
    frames: &mut FramedWrite<W, LengthDelimitedCodec>,
    frame: &Frame,
) -> io::Result<()> {
    frames.feed(wire::encode(frame)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_silent_from_its_last_frame_on() {
        let (outgoing, _queue) = mpsc::channel(1);
        let link = Link::new(2, outgoing);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(link.silent_for() >= Duration::from_millis(200), "silent since it was opened");
        link.heard();
        assert!(link.silent_for() < Duration::from_millis(200), "a frame ends the silence");
    }

    #[tokio::test]
    async fn oversized_frames_are_refused() {
        let bytes: &[u8] = &(u32::MAX).to_be_bytes();
        let mut frames = FramedRead::new(bytes, wire::codec(MAX_FRAME));
        let result = frames.next().await.expect("one item");
        assert_eq!(result.map_err(|error| error.kind()).err(), Some(io::ErrorKind::InvalidData));
    }
}
