//! The peer transport: one authenticated connection per pair of replicas, bounded queues,
//! coalesced writes, reconnects with capped exponential backoff and jitter.
//!
//! Per pair, the node with the lower id dials and the other accepts, so there is one connection
//! and both directions share it. Each peer has a link thread that owns the connection (dialing
//! or adopting it, batching queued messages into `writev`s, sending keepalives) and, while
//! connected, a reader thread that validates every frame and hands decoded messages to the
//! consumer. A sender that finds the link idle writes its message itself, without blocking
//! ([`crate::peer_writer`]). A peer that is slow or gone blocks only its own threads: the send
//! path is otherwise a `try_send` into that peer's bounded queue, which drops and counts when
//! full.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, select};
use smr_raft::{Message, NodeId};
use thiserror::Error;

use crate::arrival::ArrivalHook;
use crate::config::{ConfigError, NetConfig};
use crate::conn::{ConnError, FrameReader};
use crate::frame::{FrameError, FrameKind, RECORD_HEADER_BYTES};
use crate::handshake::{self, HandshakeError, Identity, RefuseReason};
use crate::peer_writer::{PeerWriter, message_queue_bytes};
use crate::rng::Backoff;
use crate::stats::{Counters, NetStats, add, bump};
use crate::wire::{decode_message, decode_message_batch};

/// Messages received from one peer in one read, in the order they were sent.
///
/// Entry data and snapshot chunks are slices of the connection's receive buffer, not copies:
/// holding any one of them keeps that whole buffer (`read_bytes_max`, or one large frame)
/// allocated until it is dropped.
#[derive(Debug)]
pub struct Inbound {
    pub from: NodeId,
    pub messages: Vec<Message>,
}

/// Why a message was not queued. The message is dropped and counted; Raft retransmits.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SendError {
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("send queue to node {0} is full")]
    QueueFull(NodeId),
}

/// Why the transport could not start or change its peer set.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cluster secret must be at least 16 bytes")]
    SecretTooShort,
    #[error("node id 0 is not valid")]
    NodeZero,
    #[error("node {0} listed twice or equal to our own id")]
    DuplicatePeer(NodeId),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Messages an inbound batch has room for before it grows.
const INBOUND_BATCH_CAPACITY: usize = 64;
/// How long a reader waits on a full inbound queue before it checks for shutdown again.
const INBOUND_WAIT: Duration = Duration::from_millis(100);

struct Shared {
    identity: Identity,
    config: NetConfig,
    /// Shared with the [`crate::StatsReader`]s handed out, which hold nothing else.
    counters: Arc<Counters>,
    shutdown: AtomicBool,
    /// Peers by id, for the accept path. Control plane only: the send path never locks it.
    registry: Mutex<HashMap<NodeId, Arc<PeerSlot>>>,
    inbound: Sender<Inbound>,
    /// Called by a reader after each batch it puts into `inbound`.
    on_inbound: ArrivalHook,
    /// Connections the listener holds: in handshake, or adopted by a link.
    accepted_connections: AtomicUsize,
    handshakes: AtomicUsize,
}

/// What the accept path needs to know about one peer.
struct PeerSlot {
    id: NodeId,
    address: Mutex<SocketAddr>,
    /// A connection to this peer is live (adopted or dialed and authenticated).
    connected: AtomicBool,
    /// Authenticated inbound connections handed to the link thread. Capacity 1: a second one
    /// arriving before the first is adopted is a duplicate.
    adopt: Sender<Adopted>,
    queued_bytes: AtomicUsize,
    /// The connection's write side: written by an idle link's senders, or its link thread.
    writer: PeerWriter,
}

struct Adopted {
    stream: TcpStream,
    reader: FrameReader,
    guard: ConnectionGuard,
}

