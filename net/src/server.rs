//! The server side of client connections.
//!
//! One event-loop thread per listener (epoll, edge-triggered) accepts connections (at most
//! `connections_max`), reads what arrives on each, validates frames, decodes requests and hands
//! them to the runtime through one bounded channel.
//!
//! Responses do not go back through the loop. Whichever thread answers a request encodes the
//! response into its connection's outbox and writes it to the socket at once without blocking
//! ([`ResponseBatch`] gathers the answers of a round so that each connection gets one write).
//! Only when the socket buffer is full does the rest wait in the outbox, and the loop finishes
//! it when the socket is writable again. So an answer costs no thread hand-off.
//!
//! Backpressure reaches the client as `Busy`: when the runtime's channel is full, or the
//! connection already has `client_inflight_max` requests or `client_pending_bytes_max` bytes
//! unanswered, the loop answers at once and hands nothing on. A client that does not read its
//! answers stops being read once its outbox holds [`OUTBOX_PAUSE_BYTES`], and is closed when
//! its socket takes nothing for `write_timeout_ms`. A connection that sends garbage is closed;
//! one that sends nothing for `idle_timeout_ms` while nothing is pending, or trickles a frame
//! for longer than `frame_receive_ms_max` (slowloris), is closed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use smr_raft::GroupId;

use crate::arrival::ArrivalHook;
use crate::batch::SendBatch;
use crate::client_proto::{Request, Response, ResponseBody, decode_request, encode_response};
use crate::config::NetConfig;
use crate::conn::{ConnError, FrameReader};
use crate::frame::FrameKind;
use crate::nosignal::NoWait;
use crate::peer::StartError;
use crate::poll::{CLOSED, EDGE, Epoll, Event, EventFd, READABLE, WRITABLE};
use crate::stats::{Counters, NetStats, bump};

/// A request handed to the runtime. Answer it with [`ClientRequest::respond`]; a request
/// dropped unanswered is answered `ShuttingDown` (the runtime drops requests when it stops).
#[derive(Debug)]
pub struct ClientRequest {
    /// Identifies the connection, for logs and per-connection accounting.
    pub connection: u64,
    pub request: Request,
    /// When the request was decoded (or made, in process): the runtime measures queue wait
    /// from here.
    pub received: std::time::Instant,
    responder: Option<Responder>,
}

#[derive(Debug)]
enum Responder {
    /// A request read from a client connection: the answer goes back on it.
    Connection { connection: Arc<Connection>, group: GroupId, request_id: u64, bytes: usize },
    /// A request made in the same process (an embedding application): the answer is handed to
    /// its callback.
    Local(LocalResponder),
}

/// The callback of an in-process request.
struct LocalResponder(Box<dyn FnOnce(ResponseBody) + Send>);

impl std::fmt::Debug for LocalResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalResponder")
    }
}

/// The `connection` of every in-process request.
pub const LOCAL_CONNECTION: u64 = 0;

impl ClientRequest {
    /// A request made in the process itself rather than read from a connection (the C ABI and
    /// in-process benchmarks use it). `respond` is called exactly once, on whichever thread
    /// answers (with `ShuttingDown` if the request is dropped unanswered); it must not block.
    pub fn local(request: Request, respond: impl FnOnce(ResponseBody) + Send + 'static) -> ClientRequest {
        ClientRequest {
            connection: LOCAL_CONNECTION,
            request,
            received: std::time::Instant::now(),
            responder: Some(Responder::Local(LocalResponder(Box::new(respond)))),
        }
    }

    /// Sends the response back on the connection the request came from, now. Never blocks:
    /// what the socket does not take at once waits in the connection's outbox.
    pub fn respond(mut self, body: ResponseBody) {
        if let Some(responder) = self.responder.take() {
            responder.respond(body, None);
        }
    }

