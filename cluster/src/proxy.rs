//! [`LinkProxy`]: the node-to-node links of a [`LocalCluster`](crate::LocalCluster) through
//! a userspace TCP proxy, so that a fault drill can cut, cut one way or slow down the
//! link between two nodes while both processes run.
//!
//! Each node's advertised cluster address (what the others dial, and what the groups'
//! memberships hold) is a listener of the proxy that forwards to the node's real cluster
//! listener. The proxy tells which node dialed from the connection's source address: a
//! pkd node dials its peers from the address it listens on (127.0.0.`i` for node `i`).
//! Every byte is then forwarded under the [`Rule`] of its direction, `(from, to)`, which
//! [`Links`] changes at any time, on connections already open as well as new ones:
//!
//! - [`Rule::Pass`]: forwarded at once.
//! - [`Rule::Drop`]: nothing of that direction is forwarded. The proxy stops reading it,
//!   so its bytes wait in the kernel's buffers and then in the sender's, and its writes
//!   stall: what a TCP connection across a partition does while it retransmits. Bytes
//!   already read wait in the proxy. When the rule goes back to pass, everything arrives
//!   in order, unless a node gave up on the connection meanwhile (pkd drops a silent
//!   peer's connection and dials again; a new connection across the cut is accepted and
//!   stalls the same way, so its handshake times out). The proxy never cuts a connection
//!   on its own: one ends when a node's close is seen, and a close does not cross a
//!   direction the proxy does not read, so a connection given up across a cut lingers in
//!   the proxy until the link heals.
//! - [`Rule::Delay`]: each piece is forwarded no earlier than the delay after the proxy
//!   read it, in order.
//!
//! A direction holds at most [`PIECES_IN_FLIGHT`] pieces of at most [`PIECE`] bytes; past
//! that it stops reading and its sender waits, so a slow or cut link never grows memory.
//! A connection from an address the proxy does not know passes untouched.
//!
//! The proxy runs on a runtime of its own (one worker thread), so the launcher, which is
//! synchronous, can own it; dropping the proxy closes every listener and connection.
//!
//! [`ServiceLink`] is the plainer kind, for a node's links to a service it depends on (the
//! results database, Redis): one listener forwarding to one upstream, whose connections
//! are either all open or all cut. Cut, it resets every open connection (both ends see
//! a reset, as when a firewall drops the link and the peers give up on it) and resets
//! every new one as soon as it is accepted; restored, it forwards again.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The most bytes one read takes off a connection.
pub const PIECE: usize = 16 * 1024;

/// The most pieces one direction of one connection holds (read, not yet written).
pub const PIECES_IN_FLIGHT: usize = 64;

/// What a direction of a link does with its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rule {
    /// Forwarded at once.
    #[default]
    Pass,
    /// Held back: the direction stalls until the rule changes.
    Drop,
    /// Forwarded this long after the proxy read them.
    Delay(Duration),
}

/// The rule of every direction that is not [`Rule::Pass`], by `(from, to)`.
type Table = BTreeMap<(u64, u64), Rule>;

/// The switchboard of a [`LinkProxy`]: the rule of each direction of each link. Cheap to
/// clone; every clone changes the same links.
#[derive(Clone)]
pub struct Links {
    rules: Arc<watch::Sender<Table>>,
    /// Which node dials from which address.
    sources: Arc<Mutex<BTreeMap<IpAddr, u64>>>,
}

impl Links {
    fn new() -> Links {
        Links { rules: Arc::new(watch::channel(Table::new()).0), sources: Arc::default() }
    }

    /// Sets the rule of the bytes node `from` sends node `to`.
    pub fn set(&self, from: u64, to: u64, rule: Rule) {
        self.rules.send_modify(|table| {
            if rule == Rule::Pass {
                table.remove(&(from, to));
            } else {
                table.insert((from, to), rule);
            }
        });
    }

    /// Sets the rule of both directions between `a` and `b`.
    pub fn set_both(&self, a: u64, b: u64, rule: Rule) {
        self.set(a, b, rule);
        self.set(b, a, rule);
    }

    /// The rule of the bytes node `from` sends node `to`.
    pub fn rule(&self, from: u64, to: u64) -> Rule {
        rule_of(&self.rules.borrow(), Some((from, to)))
    }

    /// Every direction whose rule is not [`Rule::Pass`].
    pub fn faulty(&self) -> Vec<((u64, u64), Rule)> {
        self.rules.borrow().iter().map(|(&link, &rule)| (link, rule)).collect()
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.rules.send_modify(Table::clear);
    }

