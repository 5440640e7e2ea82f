//! Sockets and tasks of the DNS server, and the order of the query pipeline.
//!
//! Pipeline of one query, in order:
//! 1. fast path (`codec::fast_answer`): A/PTR of existing names and NXDOMAIN under our zones,
//!    answered on the receiving thread from the precomputed map;
//! 2. undecodable input: FORMERR (header parsed) or drop; responses are never answered;
//! 3. zone transfers (AXFR/IXFR): configured secondaries only, else REFUSED;
//! 4. names outside our zones: forwarded for allowed clients when upstreams exist, else REFUSED;
//! 5. ANY in our zones: answered minimally with one RRset (RFC 8482);
//! 6. everything else: hickory's `Catalog`.
//!
//! UDP answers then pass the response-rate limiter and are truncated to the client's size.
//!
//! UDP is served by one blocking thread per SO_REUSEPORT socket; slow-path work runs on tokio
//! under a semaphore. TCP is a tokio listener on the same port.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse, ZoneHandler};
use ipnet::IpNet;
use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{self, Fast, HEADER_LEN, RawHeader};
use super::config::allowed;
use super::forward::Forwarder;
use super::mmsg::{RecvBatch, SendBatch};
use super::rrl::{Rrl, Verdict};
use super::zone::{RecordsHandle, Shared, ZoneSet};
use super::{Config, DnsDeps, DnsError};

const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;
const TYPE_ANY: u16 = 255;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Size of one zone-transfer message over TCP.
const XFR_CHUNK: usize = 16_000;
const READ_TICK: Duration = Duration::from_millis(200);
/// Delay before copying changes into the catalog, to batch them.
const SYNC_DELAY: Duration = Duration::from_millis(5);

/// Everything one query needs; shared by every socket.
struct Engine {
    shared: Arc<Shared>,
    catalog: Catalog,
    secondaries: Vec<IpAddr>,
    forward_clients: Vec<IpNet>,
    forwarder: Option<Forwarder>,
    edns_payload: u16,
    rrl: Option<Rrl>,
    permits: Arc<Semaphore>,
}

/// Where [`Capture`] leaves the encoded response (`Err` when it did not fit).
type Slot = Arc<Mutex<Option<Result<Vec<u8>, ()>>>>;

/// Captures the encoded response of the catalog.
#[derive(Clone)]
struct Capture {
    max: u16,
    out: Slot,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        let mut enc = BinEncoder::new(&mut buf);
        enc.set_max_size(self.max);
        let res = response.destructive_emit(&mut enc);
        let mut slot = self.out.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(info) => {
                *slot = Some(Ok(buf));
                Ok(info)
            }
            Err(err) => {
                *slot = Some(Err(()));
                Err(NetError::from(err))
            }
        }
    }
}

impl Engine {
    /// UDP size limit for the answer to `pkt`.
    fn udp_limit(&self, pkt: &[u8]) -> u16 {
        codec::client_payload(pkt).min(self.edns_payload.max(512))
    }

    /// The slow path: every query the fast path did not answer. Returns the messages to send.
    async fn slow(&self, pkt: Vec<u8>, src: SocketAddr, proto: Protocol) -> Vec<Vec<u8>> {
        let Some(h) = RawHeader::read(&pkt) else {
            debug!(%src, "dropping runt packet");
            return Vec::new();
        };
        if h.is_response() {
            return Vec::new();
        }
        let request = match Request::from_bytes(pkt.clone(), src, proto) {
            Ok(r) => r,
            Err(err) => {
                debug!(%src, error = %err, "malformed query");
                return vec![codec::error_header(h, RCODE_FORMERR)];
            }
        };
        if h.opcode() != 0 {
            return self.catalog_answer(&request, &pkt, proto).await;
        }
        let Some(qtype) = codec::qtype(&pkt) else {
            return vec![codec::error_header(h, RCODE_FORMERR)];
        };
        let Ok(info) = request.request_info() else {
            return vec![codec::error_header(h, RCODE_FORMERR)];
        };
        let qname = Name::from(info.query.name());
        let zone = self.shared.lock().zone_for(&qname);

        if qtype == TYPE_AXFR || qtype == TYPE_IXFR {
            return self.transfer(&pkt, src, proto, zone, &qname, qtype);
        }
        let Some(zi) = zone else {
            return self.forward(&pkt, src).await;
        };
        if qtype == TYPE_ANY {
            let t = self.shared.lock().any_type(zi, &qname);
            if let Some(t) = t {
                let mut rewritten = pkt.clone();
                codec::set_qtype(&mut rewritten, u16::from(t));
                if let Ok(req) = Request::from_bytes(rewritten.clone(), src, proto) {
                    let mut out = self.catalog_answer(&req, &rewritten, proto).await;
                    for m in &mut out {
                        codec::set_qtype(m, TYPE_ANY);
                    }
                    return out;
                }
            }
        }
        self.catalog_answer(&request, &pkt, proto).await
    }