    /// Like [`ClientRequest::respond`], but the answer is written when `batch` is flushed,
    /// together with the other answers to the same connection.
    pub fn respond_batched(mut self, body: ResponseBody, batch: &mut ResponseBatch) {
        if let Some(responder) = self.responder.take() {
            responder.respond(body, Some(batch));
        }
    }
}

impl Drop for ClientRequest {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.respond(ResponseBody::ShuttingDown, None);
        }
    }
}

impl Responder {
    /// Answers the request. A connection's answer is written at once, or, given a `batch`,
    /// when the batch is flushed.
    fn respond(self, body: ResponseBody, batch: Option<&mut ResponseBatch>) {
        match self {
            Responder::Connection { connection, group, request_id, bytes } => {
                connection.release(bytes);
                let mut outbox = connection.outbox();
                if outbox.closed {
                    return;
                }
                connection.encode(&mut outbox, group, &Response { request_id, body });
                match batch {
                    Some(batch) => {
                        drop(outbox);
                        batch.note(connection);
                    }
                    None => connection.write_out(&mut outbox),
                }
            }
            Responder::Local(LocalResponder(callback)) => callback(body),
        }
    }
}

/// Answers gathered over one round of a stage, written with one `writev` per connection when
/// the batch is flushed (or dropped). In-process answers are delivered at once.
#[derive(Debug, Default)]
pub struct ResponseBatch {
    connections: Vec<Arc<Connection>>,
    noted: HashSet<u64>,
}

impl ResponseBatch {
    pub fn new() -> ResponseBatch {
        ResponseBatch::default()
    }

    fn note(&mut self, connection: Arc<Connection>) {
        if self.noted.insert(connection.id) {
            self.connections.push(connection);
        }
    }

    /// Writes every answer gathered so far.
    pub fn flush(&mut self) {
        for connection in self.connections.drain(..) {
            let mut outbox = connection.outbox();
            connection.write_out(&mut outbox);
        }
        self.noted.clear();
    }
}

impl Drop for ResponseBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A connection whose outbox holds this many unsent bytes is not read until the client has
/// taken most of them: a client that sends without reading cannot make the node buffer
/// without bound.
pub const OUTBOX_PAUSE_BYTES: usize = 4 << 20;
/// A paused connection is read again once its outbox is below this.
const OUTBOX_RESUME_BYTES: usize = OUTBOX_PAUSE_BYTES / 4;
/// Bytes read from one connection before the loop turns to the others (it comes back to it).
const READ_BYTES_PER_TURN: usize = 1 << 20;
/// Readiness reports taken per wait.
const EVENTS_PER_WAIT: usize = 256;
/// How often paused connections are checked for an outbox drained by another thread.
const PAUSED_CHECK: Duration = Duration::from_millis(5);
/// Deadlines (idle, slowloris, stalled writes) are checked at least this often.
const SWEEP_MAX: Duration = Duration::from_millis(100);

const LISTENER_TOKEN: u64 = u64::MAX;
const WAKER_TOKEN: u64 = u64::MAX - 1;

/// What one connection has handed on and not yet answered.
#[derive(Debug, Default)]
struct Load {
    /// Requests handed on and not yet answered.
    inflight: AtomicUsize,
    /// Their payload bytes.
    pending_bytes: AtomicUsize,
}

/// Encoded answers not yet taken by the socket.
#[derive(Debug)]
struct Outbox {
    batch: SendBatch,
    /// Set when the socket was full: when it last took bytes (or filled). The loop finishes the
    /// write when the socket is writable again; other writers only append.
    stalled_since: Option<Instant>,
    /// The connection is closed: answers are dropped.
    closed: bool,
}

/// One client connection, shared by the loop (which reads it) and every thread that answers
/// one of its requests. The socket stays open (if shut down) until the last of them is done,
/// so a late answer never reaches a reused descriptor.
#[derive(Debug)]
struct Connection {
    id: u64,
    stream: TcpStream,
    load: Load,
    outbox: Mutex<Outbox>,
    /// The outbox's unsent bytes as of its last change, for the loop's pause and resume checks:
    /// reading it takes no lock, so the loop never waits on a thread that is writing answers.
    unsent_bytes: AtomicUsize,
    shared: Arc<Shared>,
}

