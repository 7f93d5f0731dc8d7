//! The socket side of an MQTT session: reads, writes, engine events, durability progress (PUBACK
//! and PUBREC wait for the store), the memory alarm, the keep-alive and CONNECT timers, takeover
//! and shutdown.
//!
//! One poll function ([`Connection::poll_turn`]) instead of a `select!` over futures: `select!`
//! keeps every branch's future in the task at once, enabled or not, and an idle IoT connection
//! lives for days with most of them disabled. An open session has no timer of its own: the
//! context's keep-alive sweeper wakes it when its keep-alive expired. Here the state is plain fields; what only a
//! publisher or a persistent session needs (three watch waits) is boxed on first use, the socket is polled without
//! `split`, and an idle connection holds no read buffer.
//!
//! Parking: a plain TCP connection with nothing to do for `park_after_ms` (nothing read,
//! nothing to write, no engine event waiting, nothing waiting for durability) gives up its task
//! and its tokio socket registration: [`Connection::park`] hands the socket and a [`Parked`]
//! record (the session and its keep-alive clock) to the context's parking lot
//! ([`crate::net::park`]), whose waker it registers where the task's would be (the mailbox, the
//! takeover/keep-alive signals). Readability, a hang-up, an engine delivery, a takeover, the
//! keep-alive expiry or the shutdown resume it ([`resumer`]): a new task, the same session.

use std::any::{Any, TypeId};
use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use codecs::mqtt::Connect;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::session::{Phase, Session};
use super::{count, MqttContext, NEVER};
use crate::engine::mailbox::Mailbox;
use crate::net::park::Resume;
use crate::net::Peer;

/// A client must send CONNECT within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine events handled in one go before the loop looks at the socket again.
const OUTBOUND_BATCH: usize = 512;
/// Output above which engine events wait (the socket is slow).
const OUT_HIGH_WATER: usize = 1 << 20;
/// Bounds of what one read asks for: small for an idle client (a PINGREQ is 2 bytes a
/// minute), large for a busy publisher (big batches, few syscalls).
const READ_MIN: usize = 64;
const READ_MAX: usize = 64 * 1024;
/// What a resumed connection reads at once, before its socket is back in tokio.
const READ_FIRST: usize = 4096;
/// How long a closing connection may take to write what it still has to say.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The read buffer, sized to the traffic: a read that fills what it was offered doubles the
/// next offer (up to [`READ_MAX`]), one that uses less than a quarter halves it (down to
/// [`READ_MIN`]). Drained at the smallest size, the buffer is given back: an idle connection
/// holds none, and its next read goes through the stack (a PINGREQ a minute does not need
/// 64 bytes of heap, and a buffer a packet was split off also carries a 40-byte shared header).
struct ReadBuf {
    buf: BytesMut,
    /// What the next read is offered at least.
    want: u32,
    /// What the last read was offered.
    offered: u32,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::new(),
            want: READ_MIN as u32,
            offered: 0,
        }
    }

    /// Reads what the stream has, into the buffer (allocated only once bytes came).
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let n = if self.buf.capacity() == 0 {
            let mut tmp = [0u8; READ_MIN];
            let mut read = tokio::io::ReadBuf::new(&mut tmp);
            ready!(Pin::new(stream).poll_read(cx, &mut read))?;
            self.buf.extend_from_slice(read.filled());
            self.offered = READ_MIN as u32;
            read.filled().len()
        } else {
            let want = self.want as usize;
            if self.buf.capacity() - self.buf.len() < want {
                self.buf.reserve(want);
            }
            self.offered = u32::try_from(self.buf.capacity() - self.buf.len()).unwrap_or(u32::MAX);
            ready!(tokio_util::io::poll_read_buf(
                Pin::new(stream),
                cx,
                &mut self.buf
            ))?
        };
        if n >= self.offered as usize {
            self.want = (self.want * 2).min(READ_MAX as u32);
        } else if n < self.want as usize / 4 {
            self.want = (self.want / 2).max(READ_MIN as u32);
        }
        Poll::Ready(Ok(n))
    }

    /// Everything readable was decoded: give the buffer back when it is empty and the reads are
    /// small, or when it is much bigger than they need.
    fn drained(&mut self) {
        if self.buf.is_empty()
            && (self.want as usize == READ_MIN || self.buf.capacity() > 2 * self.want as usize)
        {
            self.buf = BytesMut::new();
        }
    }
}

/// A wait for a watch channel to change, which owns its receiver while it waits (the tokio
/// receiver offers only an `async fn changed`). Boxed while waiting.
type WatchFuture<T> = Pin<Box<dyn Future<Output = (watch::Receiver<T>, bool)> + Send>>;