    async fn catalog_answer(&self, request: &Request, pkt: &[u8], proto: Protocol) -> Vec<Vec<u8>> {
        let max = match proto {
            Protocol::Udp => self.udp_limit(pkt),
            _ => u16::MAX,
        };
        let capture = Capture {
            max,
            out: Arc::new(Mutex::new(None)),
        };
        let _ = self
            .catalog
            .handle_request::<_, TokioTime>(request, capture.clone())
            .await;
        let got = capture.out.lock().unwrap_or_else(|e| e.into_inner()).take();
        match got {
            Some(Ok(buf)) => vec![buf],
            // Too large for the client: the header and question with TC set.
            Some(Err(())) if proto == Protocol::Udp => {
                codec::header_and_question(pkt, 0, true, true)
                    .into_iter()
                    .collect()
            }
            _ => codec::header_and_question(pkt, RCODE_SERVFAIL, false, false)
                .into_iter()
                .collect(),
        }
    }

    async fn forward(&self, pkt: &[u8], src: SocketAddr) -> Vec<Vec<u8>> {
        let refuse = || {
            codec::header_and_question(pkt, RCODE_REFUSED, false, false)
                .into_iter()
                .collect()
        };
        let Some(fwd) = &self.forwarder else {
            return refuse();
        };
        if !allowed(&self.forward_clients, src.ip()) {
            debug!(%src, "forwarding refused to client outside the allowed networks");
            return refuse();
        }
        match fwd.resolve(pkt).await {
            Some(resp) => vec![resp],
            None => codec::header_and_question(pkt, RCODE_SERVFAIL, false, false)
                .into_iter()
                .collect(),
        }
    }

    /// AXFR/IXFR: the whole zone (IXFR answers with a full transfer, RFC 1995 section 4).
    fn transfer(
        &self,
        pkt: &[u8],
        src: SocketAddr,
        proto: Protocol,
        zone: Option<usize>,
        qname: &Name,
        qtype: u16,
    ) -> Vec<Vec<u8>> {
        let refuse = || {
            codec::header_and_question(pkt, RCODE_REFUSED, false, false)
                .into_iter()
                .collect()
        };
        if !self.secondaries.contains(&src.ip()) {
            info!(%src, zone = %qname, "zone transfer refused");
            return refuse();
        }
        let st = self.shared.lock();
        let Some(zi) = zone.filter(|&zi| st.is_apex(zi, qname)) else {
            return refuse();
        };
        let records = if proto == Protocol::Udp && qtype == TYPE_IXFR {
            // Over UDP an IXFR gets our SOA only: the client then transfers over TCP.
            vec![st.soa_record(zi)]
        } else {
            st.transfer_records(zi)
        };
        drop(st);
        let Ok(req) = Message::from_vec(pkt) else {
            return refuse();
        };
        let Some(query) = req.queries.first().cloned() else {
            return refuse();
        };
        let new_msg = |first: bool| {
            let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
            m.metadata.authoritative = true;
            if first {
                m.add_query(query.clone());
            }
            m
        };
        let limit = match proto {
            Protocol::Udp => usize::from(self.udp_limit(pkt)),
            _ => XFR_CHUNK,
        };
        let mut out = Vec::new();
        let mut msg = new_msg(true);
        let mut size = HEADER_LEN + 64;
        for r in records {
            let rsize = r.to_bytes().map_or(usize::from(u16::MAX), |b| b.len());
            if size + rsize > limit && !msg.answers.is_empty() {
                if proto == Protocol::Udp {
                    return codec::header_and_question(pkt, 0, true, true)
                        .into_iter()
                        .collect();
                }
                out.push(msg);
                msg = new_msg(false);
                size = HEADER_LEN;
            }
            size += rsize;
            msg.add_answer(r);
        }
        out.push(msg);
        info!(%src, zone = %qname, messages = out.len(), "zone transfer");
        out.into_iter().filter_map(|m| m.to_vec().ok()).collect()
    }
}

/// A running DNS server. Dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    records: RecordsHandle,
    stop: Arc<AtomicBool>,
    cancel: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    tasks: JoinSet<()>,
}

