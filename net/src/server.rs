//! The server side of client connections.
//!
//! Each accepted connection (at most `connections_max`) gets a reader thread, which validates
//! frames, decodes requests and hands them to the runtime through one bounded channel, and a
//! writer thread, which coalesces responses into `writev`s. Backpressure reaches the client as
//! `Busy`: when the runtime's channel is full, or the connection already has
//! `client_inflight_max` requests or `client_pending_bytes_max` bytes unanswered, the reader
//! answers at once and hands nothing on. A connection that sends garbage is closed; one that
//! sends nothing for `idle_timeout_ms` while nothing is pending, or trickles a frame for longer
//! than `frame_receive_ms_max` (slowloris), is closed.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, never, select};
use smr_raft::GroupId;

use crate::batch::SendBatch;
use crate::client_proto::{Request, Response, ResponseBody, decode_request, encode_response};
use crate::config::NetConfig;
use crate::conn::{ConnError, FrameReader};
use crate::frame::FrameKind;
use crate::peer::StartError;
use crate::stats::{Counters, NetStats, add, bump};

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

    /// Sends the response back on the connection the request came from. Never blocks: the
    /// connection's response queue has room for every request it let through.
    pub fn respond(mut self, body: ResponseBody) {
        if let Some(responder) = self.responder.take() {
            responder.respond(body);
        }
    }
}

impl Drop for ClientRequest {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.respond(ResponseBody::ShuttingDown);
        }
    }
}

impl Responder {
    fn respond(self, body: ResponseBody) {
        match self {
            Responder::Connection { connection, group, request_id, bytes } => {
                let response = Response { request_id, body };
                // Never full: a request counts against client_inflight_max from when it is
                // handed on until the writer takes its response off this queue, and the queue
                // holds that many. A closed connection just drops it.
                let _ = connection.responses.try_send((group, response, bytes));
            }
            Responder::Local(LocalResponder(callback)) => callback(body),
        }
    }
}

/// Immediate answers (`Busy`, `InvalidRequest`) the reader may queue; when the client does not
/// read them, the reader waits, and so stops reading that client's requests.
const READER_REPLIES_MAX: usize = 256;

/// What one connection has handed on and not yet answered; shared by its reader (which
/// checks the limits) and its writer (which releases a request when it takes its response).
#[derive(Debug, Default)]
struct Load {
    /// Requests handed on whose response the writer has not yet taken.
    inflight: AtomicUsize,
    /// Their payload bytes.
    pending_bytes: AtomicUsize,
}

#[derive(Debug)]
struct Connection {
    id: u64,
    load: Arc<Load>,
    /// Responses from the runtime, with the request's bytes. Capacity `client_inflight_max`.
    responses: Sender<(GroupId, Response, usize)>,
    /// Answers from the reader itself.
    replies: Sender<(GroupId, Response)>,
}

struct Shared {
    config: NetConfig,
    counters: Counters,
    shutdown: AtomicBool,
    requests: Sender<ClientRequest>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    /// Live sockets, so that shutdown can close them. Control plane only.
    streams: Mutex<HashMap<u64, TcpStream>>,
}

/// The client listener of one node. Owned by the runtime's net stage.
pub struct ClientServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
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
        let (requests_tx, requests_rx) = bounded(requests_max.max(1));
        let shared = Arc::new(Shared {
            config,
            counters: Counters::default(),
            shutdown: AtomicBool::new(false),
            requests: requests_tx,
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("net-client-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))?;
        Ok((ClientServer { shared, local_addr, accept_thread: Some(accept_thread) }, requests_rx))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> NetStats {
        self.shared.counters.snapshot()
    }

    /// A sender into the same bounded channel that connections hand their requests to, for
    /// requests made in the process itself ([`ClientRequest::local`]).
    pub fn local_sender(&self) -> Sender<ClientRequest> {
        self.shared.requests.clone()
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
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        for (_, stream) in self.shared.streams.lock().expect("streams lock poisoned").drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ClientServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let (stream, address) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "client accept failed");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
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
        if let Err(error) = start_connection(shared, stream) {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%error, "cannot start a client connection");
        }
    }
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream) -> io::Result<()> {
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(shared.config.write_timeout()))?;
    let (responses_tx, responses_rx) = bounded(shared.config.client_inflight_max);
    let (replies_tx, replies_rx) = bounded(READER_REPLIES_MAX);
    let load = Arc::new(Load::default());
    let writer_load = Arc::clone(&load);
    let connection = Arc::new(Connection { id, load, responses: responses_tx, replies: replies_tx });
    let writer_stream = stream.try_clone()?;
    shared.streams.lock().expect("streams lock poisoned").insert(id, stream.try_clone()?);
    let writer_shared = Arc::clone(shared);
    thread::Builder::new().name(format!("net-client-write-{id}")).spawn(move || {
        write_loop(&writer_shared, &writer_stream, &writer_load, &responses_rx, &replies_rx);
        let _ = writer_stream.shutdown(Shutdown::Both);
    })?;
    let reader_shared = Arc::clone(shared);
    thread::Builder::new().name(format!("net-client-read-{id}")).spawn(move || {
        read_loop(&reader_shared, &stream, connection);
        let _ = stream.shutdown(Shutdown::Both);
        reader_shared.streams.lock().expect("streams lock poisoned").remove(&id);
        reader_shared.connections.fetch_sub(1, Ordering::Relaxed);
    })?;
    Ok(())
}

