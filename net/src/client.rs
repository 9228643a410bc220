//! A blocking client: used by the load generator and `smr ctl`.
//!
//! Pipelined: [`Client::submit`] queues requests (written on [`Client::flush`] or the next
//! receive, many per `writev`), [`Client::recv`] returns responses in whatever order the node
//! answers them. [`Client::call`] is the one-request convenience that follows `NotLeader`
//! redirects and retries `Busy` with a short backoff.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use smr_raft::GroupId;
use thiserror::Error;

use crate::batch::SendBatch;
use crate::client_proto::{ProtoError, Request, RequestBody, Response, ResponseBody, decode_response, encode_request};
use crate::conn::{ConnError, FrameReader};
use crate::frame::{FrameError, FrameKind};

/// A server that sends nothing for this long while the client waits is not an error of the
/// client's: `response_ms` bounds each wait instead.
const RECV_IDLE_MAX: Duration = Duration::from_secs(24 * 3600);
/// A response frame whose first byte has arrived must be complete within this time.
const RECV_FRAME_MAX: Duration = Duration::from_secs(10);

/// Settings of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The Raft group requests are for.
    pub group: GroupId,
    /// Largest frame sent or accepted; should match the servers' `frame_bytes_max`.
    pub frame_bytes_max: usize,
    pub connect_ms: u64,
    /// How long [`Client::recv`] waits for a response.
    pub response_ms: u64,
    /// Redirects and `Busy` retries [`Client::call`] follows before giving up.
    pub retries_max: u32,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig { group: 0, frame_bytes_max: 16 << 20, connect_ms: 2_000, response_ms: 10_000, retries_max: 16 }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to any of {0:?}")]
    Connect(Vec<SocketAddr>),
    #[error("connection: {0}")]
    Conn(#[from] ConnError),
    #[error("bad response: {0}")]
    Proto(#[from] ProtoError),
    #[error("request does not fit a frame: {0}")]
    TooLarge(FrameError),
    #[error("no response within {0:?}")]
    TimedOut(Duration),
    #[error("gave up after {retries} retries; last answer {last:?}")]
    Exhausted { retries: u32, last: ResponseBody },
}

/// One connection to one node of a cluster, knowing the others' addresses for redirects.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    addresses: Vec<SocketAddr>,
    stream: TcpStream,
    connected_to: SocketAddr,
    reader: FrameReader,
    batch: SendBatch,
    next_request_id: u64,
}

fn connect_one(address: SocketAddr, config: &ClientConfig) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_millis(config.connect_ms))?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_millis(config.response_ms)))?;
    Ok(stream)
}

impl Client {
    /// Connects to the first reachable address of `addresses`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when none answers.
    pub fn connect(addresses: &[SocketAddr], config: ClientConfig) -> Result<Client, ClientError> {
        for &address in addresses {
            if let Ok(stream) = connect_one(address, &config) {
                return Ok(Client {
                    reader: FrameReader::new(256 << 10, config.frame_bytes_max),
                    batch: SendBatch::new(),
                    config,
                    addresses: addresses.to_vec(),
                    stream,
                    connected_to: address,
                    next_request_id: 1,
                });
            }
        }
        Err(ClientError::Connect(addresses.to_vec()))
    }

    /// The node this client is connected to.
    pub fn connected_to(&self) -> SocketAddr {
        self.connected_to
    }

    /// Drops the current connection (and every request in flight on it) and connects to
    /// `address`, falling back to the other known addresses.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when no node answers.
    pub fn reconnect(&mut self, address: Option<SocketAddr>) -> Result<(), ClientError> {
        let mut candidates: Vec<SocketAddr> = address.into_iter().collect();
        let start = self.addresses.iter().position(|&known| known == self.connected_to).map_or(0, |at| at + 1);
        for offset in 0..self.addresses.len() {
            candidates.push(self.addresses[(start + offset) % self.addresses.len()]);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.batch.clear();
        for candidate in candidates.iter().copied() {
            if let Ok(stream) = connect_one(candidate, &self.config) {
                self.stream = stream;
                self.connected_to = candidate;
                self.reader = FrameReader::new(256 << 10, self.config.frame_bytes_max);
                if !self.addresses.contains(&candidate) {
                    self.addresses.push(candidate);
                }
                return Ok(());
            }
        }
        Err(ClientError::Connect(candidates))
    }

    /// Queues a request and returns its id. Nothing is written until [`Client::flush`] or
    /// [`Client::recv`].
    ///
    /// # Errors
    /// [`ClientError::TooLarge`] when the request does not fit a frame.
    pub fn submit(&mut self, body: RequestBody) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = Request { request_id, group: self.config.group, body };
        encode_request(&mut self.batch, &request, self.config.frame_bytes_max).map_err(ClientError::TooLarge)?;
        Ok(request_id)
    }