/// Counts one accepted connection against `connections_max` for as long as it lives.
struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.accepted_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Link {
    slot: Arc<PeerSlot>,
    /// Dropped to stop the link thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The peer transport of one node. Owned by the runtime's net stage.
///
/// Ordering: messages to one peer are sent in the order [`PeerTransport::send`] accepted them,
/// over one connection at a time; a reconnect may lose the messages that were in flight (Raft
/// tolerates loss, never reordering within what arrives, which TCP keeps).
pub struct PeerTransport {
    shared: Arc<Shared>,
    links: HashMap<NodeId, Link>,
    sender: PeerSender,
    local_addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PeerTransport")
            .field("node_id", &self.shared.identity.node_id)
            .field("local_addr", &self.local_addr)
            .field("peers", &self.links.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PeerTransport {
    /// Starts the transport on `listener` with the given peers (not including this node).
    ///
    /// Returns the transport and the bounded channel of received messages, which the consumer
    /// must drain: a full channel makes readers wait, which pushes back to the senders.
    ///
    /// # Errors
    /// An invalid config or identity, or a listener that cannot be used.
    pub fn start(
        config: NetConfig,
        identity: Identity,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<(PeerTransport, Receiver<Inbound>), StartError> {
        config.validate()?;
        if identity.secret.len() < 16 {
            return Err(StartError::SecretTooShort);
        }
        if identity.node_id == 0 {
            return Err(StartError::NodeZero);
        }
        let local_addr = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = bounded(config.inbound_batches_max);
        let shared = Arc::new(Shared {
            identity,
            config,
            counters: Arc::default(),
            shutdown: AtomicBool::new(false),
            registry: Mutex::new(HashMap::new()),
            inbound: inbound_tx,
            on_inbound: ArrivalHook::default(),
            accepted_connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
        });
        let sender = PeerSender { shared: Arc::clone(&shared), queues: Arc::new(RwLock::new(HashMap::new())) };
        let mut transport = PeerTransport {
            shared: Arc::clone(&shared),
            links: HashMap::new(),
            sender,
            local_addr,
            accept_thread: None,
        };
        for &(id, address) in peers {
            transport.add_peer(id, address)?;
        }
        let accept_shared = Arc::clone(&shared);
        transport.accept_thread = Some(
            thread::Builder::new()
                .name(format!("net-accept-{}", shared.identity.node_id))
                .spawn(move || accept_loop(&accept_shared, &listener))?,
        );
        Ok((transport, inbound_rx))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.identity.node_id
    }

    /// Queues `message` for `message.to`. Never blocks.
    ///
    /// # Errors
    /// Unknown peer, or its queue is full (by count or bytes); the message is dropped and
    /// counted either way.
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        self.sender.send(message)
    }

    /// A handle that queues messages to the current peers from another thread (the log writer
    /// sends the acknowledgements it made durable without a hand-off back to the core). Peers
    /// added or removed later are seen by every handle.
    pub fn sender(&self) -> PeerSender {
        self.sender.clone()
    }

    /// Has every reader call `hook` right after it puts a batch into the inbound channel, on
    /// the reader's thread (see `arrival.rs`). Set once; a second call is ignored and returns
    /// false. The hook must not wait for anything the transport does, and must not remove
    /// peers or shut the transport down: the reader calling it would wait for itself.
    pub fn on_inbound(&self, hook: impl Fn() + Send + Sync + 'static) -> bool {
        self.shared.on_inbound.set(hook)
    }

    /// Adds a peer (a node that joined the configuration). Its link starts at once.
    ///
    /// # Errors
    /// Node id 0, our own id or a peer already present.
    pub fn add_peer(&mut self, id: NodeId, address: SocketAddr) -> Result<(), StartError> {
        if id == 0 {
            return Err(StartError::NodeZero);
        }
        if id == self.shared.identity.node_id || self.links.contains_key(&id) {
            return Err(StartError::DuplicatePeer(id));
        }
        let config = &self.shared.config;
        let (queue_tx, queue_rx) = bounded(config.peer_queue_messages_max);
        let (stop_tx, stop_rx) = bounded(1);
        let (adopt_tx, adopt_rx) = bounded(1);
        let (writer, doorbell) = PeerWriter::new(id, config.frame_bytes_max);
        let slot = Arc::new(PeerSlot {
            id,
            address: Mutex::new(address),
            connected: AtomicBool::new(false),
            adopt: adopt_tx,
            queued_bytes: AtomicUsize::new(0),
            writer,
        });
        let link_state = LinkState {
            shared: Arc::clone(&self.shared),
            slot: Arc::clone(&slot),
            queue: queue_rx,
            doorbell,
            stop: stop_rx,
            adopt: adopt_rx,
        };
        let thread = thread::Builder::new()
            .name(format!("net-link-{}-{}", self.shared.identity.node_id, id))
            .spawn(move || link_state.run())?;
        self.shared.registry.lock().expect("registry lock poisoned").insert(id, Arc::clone(&slot));
        self.sender.queues_mut().insert(id, PeerQueue { slot: Arc::clone(&slot), queue: queue_tx });
        self.links.insert(id, Link { slot, stop: Some(stop_tx), thread: Some(thread) });
        Ok(())
    }

    /// Changes the address a peer is dialed at; the next reconnect uses it.
    pub fn set_peer_address(&self, id: NodeId, address: SocketAddr) {
        if let Some(link) = self.links.get(&id) {
            *link.slot.address.lock().expect("address lock poisoned") = address;
        }
    }

    /// Removes a peer: its connection is closed and its queued messages dropped.
    pub fn remove_peer(&mut self, id: NodeId) {
        self.shared.registry.lock().expect("registry lock poisoned").remove(&id);
        self.sender.queues_mut().remove(&id);
        if let Some(link) = self.links.remove(&id) {
            link.stop_and_join();
        }
    }

    /// Peers with a live authenticated connection right now.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .links
            .values()
            .filter(|link| link.slot.connected.load(Ordering::Relaxed))
            .map(|link| link.slot.id)
            .collect();
        peers.sort_unstable();
        peers
    }

    pub fn stats(&self) -> NetStats {
        self.shared.counters.snapshot()
    }

    /// Reads [`PeerTransport::stats`] from elsewhere (a metrics report).
    pub fn stats_reader(&self) -> crate::stats::StatsReader {
        let counters = Arc::clone(&self.shared.counters);
        crate::stats::StatsReader::new(move || counters.snapshot())
    }

    /// Stops every thread and closes every connection. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.sender.queues_mut().clear();
        for (_, link) in self.links.drain() {
            link.stop_and_join();
        }
        // The accept thread blocks in accept(); one connection to ourselves wakes it to see the
        // flag. If that fails the listener is already broken and the thread has exited.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Queues messages to peers from any thread. Cheap to clone; every clone sees the transport's
/// current peers. Once the transport stops, every send fails as to an unknown peer.
#[derive(Clone)]
pub struct PeerSender {
    shared: Arc<Shared>,
    /// Written only when a peer is added or removed; the send path takes the read lock, which
    /// no writer holds in steady state.
    queues: Arc<RwLock<HashMap<NodeId, PeerQueue>>>,
}

#[derive(Clone)]
struct PeerQueue {
    slot: Arc<PeerSlot>,
    queue: Sender<Message>,
}

impl std::fmt::Debug for PeerSender {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PeerSender").field("node_id", &self.shared.identity.node_id).finish()
    }
}

impl PeerSender {
    /// Queues `message` for `message.to`. Never blocks. See [`PeerTransport::send`].
    ///
    /// # Errors
    /// Unknown peer, or its queue is full (by count or bytes); the message is dropped and
    /// counted either way.
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        let to = message.to;
        let queues = self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(peer) = queues.get(&to) else {
            bump(&self.shared.counters.send_dropped_unknown_peer);
            return Err(SendError::UnknownPeer(to));
        };
        let message = match peer.slot.writer.try_write_now(message, &peer.queue, &self.shared.counters) {
            Ok(()) => return Ok(()),
            Err(message) => message,
        };
        let bytes = message_queue_bytes(&message);
        let queued = peer.slot.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > self.shared.config.peer_queue_bytes_max {
            peer.slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            bump(&self.shared.counters.send_dropped_queue_full);
            return Err(SendError::QueueFull(to));
        }
        match peer.queue.try_send(message) {
            Ok(()) => {
                peer.slot.writer.ring();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                peer.slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                bump(&self.shared.counters.send_dropped_queue_full);
                Err(SendError::QueueFull(to))
            }
        }
    }

    fn queues_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, PeerQueue>> {
        self.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Link {
    fn stop_and_join(mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer_address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(%error, "peer accept failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let connections = shared.accepted_connections.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard { shared: Arc::clone(shared) };
        let handshakes = shared.handshakes.fetch_add(1, Ordering::Relaxed);
        if connections >= shared.config.connections_max || handshakes >= shared.config.handshakes_max {
            shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            bump(&shared.counters.connections_refused_limit);
            if let Some(suppressed) = shared.counters.log_limit.allow() {
                tracing::warn!(%peer_address, connections, handshakes, suppressed, "peer connection refused: limit reached");
            }
            drop(stream);
            drop(guard);
            continue;
        }
        let handshake_shared = Arc::clone(shared);
        let spawned = thread::Builder::new().name("net-handshake".into()).spawn(move || {
            accept_connection(&handshake_shared, stream, guard);
            handshake_shared.handshakes.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(error) = spawned {
            shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%error, "cannot start a handshake thread");
        }
    }
}

fn accept_connection(shared: &Arc<Shared>, mut stream: TcpStream, guard: ConnectionGuard) {
    let config = &shared.config;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(config.handshake()));
    let mut reader = FrameReader::new(config.read_bytes_max, config.frame_bytes_max);
    let our_id = shared.identity.node_id;
    let admit = |node: NodeId| -> Result<(), (RefuseReason, &'static str)> {
        let registry = shared.registry.lock().expect("registry lock poisoned");
        let slot = registry.get(&node).ok_or((RefuseReason::UnknownNode, "not in this node's peer list"))?;
        // The lower id dials; a connection from a higher id would be a second link for the pair.
        if node > our_id {
            return Err((RefuseReason::DuplicateNode, "the node with the lower id dials, not this one"));
        }
        if slot.connected.load(Ordering::Relaxed) {
            return Err((RefuseReason::DuplicateNode, "already has a live connection here"));
        }
        Ok(())
    };
    let node = match handshake::accept(&mut stream, &mut reader, &shared.identity, config, &shared.counters, admit) {
        Ok(node) => node,
        Err(HandshakeError::Conn(error)) => {
            tracing::debug!(%error, "peer handshake failed");
            return;
        }
        // Refusals are logged and counted where they happen.
        Err(_) => return,
    };
    let slot = shared.registry.lock().expect("registry lock poisoned").get(&node).cloned();
    let Some(slot) = slot else {
        bump(&shared.counters.handshake_refused_unknown_node);
        tracing::warn!(node, "peer removed during its handshake");
        return;
    };
    if slot.connected.load(Ordering::Relaxed) {
        bump(&shared.counters.handshake_refused_duplicate_node);
        tracing::warn!(node, "peer handshake refused: a connection to it is already live");
        return;
    }
    match slot.adopt.try_send(Adopted { stream, reader, guard }) {
        Ok(()) => {}
        Err(_) => {
            bump(&shared.counters.handshake_refused_duplicate_node);
            tracing::warn!(node, "peer handshake refused: another connection from it is pending");
        }
    }
}

/// The state of one peer's link thread.
struct LinkState {
    shared: Arc<Shared>,
    slot: Arc<PeerSlot>,
    queue: Receiver<Message>,
    /// Rung by a sender that queued a message, or left a write half-done.
    doorbell: Receiver<()>,
    stop: Receiver<()>,
    adopt: Receiver<Adopted>,
}

enum LinkEnd {
    /// Stop the thread: the peer was removed or the transport shuts down.
    Stop,
    /// The connection failed; get another.
    Reconnect,
}

impl LinkState {
    fn run(mut self) {
        let our_id = self.shared.identity.node_id;
        let mut backoff = Backoff::new(
            self.shared.config.reconnect_ms_min,
            self.shared.config.reconnect_ms_max,
            self.shared.config.seed ^ our_id.rotate_left(32) ^ self.slot.id,
        );
        loop {
            let connection = if our_id < self.slot.id { self.dial(&mut backoff) } else { self.wait_for_adoption() };
            let Some((stream, reader, guard)) = connection else {
                return;
            };
            self.slot.connected.store(true, Ordering::Relaxed);
            bump(&self.shared.counters.connections_established);
            tracing::info!(peer = self.slot.id, "peer connected");
            let connected_at = Instant::now();
            let end = self.serve(stream, reader);
            drop(guard);
            self.slot.connected.store(false, Ordering::Relaxed);
            if let LinkEnd::Stop = end {
                return;
            }
            // A connection that lived a while was healthy: redial at once. One that died young
            // (a peer that authenticates and then drops us) counts as a failure, so that a
            // flapping peer is redialed with backoff, not in a tight loop.
            if connected_at.elapsed() >= Duration::from_millis(self.shared.config.reconnect_ms_max) {
                backoff.reset();
            } else if our_id < self.slot.id {
                match self.stop.recv_timeout(backoff.next_delay()) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
            || matches!(self.stop.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
    }

    /// Dials until a connection is authenticated; `None` when the link must stop.
    fn dial(&mut self, backoff: &mut Backoff) -> Option<(TcpStream, FrameReader, Option<ConnectionGuard>)> {
        loop {
            if self.stopped() {
                return None;
            }
            let address = *self.slot.address.lock().expect("address lock poisoned");
            bump(&self.shared.counters.connects_attempted);
            match self.try_dial(address) {
                Ok((stream, reader)) => return Some((stream, reader, None)),
                Err(error) => {
                    bump(&self.shared.counters.connects_failed);
                    let delay = backoff.next_delay();
                    tracing::debug!(peer = self.slot.id, %address, %error, ?delay, "dial failed");
                    match self.stop.recv_timeout(delay) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
            }
        }
    }

    fn try_dial(&self, address: SocketAddr) -> Result<(TcpStream, FrameReader), HandshakeError> {
        let config = &self.shared.config;
        let mut stream = TcpStream::connect_timeout(&address, config.handshake()).map_err(ConnError::Io)?;
        stream.set_nodelay(true).map_err(ConnError::Io)?;
        stream.set_write_timeout(Some(config.handshake())).map_err(ConnError::Io)?;
        let mut reader = FrameReader::new(config.read_bytes_max, config.frame_bytes_max);
        handshake::dial(&mut stream, &mut reader, &self.shared.identity, self.slot.id, config, &self.shared.counters)?;
        Ok((stream, reader))
    }

    /// Waits for the accept path to hand over an authenticated connection from the peer.
    fn wait_for_adoption(&mut self) -> Option<(TcpStream, FrameReader, Option<ConnectionGuard>)> {
        select! {
            recv(self.adopt) -> adopted => {
                let adopted = adopted.ok()?;
                Some((adopted.stream, adopted.reader, Some(adopted.guard)))
            }
            recv(self.stop) -> _ => None,
        }
    }

    /// Runs one connection: a reader thread receives; senders write while the link is idle,
    /// and this thread writes what they queue.
    fn serve(&mut self, stream: TcpStream, reader: FrameReader) -> LinkEnd {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let counters = &shared.counters;
        let reader_stream = match stream.try_clone() {
            Ok(clone) => clone,
            Err(error) => {
                tracing::warn!(%error, "cannot clone a peer socket");
                return LinkEnd::Reconnect;
            }
        };
        // The reader holds `_alive`; when it exits, the sender drops and `dead` wakes the writer.
        let (alive, dead) = bounded::<()>(1);
        // Set before the reader is joined, so that a reader waiting on a full inbound queue
        // gives up even when the transport as a whole is not shutting down (peer removal).
        let closing = Arc::new(AtomicBool::new(false));
        let reader_closing = Arc::clone(&closing);
        let reader_shared = Arc::clone(&self.shared);
        let peer = self.slot.id;
        let reader_thread = thread::Builder::new()
            .name(format!("net-read-{}-{}", self.shared.identity.node_id, peer))
            .spawn(move || {
                let _alive = alive;
                read_loop(&reader_shared, peer, &reader_stream, reader, &reader_closing);
            });
        let reader_thread = match reader_thread {
            Ok(thread) => thread,
            Err(error) => {
                tracing::warn!(%error, "cannot start a peer reader thread");
                return LinkEnd::Reconnect;
            }
        };
        let _ = stream.set_write_timeout(Some(config.write_timeout()));
        let stream = Arc::new(stream);
        let writer = &self.slot.writer;
        writer.attach(Arc::clone(&stream));
        // Messages queued while there was no connection go first.
        writer.ring();
        let end = loop {
            select! {
                recv(self.doorbell) -> _ => {
                    if let Err(error) = writer.drain(&self.queue, &self.slot.queued_bytes, counters) {
                        tracing::info!(peer, %error, "peer connection lost while writing");
                        break LinkEnd::Reconnect;
                    }
                },
                recv(dead) -> _ => break LinkEnd::Reconnect,
                recv(self.stop) -> _ => break LinkEnd::Stop,
                default(config.keepalive()) => {
                    if let Err(error) = writer.keepalive(counters) {
                        tracing::info!(peer, %error, "peer connection lost while sending a keepalive");
                        break LinkEnd::Reconnect;
                    }
                }
            }
        };
        writer.detach(counters);
        closing.store(true, Ordering::Relaxed);
        let _ = stream.shutdown(Shutdown::Both);
        let _ = reader_thread.join();
        if self.stopped() { LinkEnd::Stop } else { end }
    }
}

/// Receives from one peer until the connection ends, handing message batches to the consumer.
fn read_loop(shared: &Shared, peer: NodeId, stream: &TcpStream, mut reader: FrameReader, closing: &AtomicBool) {
    let config = &shared.config;
    let counters = &shared.counters;
    let our_id = shared.identity.node_id;
    let end: ConnError = 'connection: loop {
        // Sized for a typical read of small messages, so that pushing rarely reallocates: a
        // Message is 168 bytes and every reallocation copies all of them.
        let mut messages = Vec::with_capacity(INBOUND_BATCH_CAPACITY);
        // Counted once per read, not once per frame.
        let (mut frames, mut bytes, mut misaddressed) = (0u64, 0u64, 0u64);
        let mut accept = |message: Message, messages: &mut Vec<Message>| {
            if message.from == peer && message.to == our_id {
                messages.push(message);
            } else {
                misaddressed += 1;
                if let Some(suppressed) = counters.log_limit.allow() {
                    tracing::warn!(
                        peer,
                        from = message.from,
                        to = message.to,
                        suppressed,
                        "misaddressed message dropped"
                    );
                }
            }
        };
        let garbage = loop {
            let (header, payload) = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break None,
                Err(error) => break Some(ConnError::Frame(error)),
            };
            frames += 1;
            bytes += header.frame_bytes() as u64;
            match header.kind {
                FrameKind::RaftBatch if header.group == 0 => {
                    // decode_message_batch checked nothing yet: the count is bounded by the
                    // payload before anything is reserved for it.
                    let records = (header.aux as usize).min(payload.len() / RECORD_HEADER_BYTES);
                    messages.reserve(records);
                    if let Err(error) =
                        decode_message_batch(&payload, header.aux, |message| accept(message, &mut messages))
                    {
                        tracing::warn!(peer, %error, "invalid raft batch frame; closing the connection");
                        break Some(ConnError::Frame(FrameError::UnexpectedKind(FrameKind::RaftBatch)));
                    }
                }
                FrameKind::Raft => match decode_message(header.group, header.aux, &payload) {
                    Ok(message) => accept(message, &mut messages),
                    Err(error) => {
                        tracing::warn!(peer, %error, "invalid raft message; closing the connection");
                        break Some(ConnError::Frame(FrameError::UnexpectedKind(FrameKind::Raft)));
                    }
                },
                FrameKind::Ping => {}
                kind => break Some(ConnError::Frame(FrameError::UnexpectedKind(kind))),
            }
        };
        add(&counters.frames_received, frames);
        add(&counters.bytes_received, bytes);
        if misaddressed > 0 {
            add(&counters.messages_misaddressed, misaddressed);
        }
        if let Some(error) = garbage {
            break 'connection error;
        }
        if !messages.is_empty() {
            add(&counters.messages_received, messages.len() as u64);
            let mut batch = Inbound { from: peer, messages };
            let mut waited = false;
            loop {
                match shared.inbound.send_timeout(batch, INBOUND_WAIT) {
                    Ok(()) => break,
                    Err(crossbeam_channel::SendTimeoutError::Timeout(returned)) => {
                        if !waited {
                            bump(&counters.inbound_full_waits);
                            waited = true;
                        }
                        if shared.shutdown.load(Ordering::Relaxed) || closing.load(Ordering::Relaxed) {
                            return;
                        }
                        batch = returned;
                    }
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
                }
            }
            shared.on_inbound.call();
            // Time spent waiting on a full queue, or in the hook (the runtime may run its
            // rounds there), is neither the peer's silence nor its slowness with a frame begun.
            reader.restart_clocks();
        }
        if let Err(error) =
            reader.fill_with_deadlines(stream, config.peer_idle_timeout(), config.frame_receive_max(), None)
        {
            break error;
        }
    };
    let counter = match &end {
        ConnError::Frame(_) => &counters.disconnects_garbage,
        ConnError::Idle(_) => &counters.disconnects_idle,
        ConnError::SlowFrame(_) => &counters.disconnects_slow_frame,
        ConnError::Io(_) | ConnError::Closed | ConnError::Deadline => &counters.disconnects_io,
    };
    bump(counter);
    if !shared.shutdown.load(Ordering::Relaxed) {
        tracing::info!(peer, error = %end, "peer connection closed");
    }
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use smr_raft::{Entry, EntryKind, MessageBody};

    use super::*;
    use crate::batch::SendBatch;
    use crate::frame::{FRAME_HEADER_BYTES, encode_frame};
    use crate::wire::{encode_message, encode_message_batched};

    const SECRET: &[u8] = b"the secret of this test cluster";

    fn config() -> NetConfig {
        NetConfig {
            // Far above the peer timeout: the peer tests below see the peer one at work.
            idle_timeout_ms: 5_000,
            peer_idle_timeout_ms: 400,
            frame_receive_ms_max: 200,
            keepalive_ms: 100,
            ..NetConfig::default()
        }
    }

    /// Node 2 listening, and an authenticated raw connection to it as node 1.
    fn authenticated() -> (PeerTransport, Receiver<Inbound>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let unused = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let identity = |node_id| Identity { cluster_id: 5, node_id, secret: SECRET.to_vec(), settings: 0 };
        let (node, inbound) = PeerTransport::start(config(), identity(2), listener, &[(1, unused)]).unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        let mut reader = FrameReader::new(1 << 16, 1 << 20);
        handshake::dial(&mut stream, &mut reader, &identity(1), 2, &config(), &Counters::default()).unwrap();
        (node, inbound, stream)
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if condition() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}");
    }

    fn message(from: u64, to: u64) -> Message {
        Message {
            group: 1,
            from,
            to,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                commit_index: 0,
                entries: vec![Entry { index: 1, term: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }],
            },
        }
    }

    fn frame_of(message: &Message) -> Vec<u8> {
        let mut batch = SendBatch::new();
        encode_message(&mut batch, message, 1 << 20).unwrap();
        batch.to_vec()
    }

    #[test]
    fn authenticated_peer_sending_garbage_is_disconnected() {
        let (node, _inbound, mut stream) = authenticated();
        wait_for("adoption", || node.connected_peers() == vec![1]);
        stream.write_all(&[0xEE; 64]).unwrap();
        wait_for("garbage disconnect", || node.stats().disconnects_garbage == 1);
        wait_for("the link to notice", || node.connected_peers().is_empty());
    }

    #[test]
    fn raft_frame_with_an_invalid_archive_is_garbage() {
        let (node, inbound, mut stream) = authenticated();
        let mut frame = Vec::new();
        // A valid frame (CRC and all) whose archive is nonsense.
        encode_frame(&mut frame, FrameKind::Raft, 16, 1, &[0xFF; 16], 1 << 20).unwrap();
        stream.write_all(&frame).unwrap();
        wait_for("garbage disconnect", || node.stats().disconnects_garbage == 1);
        assert!(inbound.try_recv().is_err());
    }

    #[test]
    fn spoofed_sender_or_wrong_recipient_is_dropped_and_counted() {
        let (node, inbound, mut stream) = authenticated();
        stream.write_all(&frame_of(&message(3, 2))).unwrap();
        stream.write_all(&frame_of(&message(1, 4))).unwrap();
        stream.write_all(&frame_of(&message(1, 2))).unwrap();
        let batch = inbound.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(batch.from, 1);
        assert_eq!(batch.messages, vec![message(1, 2)]);
        assert_eq!(node.stats().messages_misaddressed, 2);
        assert_eq!(node.stats().disconnects_garbage, 0);
    }

    #[test]
    fn batched_messages_arrive_in_order_and_spoofed_ones_are_dropped_and_counted() {
        let (node, inbound, mut stream) = authenticated();
        let numbered = |from, to, index| {
            let mut message = message(from, to);
            message.term = index;
            message
        };
        let mut batch = SendBatch::new();
        for message in [numbered(1, 2, 1), numbered(3, 2, 2), numbered(1, 2, 3), numbered(1, 4, 4), numbered(1, 2, 5)] {
            encode_message_batched(&mut batch, &message, 1 << 20).unwrap();
        }
        assert_eq!((batch.frames(), batch.messages()), (1, 5));
        stream.write_all(&batch.to_vec()).unwrap();
        let batch = inbound.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(batch.messages, vec![numbered(1, 2, 1), numbered(1, 2, 3), numbered(1, 2, 5)]);
        assert_eq!(node.stats().messages_misaddressed, 2);
        assert_eq!(node.stats().disconnects_garbage, 0);
    }

    #[test]
    fn raft_batch_frame_with_a_bad_record_is_garbage() {
        let mut good = SendBatch::new();
        encode_message_batched(&mut good, &message(1, 2), 1 << 20).unwrap();
        let good = good.to_vec();
        let payload = &good[FRAME_HEADER_BYTES..];
        // Each is a frame with a valid CRC around records that are not: a count that lies, a
        // record longer than the frame, an archive that fails validation, a nonzero group.
        let mut bad_archive = payload.to_vec();
        let archive_bytes = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        bad_archive[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + archive_bytes].fill(0xFF);
        let mut long_record = payload.to_vec();
        long_record[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let cases: [(u32, u64, Vec<u8>); 5] = [
            (2, 0, payload.to_vec()),
            (0, 0, payload.to_vec()),
            (1, 0, long_record),
            (1, 0, bad_archive),
            (1, 1, payload.to_vec()),
        ];
        for (case, (records, group, payload)) in cases.into_iter().enumerate() {
            let (node, inbound, mut stream) = authenticated();
            let mut frame = Vec::new();
            encode_frame(&mut frame, FrameKind::RaftBatch, records, group, &payload, 1 << 20).unwrap();
            stream.write_all(&frame).unwrap();
            wait_for(&format!("garbage disconnect in case {case}"), || node.stats().disconnects_garbage == 1);
            assert!(inbound.try_recv().is_err());
        }
    }

    #[test]
    fn authenticated_slowloris_is_disconnected() {
        let (node, _inbound, mut stream) = authenticated();
        let frame = frame_of(&message(1, 2));
        stream.write_all(&frame[..frame.len() / 2]).unwrap();
        wait_for("slow frame disconnect", || node.stats().disconnects_slow_frame == 1);
    }

    #[test]
    fn silent_peer_is_disconnected_after_the_idle_timeout() {
        let started = std::time::Instant::now();
        let (node, _inbound, _stream) = authenticated();
        wait_for("idle disconnect", || node.stats().disconnects_idle == 1);
        // The peer timeout applies, not the (much longer) client one.
        assert!(started.elapsed() < Duration::from_millis(config().idle_timeout_ms));
    }

    #[test]
    fn idle_but_alive_peers_keep_their_connection_through_keepalives() {
        let listeners = [TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap()];
        let addresses = [listeners[0].local_addr().unwrap(), listeners[1].local_addr().unwrap()];
        let identity = |node_id| Identity { cluster_id: 5, node_id, secret: SECRET.to_vec(), settings: 0 };
        let [l1, l2] = listeners;
        let (n1, _i1) = PeerTransport::start(config(), identity(1), l1, &[(2, addresses[1])]).unwrap();
        let (n2, _i2) = PeerTransport::start(config(), identity(2), l2, &[(1, addresses[0])]).unwrap();
        wait_for("connection", || n1.connected_peers() == vec![2]);
        // Three idle timeouts with no message at all.
        thread::sleep(Duration::from_millis(1200));
        assert_eq!(n1.connected_peers(), vec![2]);
        assert_eq!(n2.stats().disconnects_idle + n1.stats().disconnects_idle, 0);
        assert_eq!(n1.stats().connections_established, 1);
    }
}