impl ServerHandle {
    /// Address of the UDP sockets and the TCP listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Handle on the live host records.
    pub fn records(&self) -> RecordsHandle {
        self.records.clone()
    }

    /// Stops every socket and task and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancel.cancel();
    }
}

/// The DNS server.
#[derive(Debug)]
pub struct Server;

fn build_engine(cfg: &Config) -> Result<Arc<Engine>, DnsError> {
    let (shared, handlers) = ZoneSet::build(cfg)?;
    let mut catalog = Catalog::new();
    for h in handlers {
        let origin = h.origin().clone();
        catalog.upsert(origin, vec![h as Arc<dyn ZoneHandler>]);
    }
    Ok(Arc::new(Engine {
        shared: Arc::new(shared),
        catalog,
        secondaries: cfg.secondaries.iter().map(SocketAddr::ip).collect(),
        forward_clients: cfg.effective_forward_clients(),
        forwarder: (!cfg.forwarders.is_empty())
            .then(|| Forwarder::new(cfg.forwarders.clone(), cfg.cache_entries)),
        edns_payload: cfg.edns_payload,
        rrl: cfg.rate_limit.map(Rrl::new),
        permits: Arc::new(Semaphore::new(cfg.max_inflight.get())),
    }))
}

/// Runs one datagram through the whole query path (fast path, then the slow path over UDP and
/// TCP) against a small fixed zone, without sockets. For the fuzz target.
#[doc(hidden)]
pub fn fuzz_query(data: &[u8]) {
    static ENGINE: OnceLock<Option<(tokio::runtime::Runtime, Arc<Engine>)>> = OnceLock::new();
    let Some((rt, engine)) = ENGINE
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let mut cfg = Config::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Name::from_ascii("rack.fuzz.").ok()?,
            );
            cfg.subnets = vec!["10.9.0.0/16".parse().ok()?];
            cfg.appliance = Some([10, 9, 0, 1].into());
            cfg.api_port = Some(8080);
            cfg.records = vec!["alias IN CNAME provisioner".into(), "* IN TXT wild".into()];
            cfg.secondaries = vec![SocketAddr::from(([127, 0, 0, 1], 53))];
            let engine = build_engine(&cfg).ok()?;
            let records = RecordsHandle {
                shared: Arc::clone(&engine.shared),
            };
            records.upsert_host("n1", [10, 9, 0, 5].into(), "owner-1");
            Some((rt, engine))
        })
        .as_ref()
    else {
        return;
    };
    let mut out = Vec::new();
    let fast = {
        let map = engine.shared.fast.read().unwrap_or_else(|e| e.into_inner());
        codec::fast_answer(&map, data, engine.edns_payload, &mut out)
    };
    if fast == Fast::Slow {
        let src = SocketAddr::from(([127, 0, 0, 1], 5353));
        rt.block_on(async {
            let _ = engine.slow(data.to_vec(), src, Protocol::Udp).await;
            let _ = engine.slow(data.to_vec(), src, Protocol::Tcp).await;
        });
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(SockProtocol::UDP),
    )?;
    s.set_reuse_port(true)?;
    s.set_recv_buffer_size(4 << 20)?;
    s.set_send_buffer_size(4 << 20)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Binds the UDP sockets and the TCP listener on one port.
fn bind_all(cfg: &Config) -> Result<(Vec<StdUdpSocket>, std::net::TcpListener), DnsError> {
    let attempts = if cfg.listen.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let bind_err = |err| DnsError::Bind {
            addr: cfg.listen,
            err,
        };
        let first = udp_socket(cfg.listen).map_err(bind_err)?;
        let addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bind_err(io::Error::other("no local address")))?;
        let tcp = match tcp_listener(addr) {
            Ok(t) => t,
            Err(err) => {
                last = Some(DnsError::Bind { addr, err });
                continue;
            }
        };
        let mut socks = vec![StdUdpSocket::from(first)];
        for _ in 1..cfg.udp_workers.get() {
            socks.push(StdUdpSocket::from(
                udp_socket(addr).map_err(|err| DnsError::Bind { addr, err })?,
            ));
        }
        return Ok((socks, std::net::TcpListener::from(tcp)));
    }
    Err(last.expect("invariant: at least one attempt was made"))
}