enum WatchWait<T> {
    Idle(watch::Receiver<T>),
    Waiting(WatchFuture<T>),
    /// The sender is gone (or there never was one): never resolves.
    Closed,
}

impl<T: Send + Sync + 'static> WatchWait<T> {
    fn new(rx: Option<watch::Receiver<T>>) -> Self {
        rx.map_or(WatchWait::Closed, WatchWait::Idle)
    }

    /// Ready once the value changed since the last time it was seen.
    fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self {
                WatchWait::Closed => return Poll::Pending,
                WatchWait::Idle(_) => {
                    let WatchWait::Idle(mut rx) = std::mem::replace(self, WatchWait::Closed) else {
                        unreachable!("matched Idle above");
                    };
                    *self = WatchWait::Waiting(Box::pin(async move {
                        let open = rx.changed().await.is_ok();
                        (rx, open)
                    }));
                }
                WatchWait::Waiting(f) => {
                    let (rx, open) = ready!(f.as_mut().poll(cx));
                    *self = if open {
                        WatchWait::Idle(rx)
                    } else {
                        WatchWait::Closed
                    };
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// What a connection waits on besides its socket once it publishes or has acknowledgements or
/// QoS 2 deliveries waiting for durability; allocated then.
struct Waits {
    /// The message store's durable Lsn (acknowledgements of persistent messages wait for it).
    durable: WatchWait<u64>,
    /// The session journal's durable sequence number (persistent sessions' packet-id state).
    journal: WatchWait<u64>,
    /// The memory alarm: a publisher is not read from while it is on (as RabbitMQ's MQTT plugin
    /// blocks publishers); its keep-alive is suspended meanwhile. Waited on by publishers only.
    alarm: WatchWait<bool>,
}

/// What [`Connection::poll_turn`] stops for.
enum Turn {
    /// A CONNECT to handle (it may wait for a session taken over from another connection).
    Connect(Box<Connect>),
    /// The connection is over.
    Close,
    /// Idle long enough: park (see [`Connection::park`]).
    Park,
}

/// What a parked connection keeps (besides its socket, which the parking lot holds).
pub(super) struct Parked {
    s: Session,
    last_recv_ms: u64,
}

struct Connection<S> {
    stream: S,
    s: Session,
    ctx: Arc<MqttContext>,
    rbuf: ReadBuf,
    /// When the last bytes came, in the context's milliseconds ([`MqttContext::now_ms`]).
    last_recv_ms: u64,
    /// When the last bytes came, were sent, or an engine event was handled: the idle clock
    /// of parking.
    last_active_ms: u64,
    /// The wake-up time last handed to the sweeper (see [`super::Takeover`]).
    wake_at_ms: u64,
    /// While connecting, when the CONNECT is due; once closing, when the close gives up
    /// writing. One field: the phases do not overlap.
    deadline: Instant,
    /// The timer of `deadline`, boxed while connecting or closing only: an open session's
    /// keep-alive is watched by the context's sweeper instead.
    timer: Option<Pin<Box<Sleep>>>,
    waits: Option<Box<Waits>>,
    /// Bytes handed to the stream since its last flush.
    unflushed: bool,
    blocked: bool,
    /// The shutdown waiter was polled once (see [`Connection::poll_turn`]).
    shutdown_registered: bool,
    shutdown_seen: bool,
    closing: bool,
    /// The stream is plain TCP and the context parks idle connections.
    parkable: bool,
}

/// Serves one MQTT connection until the peer closes, a protocol error closes it, the session is
/// taken over, or `shutdown` fires (MQTT 5 clients then get DISCONNECT 0x8B).
///
/// The connection is built here, before the future, and the future uses it in place: an
/// `async fn` keeps its arguments in the task and then moves them into locals of their own, so
/// the task would hold both copies.
pub fn serve<S>(
    stream: S,
    peer: impl Into<Peer>,
    ctx: Arc<MqttContext>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer: Peer = peer.into();
    let now_ms = ctx.now_ms();
    let conn = Connection {
        stream,
        s: Session::new(ctx.clone(), &peer),
        last_recv_ms: now_ms,
        last_active_ms: now_ms,
        wake_at_ms: NEVER,
        parkable: TypeId::of::<S>() == TypeId::of::<TcpStream>() && ctx.lot.get().is_some(),
        ctx,
        rbuf: ReadBuf::new(),
        deadline: Instant::now() + CONNECT_TIMEOUT,
        timer: None,
        waits: None,
        unflushed: false,
        blocked: false,
        shutdown_registered: false,
        shutdown_seen: false,
        closing: false,
    };
    run(conn, shutdown)
}

/// What resumes a parked connection: its socket back into tokio, and a task in `tracker` that
/// runs it again with the listeners' `shutdown` token.
pub(super) fn resumer(tracker: TaskTracker, shutdown: CancellationToken) -> Resume<Box<Parked>> {
    let handle = tokio::runtime::Handle::current();
    Box::new(move |fd: OwnedFd, parked: Box<Parked>| {
        // Wakers run on any thread: registering the socket needs the runtime's context.
        let _rt = handle.enter();
        // Ending the session takes the client registry's and the engine's locks, which the
        // waker's caller may hold (the keep-alive sweeper holds the registry's): in a task.
        let end = |mut s: Session| {
            tracker.spawn_on(async move { s.finish() }, &handle);
        };
        let Parked {
            s,
            mut last_recv_ms,
        } = *parked;
        tracing::debug!(peer = %s.peer, client_id = %s.client_id, "MQTT connection resumed");
        // What the socket has now, read here: a new tokio registration reports the socket
        // readable only once the reactor has had a turn, and a connection that found nothing
        // to read would park again at once, and be resumed again at once.
        let sock = std::net::TcpStream::from(fd);
        let mut first = [0u8; READ_FIRST];
        let n = match (&sock).read(&mut first) {
            Ok(0) => {
                tracing::debug!(peer = %s.peer, client_id = %s.client_id, "parked MQTT connection closed by the client");
                end(s);
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                tracing::debug!(peer = %s.peer, client_id = %s.client_id, error = %e, "parked MQTT connection failed");
                end(s);
                return;
            }
        };
        let stream = match TcpStream::from_std(sock) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(peer = %s.peer, client_id = %s.client_id, error = %e, "cannot resume a parked MQTT connection");
                end(s);
                return;
            }
        };
        let ctx = s.ctx().clone();
        let mut rbuf = ReadBuf::new();
        if n > 0 {
            rbuf.buf.extend_from_slice(&first[..n]);
            last_recv_ms = ctx.now_ms();
            count(&ctx.stats.bytes_received, n as u64);
        }
        let conn = Connection {
            stream,
            s,
            last_recv_ms,
            last_active_ms: ctx.now_ms(),
            wake_at_ms: NEVER,
            parkable: true,
            ctx,
            rbuf,
            deadline: Instant::now(),
            timer: None,
            waits: None,
            unflushed: false,
            blocked: false,
            shutdown_registered: false,
            shutdown_seen: false,
            closing: false,
        };
        tracker.spawn_on(run(conn, shutdown.clone()), &handle);
    })
}