impl Connection {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // Nothing panics while holding it; an answer after a panic elsewhere still goes out.
        self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, bytes: usize) {
        self.load.inflight.fetch_sub(1, Ordering::Relaxed);
        self.load.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn encode(&self, outbox: &mut Outbox, group: GroupId, response: &Response) {
        let frame_bytes_max = self.shared.config.frame_bytes_max;
        if encode_response(&mut outbox.batch, group, response, frame_bytes_max).is_err() {
            // A result larger than a frame: the client gets TooLarge instead.
            let too_large = Response { request_id: response.request_id, body: ResponseBody::TooLarge };
            let pushed = encode_response(&mut outbox.batch, group, &too_large, frame_bytes_max);
            debug_assert!(pushed.is_ok());
        }
        bump(&self.shared.counters.client_responses);
        self.publish_unsent(outbox);
    }

    fn publish_unsent(&self, outbox: &Outbox) {
        self.unsent_bytes.store(outbox.batch.unsent_bytes(), Ordering::Relaxed);
    }

    /// Writes what the socket takes now. When it is full, the rest waits for the loop, which is
    /// told by the socket (edge-triggered) when it has room again.
    fn write_out(&self, outbox: &mut Outbox) {
        if outbox.closed || outbox.stalled_since.is_some() || outbox.batch.is_empty() {
            return;
        }
        self.write_available(outbox);
    }

    fn write_available(&self, outbox: &mut Outbox) {
        let before = outbox.batch.unsent_bytes();
        match outbox.batch.write_available(&mut NoWait(&self.stream)) {
            Ok(true) => outbox.stalled_since = None,
            Ok(false) => {
                if outbox.stalled_since.is_none() || outbox.batch.unsent_bytes() < before {
                    outbox.stalled_since = Some(Instant::now());
                }
            }
            Err(_) => {
                // The loop sees the closed socket and ends the connection.
                outbox.closed = true;
                outbox.batch.clear();
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
        self.publish_unsent(outbox);
    }

    fn close(&self) {
        let mut outbox = self.outbox();
        outbox.closed = true;
        outbox.batch.clear();
        self.publish_unsent(&outbox);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[derive(Debug)]
struct Shared {
    config: NetConfig,
    /// Shared with the [`crate::StatsReader`]s handed out, which hold nothing else.
    counters: Arc<Counters>,
    shutdown: AtomicBool,
    requests: Sender<ClientRequest>,
    /// Called by the event loop after a turn that put requests into `requests`.
    on_requests: ArrivalHook,
    /// Set when a request goes into `requests`; the loop takes it at the end of its turn.
    delivered: AtomicBool,
    connections: AtomicUsize,
}

/// The client listener of one node. Owned by the runtime's net stage.
pub struct ClientServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    waker: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ClientServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ClientServer").field("local_addr", &self.local_addr).finish()
    }
}

impl ClientServer {
    /// Serves clients on `listener`. Requests arrive on the returned channel, which holds at
    /// most `requests_max` of them; past that, clients are answered `Busy`.
    ///
    /// # Errors
    /// An invalid config or a listener that cannot be used.
    pub fn start(
        config: NetConfig,
        listener: TcpListener,
        requests_max: usize,
    ) -> Result<(ClientServer, Receiver<ClientRequest>), StartError> {
        config.validate()?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (requests_tx, requests_rx) = bounded(requests_max.max(1));
        let shared = Arc::new(Shared {
            config,
            counters: Arc::default(),
            shutdown: AtomicBool::new(false),
            requests: requests_tx,
            on_requests: ArrivalHook::default(),
            delivered: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let waker = Arc::new(EventFd::new()?);
        let epoll = Epoll::new(EVENTS_PER_WAIT)?;
        epoll.add(listener.as_raw_fd(), LISTENER_TOKEN, READABLE)?;
        epoll.add(waker.as_raw_fd(), WAKER_TOKEN, READABLE)?;
        let event_loop = EventLoop {
            shared: Arc::clone(&shared),
            listener,
            epoll,
            waker: Arc::clone(&waker),
            connections: HashMap::new(),
            next_id: AtomicU64::new(1),
            again: VecDeque::new(),
            paused: 0,
        };
        let thread = thread::Builder::new().name("net-clients".into()).spawn(move || event_loop.run())?;
        Ok((ClientServer { shared, local_addr, waker, thread: Some(thread) }, requests_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> NetStats {
        self.shared.counters.snapshot()
    }

    /// Reads [`ClientServer::stats`] from elsewhere (a metrics report).
    pub fn stats_reader(&self) -> crate::stats::StatsReader {
        let counters = Arc::clone(&self.shared.counters);
        crate::stats::StatsReader::new(move || counters.snapshot())
    }

    /// A sender into the same bounded channel that connections hand their requests to, for
    /// requests made in the process itself ([`ClientRequest::local`]).
    pub fn local_sender(&self) -> Sender<ClientRequest> {
        self.shared.requests.clone()
    }

    /// Has the event loop call `hook` after each turn in which it handed requests on, once per
    /// turn, on the loop's thread (see `arrival.rs`). Requests sent through
    /// [`ClientServer::local_sender`] do not call it. Set once; a second call is ignored and
    /// returns false. The hook must not wait for anything the client server does.
    pub fn on_requests(&self, hook: impl Fn() + Send + Sync + 'static) -> bool {
        self.shared.on_requests.set(hook)
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every connection. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The loop's own state of one connection.
struct Reading {
    connection: Arc<Connection>,
    reader: FrameReader,
    /// Not read while its outbox is over [`OUTBOX_PAUSE_BYTES`].
    paused: bool,
}

struct EventLoop {
    shared: Arc<Shared>,
    listener: TcpListener,
    epoll: Epoll,
    waker: Arc<EventFd>,
    connections: HashMap<u64, Reading>,
    next_id: AtomicU64,
    /// Connections to read again without waiting for the socket to report it: they stopped at
    /// their turn's byte budget, or were resumed after a pause.
    again: VecDeque<u64>,
    /// Connections paused now.
    paused: usize,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
        let mut next_sweep = Instant::now() + self.sweep_interval();
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut timeout = next_sweep.saturating_duration_since(now);
            if self.paused > 0 {
                timeout = timeout.min(PAUSED_CHECK);
            }
            if !self.again.is_empty() {
                timeout = Duration::ZERO;
            }
            events.clear();
            if let Err(error) = self.epoll.wait(Some(timeout), &mut events) {
                tracing::error!(%error, "client event loop: epoll_wait failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            for &Event { token, ready } in &events {
                match token {
                    LISTENER_TOKEN => self.accept_all(),
                    WAKER_TOKEN => self.waker.drain(),
                    id => self.on_ready(id, ready),
                }
            }
            for _ in 0..self.again.len() {
                let Some(id) = self.again.pop_front() else { break };
                self.read(id);
            }
            if self.paused > 0 {
                self.resume_drained();
            }
            if self.shared.delivered.swap(false, Ordering::Relaxed) {
                self.shared.on_requests.call();
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + self.sweep_interval();
            }
        }
        for (_, reading) in self.connections.drain() {
            reading.connection.close();
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sweep_interval(&self) -> Duration {
        let config = &self.shared.config;
        let shortest = config.idle_timeout().min(config.frame_receive_max()).min(config.write_timeout());
        (shortest / 4).clamp(Duration::from_millis(1), SWEEP_MAX)
    }

    fn accept_all(&mut self) {
        loop {
            let (stream, address) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors, say: the listener stays readable, so pause rather
                    // than spin.
                    tracing::warn!(%error, "client accept failed");
                    thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            let shared = &self.shared;
            let open = shared.connections.fetch_add(1, Ordering::Relaxed);
            if open >= shared.config.connections_max {
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                bump(&shared.counters.connections_refused_limit);
                if let Some(suppressed) = shared.counters.log_limit.allow() {
                    tracing::warn!(%address, open, suppressed, "client connection refused: connections_max reached");
                }
                continue;
            }
            bump(&shared.counters.client_connections_accepted);
            if let Err(error) = self.add_connection(stream) {
                self.shared.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot start a client connection");
            }
        }
    }

    fn add_connection(&mut self, stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fd = stream.as_raw_fd();
        let connection = Arc::new(Connection {
            id,
            stream,
            load: Load::default(),
            outbox: Mutex::new(Outbox { batch: SendBatch::new(), stalled_since: None, closed: false }),
            unsent_bytes: AtomicUsize::new(0),
            shared: Arc::clone(&self.shared),
        });
        let config = &self.shared.config;
        let reader = FrameReader::new(config.client_read_bytes_max, config.frame_bytes_max);
        self.epoll.add(fd, id, READABLE | WRITABLE | CLOSED | EDGE)?;
        self.connections.insert(id, Reading { connection, reader, paused: false });
        Ok(())
    }

    fn on_ready(&mut self, id: u64, ready: u32) {
        let Some(reading) = self.connections.get_mut(&id) else { return };
        if ready & WRITABLE != 0 {
            let connection = &reading.connection;
            let mut outbox = connection.outbox();
            if !outbox.closed && !outbox.batch.is_empty() {
                connection.write_available(&mut outbox);
            }
        }
        if ready & (READABLE | CLOSED) != 0 {
            self.read(id);
        }
    }

    /// Reads and hands on what has arrived, until the socket is empty or the turn is over.
    fn read(&mut self, id: u64) {
        let Some(reading) = self.connections.get_mut(&id) else { return };
        if reading.paused {
            return;
        }
        let mut budget = READ_BYTES_PER_TURN;
        let mut replied = false;
        let end = loop {
            if let Err(error) = dispatch_frames(&self.shared, reading, &mut replied) {
                break Some(error);
            }
            if reading.connection.unsent_bytes.load(Ordering::Relaxed) >= OUTBOX_PAUSE_BYTES {
                reading.paused = true;
                self.paused += 1;
                break None;
            }
            if budget == 0 {
                self.again.push_back(id);
                break None;
            }
            match reading.reader.fill_available(&reading.connection.stream) {
                Ok(Some(received)) => budget = budget.saturating_sub(received),
                // Empty: the socket reports the next arrival.
                Ok(None) => break None,
                Err(error) => break Some(error),
            }
        };
        // The loop's own answers (Busy, InvalidRequest) go out in one write per turn.
        let connection = Arc::clone(&reading.connection);
        if replied {
            connection.write_out(&mut connection.outbox());
        }
        if let Some(error) = end {
            self.close(id, &error);
        }
    }

    /// Reads again the paused connections whose outbox has drained.
    fn resume_drained(&mut self) {
        for (&id, reading) in &mut self.connections {
            if reading.paused && reading.connection.unsent_bytes.load(Ordering::Relaxed) < OUTBOX_RESUME_BYTES {
                reading.paused = false;
                reading.reader.restart_clocks();
                self.paused -= 1;
                self.again.push_back(id);
            }
        }
    }

    /// Closes connections past a deadline: idle, trickling a frame, or not reading.
    fn sweep(&mut self, now: Instant) {
        let config = &self.shared.config;
        let (idle, frame_max, write_timeout) =
            (config.idle_timeout(), config.frame_receive_max(), config.write_timeout());
        let mut overdue = Vec::new();
        for (&id, reading) in &mut self.connections {
            let stalled = reading.connection.outbox().stalled_since;
            if stalled.is_some_and(|since| now >= since + write_timeout) {
                overdue.push((id, ConnError::Deadline));
                continue;
            }
            if reading.paused {
                // Not read by choice: the client's fault, if any, is the stalled write above,
                // and a frame it could not finish sending is not slowloris.
                continue;
            }
            match reading.reader.overdue(now, idle, frame_max) {
                // A client waiting for answers is not idle.
                Some(ConnError::Idle(_)) if reading.connection.load.inflight.load(Ordering::Relaxed) > 0 => {
                    reading.reader.note_alive();
                }
                Some(error) => overdue.push((id, error)),
                None => {}
            }
        }
        for (id, error) in overdue {
            self.close(id, &error);
        }
    }

    fn close(&mut self, id: u64, end: &ConnError) {
        let Some(reading) = self.connections.remove(&id) else { return };
        if reading.paused {
            self.paused -= 1;
        }
        self.epoll.delete(reading.connection.stream.as_raw_fd());
        reading.connection.close();
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        let counters = &self.shared.counters;
        let counter = match end {
            ConnError::Frame(_) => &counters.disconnects_garbage,
            ConnError::Idle(_) => &counters.disconnects_idle,
            ConnError::SlowFrame(_) => &counters.disconnects_slow_frame,
            ConnError::Io(_) | ConnError::Closed | ConnError::Deadline => &counters.disconnects_io,
        };
        bump(counter);
        tracing::debug!(connection = id, error = %end, "client connection closed");
    }
}

/// Hands on every whole request buffered on the connection, answering at once (into its
/// outbox) those that cannot be handed on, and setting `replied` when it does (also when it
/// then fails on a later frame: those answers still go out before the connection closes).
fn dispatch_frames(shared: &Shared, reading: &mut Reading, replied: &mut bool) -> Result<(), ConnError> {
    let config = &shared.config;
    let counters = &shared.counters;
    let connection = &reading.connection;
    let replied = std::cell::Cell::from_mut(replied);
    let reply = |group: GroupId, response: Response| {
        replied.set(true);
        let mut outbox = connection.outbox();
        if !outbox.closed {
            connection.encode(&mut outbox, group, &response);
        }
    };
    while let Some((header, payload)) = reading.reader.next_frame()? {
        if header.kind != FrameKind::ClientRequest {
            return Err(ConnError::Frame(crate::frame::FrameError::UnexpectedKind(header.kind)));
        }
        bump(&counters.client_requests);
        let request = match decode_request(header.group, &payload) {
            Ok(request) => request,
            Err(error) => {
                // The frame was intact, so the stream is still in sync; the request id may be
                // garbage but is echoed so that a buggy client can match it.
                bump(&counters.client_invalid);
                let request_id = payload.get(..8).map_or(0, |id| u64::from_le_bytes(id.try_into().expect("8 bytes")));
                reply(header.group, Response { request_id, body: ResponseBody::InvalidRequest(error.to_string()) });
                continue;
            }
        };
        let bytes = payload.len();
        let request_id = request.request_id;
        let load = &connection.load;
        let busy = Response { request_id, body: ResponseBody::Busy };
        if load.inflight.load(Ordering::Relaxed) >= config.client_inflight_max
            || load.pending_bytes.load(Ordering::Relaxed) + bytes > config.client_pending_bytes_max
        {
            bump(&counters.client_busy);
            reply(header.group, busy);
            continue;
        }
        load.inflight.fetch_add(1, Ordering::Relaxed);
        load.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        let responder =
            Responder::Connection { connection: Arc::clone(connection), group: header.group, request_id, bytes };
        let client_request =
            ClientRequest { connection: connection.id, request, received: Instant::now(), responder: Some(responder) };
        match shared.requests.try_send(client_request) {
            Ok(()) => shared.delivered.store(true, Ordering::Relaxed),
            Err(TrySendError::Full(mut refused) | TrySendError::Disconnected(mut refused)) => {
                // Not handed on: released here and answered by the loop.
                drop(refused.responder.take());
                connection.release(bytes);
                bump(&counters.client_busy);
                reply(header.group, busy);
            }
        }
    }
    Ok(())
}