impl Server {
    /// Builds the zones, binds UDP and TCP and starts serving.
    pub async fn start(cfg: Config, deps: DnsDeps) -> Result<ServerHandle, DnsError> {
        let engine = build_engine(&cfg)?;
        let shared = Arc::clone(&engine.shared);
        let (udp, tcp) = bind_all(&cfg)?;
        let local_addr = tcp.local_addr().map_err(|err| DnsError::Bind {
            addr: cfg.listen,
            err,
        })?;
        let cancel = deps.shutdown.child_token();
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Handle::current();

        let mut threads = Vec::new();
        for (i, sock) in udp.into_iter().enumerate() {
            sock.set_read_timeout(Some(READ_TICK))
                .map_err(|err| DnsError::Bind {
                    addr: local_addr,
                    err,
                })?;
            let engine = Arc::clone(&engine);
            let stop = Arc::clone(&stop);
            let rt = rt.clone();
            let t = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_worker(&Arc::new(sock), &engine, &stop, &rt))
                .map_err(|err| DnsError::Thread { err })?;
            threads.push(t);
        }

        let mut tasks = JoinSet::new();
        let tcp = TcpListener::from_std(tcp).map_err(|err| DnsError::Bind {
            addr: local_addr,
            err,
        })?;
        tasks.spawn(tcp_accept(
            tcp,
            Arc::clone(&engine),
            cancel.clone(),
            Arc::new(Semaphore::new(cfg.max_tcp_connections.get())),
        ));
        tasks.spawn(catalog_sync(Arc::clone(&shared), cancel.clone()));
        tasks.spawn(notifier(
            Arc::clone(&shared),
            cfg.secondaries.clone(),
            cancel.clone(),
        ));
        info!(proto = "dns", addr = %local_addr, "listening");
        Ok(ServerHandle {
            local_addr,
            records: RecordsHandle { shared },
            stop,
            cancel,
            threads,
            tasks,
        })
    }
}

fn send_udp(engine: &Engine, sock: &StdUdpSocket, pkt: &[u8], msg: &[u8], src: SocketAddr) {
    let verdict = engine
        .rrl
        .as_ref()
        .map_or(Verdict::Send, |r| r.check(src.ip()));
    let res = match verdict {
        Verdict::Send => sock.send_to(msg, src),
        Verdict::Slip => match codec::header_and_question(pkt, 0, true, false) {
            Some(tc) => sock.send_to(&tc, src),
            None => return,
        },
        Verdict::Drop => return,
    };
    if let Err(err) = res {
        debug!(%src, error = %err, "udp send failed");
    }
}

/// One UDP socket: batches of datagrams, the fast path inline, the rest handed to tokio.
fn udp_worker(
    sock: &Arc<StdUdpSocket>,
    engine: &Arc<Engine>,
    stop: &AtomicBool,
    rt: &tokio::runtime::Handle,
) {
    let fd = sock.as_raw_fd();
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(fd) {
            Ok(n) => n,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => {
                debug!(error = %err, "udp receive failed");
                continue;
            }
        };
        {
            let map = engine.shared.fast.read().unwrap_or_else(|e| e.into_inner());
            for i in 0..n {
                let (raw, raw_len, src) = rx.addr(i);
                let Some(src) = src else { continue };
                let Some(pkt) = rx.packet(i) else {
                    // Longer than any query we serve: FORMERR when it has a query header.
                    if let Some(h) = RawHeader::read(rx.packet_prefix(i))
                        && !h.is_response()
                    {
                        let out = tx.next_buf();
                        out.clear();
                        out.extend_from_slice(&codec::error_header(h, RCODE_FORMERR));
                        tx.commit(raw, raw_len);
                    }
                    continue;
                };
                let out = tx.next_buf();
                match codec::fast_answer(&map, pkt, engine.edns_payload, out) {
                    Fast::Reply(_) => match engine
                        .rrl
                        .as_ref()
                        .map_or(Verdict::Send, |r| r.check(src.ip()))
                    {
                        Verdict::Send => tx.commit(raw, raw_len),
                        Verdict::Slip => {
                            if let Some(tc) = codec::header_and_question(pkt, 0, true, false) {
                                out.clear();
                                out.extend_from_slice(&tc);
                                tx.commit(raw, raw_len);
                            }
                        }
                        Verdict::Drop => {}
                    },
                    Fast::Slow => spawn_slow(engine, sock, rt, pkt, src),
                }
            }
        }
        if tx.len() > 0 {
            tx.flush(fd);
        }
    }
}