    fn node_at(&self, address: IpAddr) -> Option<u64> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).get(&address).copied()
    }
}

fn rule_of(table: &Table, link: Option<(u64, u64)>) -> Rule {
    link.and_then(|link| table.get(&link).copied()).unwrap_or_default()
}

/// The proxy in front of every node's cluster listener.
pub struct LinkProxy {
    runtime: Option<tokio::runtime::Runtime>,
    links: Links,
}

impl LinkProxy {
    pub fn new() -> io::Result<LinkProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pkd-link-proxy")
            .enable_all()
            .build()?;
        Ok(LinkProxy { runtime: Some(runtime), links: Links::new() })
    }

    /// The switchboard.
    pub fn links(&self) -> Links {
        self.links.clone()
    }

    /// Listens on `listen` (port 0: the kernel picks one) for node `node`, forwarding to
    /// `target`, its real cluster listener; returns the address it listens on. Node
    /// `node` dials its peers from `listen`'s address.
    pub fn forward(&self, node: u64, listen: SocketAddr, target: SocketAddr) -> io::Result<SocketAddr> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io::Error::other("the proxy has stopped"))?;
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        self.links.sources.lock().unwrap_or_else(PoisonError::into_inner).insert(address.ip(), node);
        let links = self.links.clone();
        let _guard = runtime.enter();
        let listener = TcpListener::from_std(listener)?;
        runtime.spawn(accept_loop(listener, node, target, links));
        Ok(address)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Without waiting: the proxy may be dropped on another runtime's thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, node: u64, target: SocketAddr, links: Links) {
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, most likely: let some close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let from = links.node_at(peer.ip());
        let links = links.clone();
        tokio::spawn(async move {
            // The node may be down: then the dialer's connection closes at once, as a
            // refused one would.
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            let there = from.map(|from| (from, node));
            let back = from.map(|from| (node, from));
            let rules = links.rules.subscribe();
            // pkd closes both directions of a connection at once: so does the proxy,
            // as soon as one of them ends.
            tokio::select! {
                () = direction(inbound_read, outbound_write, there, rules.clone()) => {}
                () = direction(outbound_read, inbound_write, back, rules) => {}
            }
        });
    }
}