fn write_loop(
    shared: &Shared,
    stream: &TcpStream,
    load: &Load,
    responses: &Receiver<(GroupId, Response, usize)>,
    replies: &Receiver<(GroupId, Response)>,
) {
    let frame_bytes_max = shared.config.frame_bytes_max;
    let mut batch = SendBatch::new();
    let mut writer = crate::nosignal::NoSignal(stream);
    let mut broken = false;
    let release = |bytes: usize| {
        load.inflight.fetch_sub(1, Ordering::Relaxed);
        load.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
    };
    let mut responses_open = true;
    let mut replies_open = true;
    let (no_responses, no_replies) = (never(), never());
    // Ends when every sender is gone: the reader has exited and every responder was answered.
    while responses_open || replies_open {
        let first = select! {
            recv(if responses_open { responses } else { &no_responses }) -> response => match response {
                Ok((group, response, bytes)) => {
                    release(bytes);
                    (group, response)
                }
                Err(_) => {
                    responses_open = false;
                    continue;
                }
            },
            recv(if replies_open { replies } else { &no_replies }) -> reply => match reply {
                Ok(reply) => reply,
                Err(_) => {
                    replies_open = false;
                    continue;
                }
            },
        };
        let mut next = Some(first);
        while let Some((group, response)) = next.take() {
            if broken {
                // Nothing reaches the client any more; keep draining so that no responder
                // or reader ever waits on this queue.
            } else if encode_response(&mut batch, group, &response, frame_bytes_max).is_err() {
                // A result larger than a frame: the client gets TooLarge instead.
                let too_large = Response { request_id: response.request_id, body: ResponseBody::TooLarge };
                let pushed = encode_response(&mut batch, group, &too_large, frame_bytes_max);
                debug_assert!(pushed.is_ok());
            }
            if batch.bytes() < frame_bytes_max {
                next = match responses.try_recv() {
                    Ok((group, response, bytes)) => {
                        release(bytes);
                        Some((group, response))
                    }
                    Err(_) => replies.try_recv().ok(),
                };
            }
        }
        if broken || batch.is_empty() {
            continue;
        }
        let frames = batch.frames() as u64;
        if batch.write_to(&mut writer).is_err() {
            // The reader sees the closed socket and ends the connection.
            let _ = stream.shutdown(Shutdown::Both);
            broken = true;
            continue;
        }
        add(&shared.counters.client_responses, frames);
    }
}

fn read_loop(shared: &Shared, stream: &TcpStream, connection: Arc<Connection>) {
    let config = &shared.config;
    let counters = &shared.counters;
    let mut reader = FrameReader::new(config.client_read_bytes_max, config.frame_bytes_max);
    let end = 'connection: loop {
        loop {
            let (header, payload) = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => break 'connection ConnError::Frame(error),
            };
            if header.kind != FrameKind::ClientRequest {
                break 'connection ConnError::Frame(crate::frame::FrameError::UnexpectedKind(header.kind));
            }
            bump(&counters.client_requests);
            let request = match decode_request(header.group, &payload) {
                Ok(request) => request,
                Err(error) => {
                    // The frame was intact, so the stream is still in sync; the request id may
                    // be garbage but is echoed so that a buggy client can match it.
                    bump(&counters.client_invalid);
                    let request_id =
                        payload.get(..8).map_or(0, |id| u64::from_le_bytes(id.try_into().expect("8 bytes")));
                    let reply = Response { request_id, body: ResponseBody::InvalidRequest(error.to_string()) };
                    if connection.replies.send((header.group, reply)).is_err() {
                        break 'connection ConnError::Closed;
                    }
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
                if connection.replies.send((header.group, busy)).is_err() {
                    break 'connection ConnError::Closed;
                }
                continue;
            }
            load.inflight.fetch_add(1, Ordering::Relaxed);
            load.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
            let responder =
                Responder::Connection { connection: Arc::clone(&connection), group: header.group, request_id, bytes };
            let client_request = ClientRequest {
                connection: connection.id,
                request,
                received: std::time::Instant::now(),
                responder: Some(responder),
            };
            match shared.requests.try_send(client_request) {
                Ok(()) => {}
                Err(TrySendError::Full(mut refused) | TrySendError::Disconnected(mut refused)) => {
                    // Not handed on: released here and answered by the reader, not through the
                    // runtime's response queue.
                    drop(refused.responder.take());
                    load.inflight.fetch_sub(1, Ordering::Relaxed);
                    load.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    bump(&counters.client_busy);
                    if connection.replies.send((header.group, busy)).is_err() {
                        break 'connection ConnError::Closed;
                    }
                }
            }
        }
        match reader.fill_with_deadlines(stream, config.idle_timeout(), config.frame_receive_max(), None) {
            Ok(_) => {}
            // A client waiting for answers is not idle.
            Err(ConnError::Idle(_)) if connection.load.inflight.load(Ordering::Relaxed) > 0 => reader.note_alive(),
            Err(error) => break error,
        }
    };
    let counter = match &end {
        ConnError::Frame(_) => &counters.disconnects_garbage,
        ConnError::Idle(_) => &counters.disconnects_idle,
        ConnError::SlowFrame(_) => &counters.disconnects_slow_frame,
        ConnError::Io(_) | ConnError::Closed | ConnError::Deadline => &counters.disconnects_io,
    };
    bump(counter);
    tracing::debug!(connection = connection.id, error = %end, "client connection closed");
}