/// Runs a connection until it closes or parks. Not an `async fn`, for the reason [`serve`]
/// gives: the connection is used in place, not copied into a local of the future.
#[allow(clippy::manual_async_fn)]
fn run<S>(mut conn: Connection<S>, shutdown: CancellationToken) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        loop {
            let turn = {
                // One shutdown waiter for the connection's life: building one every turn would
                // register and drop a waiter per batch.
                let waiter = shutdown.clone().cancelled_owned();
                tokio::pin!(waiter);
                loop {
                    match poll_fn(|cx| conn.poll_turn(cx, waiter.as_mut())).await {
                        // Boxed: CONNECT happens once, and its future would otherwise make
                        // every connection's task bigger for its whole life.
                        Turn::Connect(c) => Box::pin(conn.s.on_connect(*c)).await,
                        turn => break turn,
                    }
                }
            };
            match turn {
                Turn::Park => match conn.park() {
                    None => return,
                    Some(refused) => {
                        conn = refused;
                        // The next pass has a new waiter to register.
                        conn.shutdown_registered = false;
                    }
                },
                _ => break,
            }
        }
        conn.s.finish();
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(1),
            conn.stream.shutdown(),
        ))
        .await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + 'static> Connection<S> {
    /// Runs the connection until it needs an `await` of its own (a CONNECT) or is over.
    ///
    /// Each pass first does what needs no waiting (decode what was read, take engine events,
    /// send what became durable), then polls every enabled source once, in a fixed order; a
    /// pass in which none was ready returns `Pending` with all of them registered for a wake-up.
    /// Every source gets its turn in each pass, so a busy reader cannot starve the writes.
    fn poll_turn(
        &mut self,
        cx: &mut Context<'_>,
        mut shutdown: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Poll<Turn> {
        loop {
            let s = &mut self.s;
            if let Some(connect) = s.on_bytes(&mut self.rbuf.buf) {
                return Poll::Ready(Turn::Connect(connect));
            }
            self.rbuf.drained();
            drain_events(s);
            let engine = &self.ctx.engine;
            let journal = &self.ctx.sessions;
            s.flush_gated(engine.durable_lsn(), journal.durable_seq());
            if s.phase == Phase::Done {
                if s.out.is_empty() {
                    return Poll::Ready(Turn::Close);
                }
                if !self.closing {
                    self.closing = true;
                    self.deadline = Instant::now() + CLOSE_GRACE;
                }
            }
            let now_blocked = s.publisher && s.phase == Phase::Open && engine.memory_alarm_on();
            if now_blocked != self.blocked {
                tracing::info!(peer = %s.peer, client_id = %s.client_id, blocked = now_blocked, "memory alarm: MQTT publisher {}", if now_blocked { "blocked" } else { "unblocked" });
                // The keep-alive starts again when reading resumes.
                self.last_recv_ms = self.ctx.now_ms();
                self.blocked = now_blocked;
            }
            let read_enabled = s.phase != Phase::Done && !self.blocked;
            let events_enabled = s.out.len() < OUT_HIGH_WATER && s.phase == Phase::Open;
            let (wants_durable, wants_journal) =
                s.waits_for_durability(engine.durable_lsn(), journal.durable_seq());
            if (s.publisher || wants_durable || wants_journal) && self.waits.is_none() {
                self.waits = Some(Box::new(Waits {
                    durable: WatchWait::new(engine.subscribe_durable()),
                    journal: WatchWait::new(Some(journal.subscribe_durable())),
                    alarm: WatchWait::new(Some(engine.memory_alarm())),
                }));
                // A change before the receivers existed wakes nobody: look again.
                continue;
            }
            let keep_alive_expiry_ms = keep_alive_expiry_ms(s, self.last_recv_ms, self.blocked);
            let park_at_ms = if self.parkable && s.phase == Phase::Open && !self.blocked {
                self.last_active_ms + self.ctx.config.park_after_ms
            } else {
                NEVER
            };
            let wake_at_ms = keep_alive_expiry_ms.min(park_at_ms);
            if wake_at_ms != self.wake_at_ms {
                self.wake_at_ms = wake_at_ms;
                s.signals.wake_at(wake_at_ms);
            }
            if s.phase == Phase::Connecting || self.closing {
                let deadline = self.deadline;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            } else {
                self.timer = None;
            }

            // Nothing buffered either way and nothing waiting for the disk: parking loses nothing.
            let quiet = self.parkable
                && self.rbuf.buf.is_empty()
                && s.out.is_empty()
                && !self.unflushed
                && !self.closing
                && !self.blocked
                && !wants_durable
                && !wants_journal
                && s.parkable();

            // Sources that change the phase: handled alone, then the pass starts again.
            s.signals.register(cx);
            // The shutdown waiter is polled once to register it (with the signals as its
            // waker), then again only when it woke us: polling it locks the token's waiter
            // list, which every connection shares.
            if !self.shutdown_seen && (!self.shutdown_registered || s.signals.take_shutdown_woken())
            {
                self.shutdown_registered = true;
                let waker = Waker::from(s.signals.clone());
                if shutdown
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready()
                {
                    self.shutdown_seen = true;
                    s.on_shutdown();
                    continue;
                }
            }
            if s.phase == Phase::Open && s.signals.kicked() {
                s.on_taken_over();
                continue;
            }
            if self
                .timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
            {
                if self.closing {
                    return Poll::Ready(Turn::Close);
                }
                tracing::info!(peer = %s.peer, "no CONNECT in time");
                return Poll::Ready(Turn::Close);
            }
            if s.phase == Phase::Open && s.signals.take_due() {
                // The sweeper may have looked just before a read moved the times on.
                let now_ms = self.ctx.now_ms();
                if now_ms >= keep_alive_expiry_ms {
                    tracing::info!(peer = %s.peer, client_id = %s.client_id, "keep-alive timeout, closing");
                    s.on_keep_alive_timeout();
                } else if now_ms >= park_at_ms {
                    if quiet {
                        return Poll::Ready(Turn::Park);
                    }
                    // Busy after all: look again after another idle spell.
                    self.last_active_ms = now_ms;
                }
                continue;
            }

            // Data sources: each polled once per pass.
            let mut progress = false;
            let stats = &self.ctx.stats;
            if read_enabled {
                match self.rbuf.poll_fill(&mut self.stream, cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Turn::Close),
                    Poll::Ready(Ok(n)) => {
                        self.last_recv_ms = self.ctx.now_ms();
                        count(&stats.bytes_received, n as u64);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            // TLS and WebSocket streams may hold written bytes until flushed (a TCP flush is a
            // no-op): once the output is written, flush.
            if !s.out.is_empty() {
                match tokio_util::io::poll_write_buf(Pin::new(&mut self.stream), cx, &mut s.out) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Turn::Close),
                    Poll::Ready(Ok(n)) => {
                        count(&stats.bytes_sent, n as u64);
                        self.unflushed = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            } else if self.unflushed {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Ready(Err(_)) => return Poll::Ready(Turn::Close),
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if events_enabled {
                if let Some(rx) = s.rx.as_mut() {
                    if let Poll::Ready(Some(ev)) = rx.poll_recv(cx) {
                        s.on_outbound(ev);
                        progress = true;
                    }
                }
            }
            if let Some(w) = self.waits.as_deref_mut() {
                if wants_durable && w.durable.poll_changed(cx).is_ready() {
                    progress = true;
                }
                if wants_journal && w.journal.poll_changed(cx).is_ready() {
                    progress = true;
                }
                if s.publisher && w.alarm.poll_changed(cx).is_ready() {
                    progress = true;
                }
            }
            if !progress {
                // A connection that has carried no message yet (it connected, perhaps
                // subscribed) parks as soon as it is quiet: after a reconnect storm, thousands
                // of such connections would otherwise all hold a task at once, and the memory
                // of that peak stays with the process (the allocator keeps it).
                if quiet && !s.publisher && !s.delivered {
                    return Poll::Ready(Turn::Park);
                }
                return Poll::Pending;
            }
            if self.parkable {
                self.last_active_ms = self.ctx.now_ms();
            }
        }
    }

    /// Parks the connection (see the module comment): `None` once parked (the task may end),
    /// or the connection back when something came up meanwhile.
    fn park(mut self) -> Option<Self> {
        let Some(lot) = self.ctx.lot.get().cloned() else {
            self.parkable = false;
            return Some(self);
        };
        let Some(fd) = (&self.stream as &dyn Any)
            .downcast_ref::<TcpStream>()
            .map(AsRawFd::as_raw_fd)
        else {
            self.parkable = false;
            return Some(self);
        };
        // The lot's waker first, then a look at what could have woken us: what comes after
        // resumes the parked connection.
        let waker = lot.waker(fd);
        self.s.signals.register_waker(&waker);
        let quiet = self.s.rx.as_mut().is_none_or(|rx| rx.park_waker(&waker));
        if !quiet || self.s.signals.pending() {
            self.last_active_ms = self.ctx.now_ms();
            return Some(self);
        }
        let mut stream = Some(self.stream);
        let Some(tcp) = (&mut stream as &mut dyn Any)
            .downcast_mut::<Option<TcpStream>>()
            .and_then(Option::take)
        else {
            unreachable!("the stream is a TcpStream (looked at above)");
        };
        let s = &mut self.s;
        let sock = match tcp.into_std() {
            Ok(sock) => OwnedFd::from(sock),
            Err(e) => {
                tracing::warn!(peer = %s.peer, client_id = %s.client_id, error = %e, "cannot park an MQTT connection; closing it");
                s.finish();
                return None;
            }
        };
        // What an idle connection does not need while parked.
        s.out = bytes::BytesMut::new();
        s.signals
            .wake_at(keep_alive_expiry_ms(s, self.last_recv_ms, false));
        tracing::debug!(peer = %s.peer, client_id = %s.client_id, "MQTT connection parked");
        lot.park(
            sock,
            Box::new(Parked {
                s: self.s,
                last_recv_ms: self.last_recv_ms,
            }),
        );
        None
    }
}

/// MQTT-3.1.2-24: closed after 1.5 times the keep-alive without a packet ([`NEVER`]: no
/// keep-alive, not open, or suspended while the memory alarm blocks reading).
fn keep_alive_expiry_ms(s: &Session, last_recv_ms: u64, blocked: bool) -> u64 {
    if s.phase == Phase::Open && s.keep_alive > 0 && !blocked {
        last_recv_ms + u64::from(s.keep_alive) * 1500
    } else {
        NEVER
    }
}

fn drain_events(s: &mut Session) {
    for _ in 0..OUTBOUND_BATCH {
        if s.out.len() >= OUT_HIGH_WATER || s.phase != Phase::Open {
            return;
        }
        match s.rx.as_mut().map(Mailbox::try_recv) {
            Some(Ok(ev)) => s.on_outbound(ev),
            _ => return,
        }
    }
}