/// One direction of one connection: a reader and a writer with at most
/// [`PIECES_IN_FLIGHT`] pieces between them. Ends when the reading side closes (the
/// writing side is then shut down) or either side fails.
async fn direction(
    mut reading: OwnedReadHalf,
    mut writing: OwnedWriteHalf,
    link: Option<(u64, u64)>,
    rules: watch::Receiver<Table>,
) {
    let (pieces, mut arriving) = mpsc::channel::<(Instant, Vec<u8>)>(PIECES_IN_FLIGHT);
    let mut reader_rules = rules.clone();
    let reader = async move {
        loop {
            // A dropped direction is not read: its bytes wait in the kernel's buffers.
            if reader_rules.wait_for(|table| rule_of(table, link) != Rule::Drop).await.is_err() {
                return;
            }
            let mut piece = vec![0; PIECE];
            match reading.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    piece.truncate(read);
                    if pieces.send((Instant::now(), piece)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let mut writer_rules = rules;
    let writer = async move {
        while let Some((read_at, piece)) = arriving.recv().await {
            if !wait_for_passage(&mut writer_rules, link, read_at).await {
                return;
            }
            if writing.write_all(&piece).await.is_err() {
                return;
            }
        }
        let _ = writing.shutdown().await;
    };
    // A reader that is done leaves the writer to deliver what it read; a writer that
    // failed ends the direction at once (the reader may wait for bytes that never come).
    tokio::pin!(writer);
    tokio::select! {
        () = reader => writer.await,
        () = &mut writer => {}
    }
}

/// Waits until a piece read at `read_at` may go out on `link`: not while the link drops,
/// not before its delay has passed. False if the rules are gone (the proxy stops).
async fn wait_for_passage(rules: &mut watch::Receiver<Table>, link: Option<(u64, u64)>, read_at: Instant) -> bool {
    loop {
        let rule = rule_of(&rules.borrow_and_update(), link);
        match rule {
            Rule::Pass => return true,
            Rule::Delay(delay) if Instant::now() >= read_at + delay => return true,
            Rule::Delay(delay) => {
                tokio::select! {
                    () = tokio::time::sleep_until(read_at + delay) => {}
                    changed = rules.changed() => if changed.is_err() { return false },
                }
            }
            Rule::Drop => {
                if rules.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// A TCP forwarder in front of one service, whose link can be cut and restored (see the
/// module's docs). It runs on the runtime it was started on; dropping it closes its
/// listener and every connection.
pub struct ServiceLink {
    address: SocketAddr,
    upstream: SocketAddr,
    /// True while the link is cut.
    cut: Arc<watch::Sender<bool>>,
}

impl ServiceLink {
    /// Listens on `listen` (port 0: the kernel picks one) and forwards every connection to
    /// `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<ServiceLink> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let cut = Arc::new(watch::channel(false).0);
        tokio::spawn(forward_service(listener, upstream, cut.subscribe()));
        Ok(ServiceLink { address, upstream, cut })
    }

    /// The address to give the service's clients instead of the service's own.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The service's own address.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every open connection and every new one until [`ServiceLink::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

/// Closes `stream` with a reset rather than an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Accepts until the [`ServiceLink`] is dropped (its sender goes).
async fn forward_service(listener: TcpListener, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(_) => {
                    // Out of descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if *cut.borrow() {
            reset(inbound);
            continue;
        }
        tokio::spawn(service_connection(inbound, upstream, cut.clone()));
    }
}

/// One client's connection, forwarded until either side closes or the link is cut (then
/// both sides are reset).
async fn service_connection(mut inbound: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let connecting = tokio::select! {
        connected = TcpStream::connect(upstream) => connected,
        _ = cut.wait_for(|cut| *cut) => {
            reset(inbound);
            return;
        }
    };
    let Ok(mut outbound) = connecting else {
        reset(inbound);
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let was_cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        // The link is cut, or the forwarder is gone.
        _ = cut.wait_for(|cut| *cut) => true,
    };
    if was_cut {
        reset(inbound);
        reset(outbound);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpSocket;

    /// A proxy in front of node 2 (at 127.0.0.2, forwarding to a listener of the test's),
    /// with node 1 known at 127.0.0.1.
    struct Bench {
        proxy: LinkProxy,
        node_two: TcpListener,
        advertised: SocketAddr,
    }

    async fn bench() -> Bench {
        let proxy = LinkProxy::new().unwrap();
        let node_two = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let real = node_two.local_addr().unwrap();
        let advertised = proxy.forward(2, "127.0.0.2:0".parse().unwrap(), real).unwrap();
        // Node 1's own listener only tells the proxy where node 1 dials from.
        proxy.forward(1, "127.0.0.1:0".parse().unwrap(), real).unwrap();
        Bench { proxy, node_two, advertised }
    }

    impl Bench {
        /// Node 1 dials node 2 through the proxy: node 1's end and node 2's.
        async fn connect(&self) -> (TcpStream, TcpStream) {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let one = socket.connect(self.advertised).await.unwrap();
            let (two, _) = self.node_two.accept().await.unwrap();
            (one, two)
        }
    }

    async fn read_exactly(stream: &mut TcpStream, count: usize) -> Vec<u8> {
        let mut bytes = vec![0; count];
        tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut bytes)).await.unwrap().unwrap();
        bytes
    }

    /// Nothing readable on `stream` for a while.
    async fn silent(stream: &mut TcpStream) -> bool {
        let mut byte = [0; 1];
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await.is_err()
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_in_order() {
        let bench = bench().await;
        let (mut one, mut two) = bench.connect().await;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writing = {
            let sent = sent.clone();
            tokio::spawn(async move {
                one.write_all(&sent).await.unwrap();
                one
            })
        };
        assert_eq!(read_exactly(&mut two, sent.len()).await, sent);
        let mut one = writing.await.unwrap();
        two.write_all(b"and back").await.unwrap();
        assert_eq!(read_exactly(&mut one, 8).await, b"and back");
        drop(two);
        let mut rest = Vec::new();
        one.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "node 2's close reaches node 1");
    }

    #[tokio::test]
    async fn a_dropped_direction_delivers_nothing_until_it_heals_and_the_other_way_passes() {
        let bench = bench().await;
        let links = bench.proxy.links();
        let (mut one, mut two) = bench.connect().await;
        links.set(1, 2, Rule::Drop);
        assert_eq!(links.rule(1, 2), Rule::Drop);
        assert_eq!(links.rule(2, 1), Rule::Pass);
        one.write_all(b"held").await.unwrap();
        assert!(silent(&mut two).await, "1 -> 2 is cut");
        two.write_all(b"fine").await.unwrap();
        assert_eq!(read_exactly(&mut one, 4).await, b"fine", "2 -> 1 still passes");

        // A connection opened across the cut stalls the same way.
        let (mut late_one, mut late_two) = bench.connect().await;
        late_one.write_all(b"late").await.unwrap();
        assert!(silent(&mut late_two).await);

        links.heal();
        assert!(links.faulty().is_empty());
        assert_eq!(read_exactly(&mut two, 4).await, b"held", "held bytes arrive once healed");
        assert_eq!(read_exactly(&mut late_two, 4).await, b"late");
    }

    #[tokio::test]
    async fn a_blackhole_stalls_a_writer_without_buffering_what_it_sends() {
        let bench = bench().await;
        let links = bench.proxy.links();
        let (mut one, mut two) = bench.connect().await;
        links.set_both(1, 2, Rule::Drop);
        // Far more than the kernel's buffers and the proxy's pieces hold together.
        let size = 64 * 1024 * 1024;
        let mut writing = tokio::spawn(async move {
            one.write_all(&vec![7; size]).await.unwrap();
            one
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(800), &mut writing).await.is_err(),
            "the writer stalls behind the cut"
        );
        assert!(silent(&mut two).await);
        links.heal();
        let mut received = 0;
        let mut buffer = vec![0; 1 << 20];
        while received < size {
            let read = tokio::time::timeout(Duration::from_secs(30), two.read(&mut buffer)).await.unwrap().unwrap();
            assert!(read > 0, "closed after {received} bytes");
            assert!(buffer[..read].iter().all(|&byte| byte == 7));
            received += read;
        }
        writing.await.unwrap();
    }

    #[tokio::test]
    async fn a_delayed_direction_delivers_in_order_no_earlier_than_its_delay() {
        let bench = bench().await;
        let links = bench.proxy.links();
        let (mut one, mut two) = bench.connect().await;
        let delay = Duration::from_millis(400);
        links.set(1, 2, Rule::Delay(delay));
        let sent = Instant::now();
        one.write_all(b"first").await.unwrap();
        one.write_all(b"second").await.unwrap();
        assert_eq!(read_exactly(&mut two, 11).await, b"firstsecond");
        assert!(sent.elapsed() >= delay, "arrived after {:?}", sent.elapsed());

        // The rule is per direction: node 2's answer is not held with node 1's bytes.
        one.write_all(b"ping").await.unwrap();
        two.write_all(b"pong").await.unwrap();
        assert_eq!(read_exactly(&mut one, 4).await, b"pong");
        assert_eq!(read_exactly(&mut two, 4).await, b"ping");
    }

    #[tokio::test]
    async fn a_stranger_passes_untouched() {
        let bench = bench().await;
        let links = bench.proxy.links();
        links.set_both(1, 2, Rule::Drop);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        let mut stranger = socket.connect(bench.advertised).await.unwrap();
        let (mut two, _) = bench.node_two.accept().await.unwrap();
        stranger.write_all(b"hi").await.unwrap();
        assert_eq!(read_exactly(&mut two, 2).await, b"hi");
    }

    /// An echo service and a link in front of it.
    async fn echo_behind_link() -> ServiceLink {
        let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = service.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = service.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        ServiceLink::start("127.0.0.1:0".parse().unwrap(), upstream).await.unwrap()
    }

    /// Whether a connection through `link` echoes what it is sent.
    async fn echoes(link: &ServiceLink) -> bool {
        let Ok(mut stream) = TcpStream::connect(link.address()).await else { return false };
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut answer = [0; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer)).await,
            Ok(Ok(_)) if &answer == b"ping"
        )
    }

    #[tokio::test]
    async fn a_cut_service_link_resets_open_connections_and_refuses_new_ones_until_restored() {
        let link = echo_behind_link().await;
        assert!(echoes(&link).await);
        let mut open = TcpStream::connect(link.address()).await.unwrap();
        open.write_all(b"one").await.unwrap();
        let mut answer = [0; 3];
        open.read_exact(&mut answer).await.unwrap();

        link.cut();
        assert!(link.is_cut());
        let mut rest = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut rest)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the open connection ends: {read:?}");
        assert!(!echoes(&link).await, "a new connection is refused while cut");

        link.restore();
        assert!(echoes(&link).await, "restored, it forwards again");
    }
}