    /// Writes every queued request.
    ///
    /// # Errors
    /// The connection failed.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        let mut writer = crate::nosignal::NoSignal(&self.stream);
        self.batch.write_to(&mut writer).map_err(|error| ClientError::Conn(ConnError::Io(error)))
    }

    /// Flushes, then waits for the next response, whichever request it answers.
    ///
    /// # Errors
    /// The connection failed or sent garbage, or nothing arrived within `response_ms`.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        if !self.batch.is_empty() {
            self.flush()?;
        }
        let wait = Duration::from_millis(self.config.response_ms);
        let deadline = Instant::now() + wait;
        loop {
            if let Some(response) = self.try_recv()? {
                return Ok(response);
            }
            // The deadline bounds this call. The idle and slow-frame bounds are measured from the
            // last byte received and from a frame's first byte, across calls: with a short
            // `response_ms` (a polling open-loop client) they would have expired before the
            // next call even read, and it would never have read again.
            match self.reader.fill_with_deadlines(&self.stream, RECV_IDLE_MAX, RECV_FRAME_MAX.max(wait), Some(deadline))
            {
                Ok(_) => {}
                Err(ConnError::Deadline | ConnError::Idle(_) | ConnError::SlowFrame(_)) => {
                    return Err(ClientError::TimedOut(wait));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The next response already received, without reading or writing: a read often brings
    /// several, and taking them all before submitting again lets one write carry the next round.
    ///
    /// # Errors
    /// The connection sent garbage.
    pub fn try_recv(&mut self) -> Result<Option<Response>, ClientError> {
        match self.reader.next_frame().map_err(ConnError::Frame)? {
            None => Ok(None),
            Some((header, _)) if header.kind != FrameKind::ClientResponse => {
                Err(ClientError::Conn(ConnError::Frame(FrameError::UnexpectedKind(header.kind))))
            }
            Some((_, payload)) => Ok(Some(decode_response(&payload)?)),
        }
    }

    /// Sends one request and waits for its answer, following `NotLeader` redirects (to the
    /// leader's address when the node knows it, else to the next known node) and retrying
    /// `Busy` after a short pause, at most `retries_max` times. Responses to other requests
    /// still in flight on this connection are discarded, so do not mix with [`Client::submit`].
    ///
    /// # Errors
    /// The connection failed everywhere, or the retries ran out.
    pub fn call(&mut self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let mut retries = 0;
        loop {
            let request_id = self.submit(body.clone())?;
            let answer = loop {
                let outcome = self.recv();
                match outcome {
                    Ok(response) if response.request_id == request_id => break Ok(response.body),
                    Ok(_) => {}
                    Err(ClientError::Conn(_)) => break Err(()),
                    Err(error) => return Err(error),
                }
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(()) => {
                    // The node went away: try the others.
                    if retries >= self.config.retries_max {
                        return Err(ClientError::Exhausted { retries, last: ResponseBody::ShuttingDown });
                    }
                    retries += 1;
                    self.reconnect(None)?;
                    continue;
                }
            };
            let redirect = match &answer {
                ResponseBody::NotLeader { leader_address, .. } => {
                    Some(leader_address.as_deref().and_then(|text| text.to_socket_addrs().ok()?.next()))
                }
                ResponseBody::Busy | ResponseBody::ShuttingDown => None,
                _ => return Ok(answer),
            };
            if retries >= self.config.retries_max {
                return Err(ClientError::Exhausted { retries, last: answer });
            }
            retries += 1;
            match (redirect, answer) {
                (Some(leader), _) => self.reconnect(leader)?,
                (None, ResponseBody::ShuttingDown) => self.reconnect(None)?,
                (None, _) => std::thread::sleep(Duration::from_millis(u64::from(retries.min(10)) * 5)),
            }
        }
    }
}