/// Hands one UDP query to the slow path on tokio, bounded by the in-flight semaphore.
fn spawn_slow(
    engine: &Arc<Engine>,
    sock: &Arc<StdUdpSocket>,
    rt: &tokio::runtime::Handle,
    pkt: &[u8],
    src: SocketAddr,
) {
    let Ok(permit) = Arc::clone(&engine.permits).try_acquire_owned() else {
        debug!(%src, "slow path saturated, dropping query");
        return;
    };
    let pkt = pkt.to_vec();
    let engine = Arc::clone(engine);
    let sock = Arc::clone(sock);
    rt.spawn(async move {
        let msgs = engine.slow(pkt.clone(), src, Protocol::Udp).await;
        for m in msgs {
            let m = if m.len() > usize::from(engine.udp_limit(&pkt)) {
                match codec::header_and_question(&pkt, 0, true, false) {
                    Some(tc) => tc,
                    None => continue,
                }
            } else {
                m
            };
            send_udp(&engine, &sock, &pkt, &m, src);
        }
        drop(permit);
    });
}

async fn tcp_accept(
    listener: TcpListener,
    engine: Arc<Engine>,
    cancel: CancellationToken,
    conns: Arc<Semaphore>,
) {
    let mut set = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = set.join_next(), if !set.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(err) => {
                debug!(error = %err, "tcp accept failed");
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            debug!(%peer, "too many tcp connections, closing");
            continue;
        };
        let engine = Arc::clone(&engine);
        let cancel = cancel.clone();
        set.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                res = tcp_conn(stream, peer, &engine) => {
                    if let Err(err) = res {
                        debug!(%peer, error = %err, "tcp connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
    set.shutdown().await;
}

async fn tcp_conn(mut stream: TcpStream, peer: SocketAddr, engine: &Engine) -> io::Result<()> {
    let mut out = Vec::with_capacity(1500);
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(err)) => return Err(err),
            Err(_) => return Ok(()),
        };
        let mut pkt = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut pkt))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let fast = {
            let map = engine.shared.fast.read().unwrap_or_else(|e| e.into_inner());
            codec::fast_answer(&map, &pkt, engine.edns_payload, &mut out)
        };
        let msgs = match fast {
            Fast::Reply(n) => vec![out[..n].to_vec()],
            Fast::Slow => {
                let _permit = engine
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| io::Error::other("server stopping"))?;
                engine.slow(pkt, peer, Protocol::Tcp).await
            }
        };
        for m in msgs {
            let Ok(len) = u16::try_from(m.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(m.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&m);
            stream.write_all(&framed).await?;
        }
    }
}

/// Copies changed RRsets into hickory's zone handlers.
async fn catalog_sync(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.sync_wake.notified() => {}
        }
        // Coalesce bursts (a startup replay) into one batch. The fast path already answers A
        // and PTR from the master copy, so only slow-path answers wait for this.
        tokio::time::sleep(SYNC_DELAY).await;
        let batches = shared.lock().take_dirty();
        for (handler, changes) in batches {
            let mut records = handler.records_mut().await;
            for (key, rrset) in changes {
                match rrset {
                    Some(s) => {
                        records.insert(key, Arc::new(s));
                    }
                    None => {
                        records.remove(&key);
                    }
                }
            }
        }
    }
}

/// Sends NOTIFY for changed zones to the secondaries (coalesced over 100 ms).
async fn notifier(shared: Arc<Shared>, secondaries: Vec<SocketAddr>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.notify_wake.notified() => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let zones = shared.lock().take_changed_zones();
        if secondaries.is_empty() {
            continue;
        }
        let mut set = JoinSet::new();
        for (origin, soa) in zones {
            for &sec in &secondaries {
                set.spawn(send_notify(origin.clone(), soa.clone(), sec));
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = async { while set.join_next().await.is_some() {} } => {}
        }
    }
}

async fn send_notify(origin: Name, soa: Record, to: SocketAddr) {
    let id = {
        use std::hash::{BuildHasher, Hasher};
        let h = std::hash::RandomState::new().build_hasher().finish();
        u16::try_from(h & 0xFFFF).expect("invariant: masked to 16 bits")
    };
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    m.add_query(Query::query(origin.clone(), RecordType::SOA));
    m.add_answer(soa);
    let Ok(bytes) = m.to_vec() else { return };
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return;
    };
    let mut buf = [0u8; 512];
    for attempt in 1..=3 {
        if sock.send_to(&bytes, to).await.is_err() {
            break;
        }
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
            && from == to
            && RawHeader::read(&buf[..n]).is_some_and(|h| h.id == id && h.is_response())
        {
            debug!(zone = %origin, secondary = %to, attempt, "notify acknowledged");
            return;
        }
    }
    warn!(zone = %origin, secondary = %to, "notify not acknowledged");
}
