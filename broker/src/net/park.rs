//! The parking lot: where idle connections wait without a task or a reactor registration.
//!
//! An idle connection (an IoT device that sends a PINGREQ a minute) costs a tokio task (the
//! task cell, about 640 bytes for an MQTT connection) and a tokio socket registration (about
//! 256 bytes) for doing nothing. Like RabbitMQ hibernating an idle connection process, a
//! protocol session may give both up: it hands its socket and a compact record of its state
//! (`T`) to the lot, and its task ends. ONE epoll instance watches every parked socket, and
//! that instance is registered with tokio once (an [`AsyncFd`] over the epoll descriptor), so
//! the lot costs one registration and one small task whatever the number of parked sockets.
//!
//! A parked connection is resumed (the `resume` function the lot was made with gets its socket
//! and record back, and starts a new task) when:
//! - its socket becomes readable or hangs up (epoll, level-triggered);
//! - the [`Waker`] from [`ParkingLot::waker`] is woken: the session registers it wherever its
//!   task's waker would be (its engine mailbox, its takeover and keep-alive signals);
//! - the shutdown token fires: every parked connection is resumed, and the lot takes no more.
//!
//! Only plain TCP sockets park (their descriptor can leave tokio and come back); TLS and
//! WebSocket connections keep their task.
//!
//! Races: a session registers the lot's waker first, then looks at what could have woken it,
//! then parks. A wake between the look and the park finds no parked record; the lot notes the
//! descriptor (`early`) and resumes the record as soon as it arrives. A waker left from an
//! earlier park can at worst resume a connection that had nothing to do: it parks again later.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};

use parking_lot::Mutex;
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Events taken from the epoll instance per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

/// What gives a resumed connection its task back: its socket and its parked record.
pub type Resume<T> = Box<dyn Fn(OwnedFd, T) + Send + Sync>;

/// Parked connections (records of type `T`, one per socket) and the one epoll instance that
/// watches them. Cheap to clone.
pub struct ParkingLot<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for ParkingLot<T> {
    fn clone(&self) -> Self {
        ParkingLot {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for ParkingLot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkingLot")
            .field("parked", &self.parked())
            .field("resumed", &self.resumed())
            .finish_non_exhaustive()
    }
}

struct Inner<T> {
    epoll: OwnedFd,
    state: Mutex<State<T>>,
    resume: Resume<T>,
    /// Connections resumed since the lot was made.
    resumed: AtomicU64,
}

struct State<T> {
    /// Parked records by descriptor number: descriptors are small and dense (the kernel hands
    /// out the lowest free one), so a vector indexed by them costs 16 bytes a socket where a
    /// hash map would cost two to three times that.
    slots: Vec<Option<(OwnedFd, T)>>,
    parked: usize,
    /// Descriptors whose waker fired while their record was on its way to the lot.
    early: HashSet<RawFd>,
    /// Shut down: nothing parks any more.
    closed: bool,
}

impl<T: Send + 'static> ParkingLot<T> {
    /// A new lot and its watcher task. Must run inside a tokio runtime. When `shutdown` fires,
    /// every parked connection is resumed and later parks are resumed at once; `hold` (a token
    /// of the tracker the connection tasks run in) is kept until the resumed tasks are spawned,
    /// so that a wait on that tracker cannot end in between.
    ///
    /// # Errors
    /// The epoll instance could not be created or registered with tokio.
    pub fn start(
        resume: Resume<T>,
        shutdown: CancellationToken,
        hold: Option<TaskTrackerToken>,
    ) -> io::Result<ParkingLot<T>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // `AsyncFd::new` is deprecated for types whose `as_raw_fd` could change or close the
        // descriptor under the reactor; an `OwnedFd` owned by the `AsyncFd` cannot, which is
        // the condition `AsyncFd::register` states (and that one is `unsafe`, which the
        // workspace forbids).
        #[allow(deprecated)]
        let watched = AsyncFd::new(epoll.try_clone()?)?;
        let inner = Arc::new(Inner {
            epoll,
            state: Mutex::new(State {
                slots: Vec::new(),
                parked: 0,
                early: HashSet::new(),
                closed: false,
            }),
            resume,
            resumed: AtomicU64::new(0),
        });
        tokio::spawn(watch(Arc::downgrade(&inner), watched, shutdown, hold));
        Ok(ParkingLot { inner })
    }

    /// Parks `record` with its socket `fd` until something concerns it (see the module
    /// comment). Resumes it at once when its waker already fired, the lot is shut down, or the
    /// socket cannot be watched.
    pub fn park(&self, fd: OwnedFd, record: T) {
        let raw = fd.as_raw_fd();
        let Ok(index) = usize::try_from(raw) else {
            return self.inner.resume_now(fd, record);
        };
        let mut st = self.inner.state.lock();
        if st.closed || st.early.remove(&raw) {
            drop(st);
            return self.inner.resume_now(fd, record);
        }
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        // Level-triggered: bytes that came before the socket was added report at once.
        if let Err(e) = epoll::add(
            &self.inner.epoll,
            &fd,
            epoll::EventData::new_u64(u64::from(raw.unsigned_abs())),
            flags,
        ) {
            drop(st);
            tracing::warn!(fd = raw, error = %e, "cannot park a connection");
            return self.inner.resume_now(fd, record);
        }
        if st.slots.len() <= index {
            st.slots.resize_with(index + 1, || None);
        }
        st.slots[index] = Some((fd, record));
        st.parked += 1;
    }

    /// The waker that resumes the connection parked (or about to be) with descriptor `fd`.
    pub fn waker(&self, fd: RawFd) -> Waker {
        Waker::from(Arc::new(Unpark {
            lot: Arc::downgrade(&self.inner),
            fd,
        }))
    }

    /// Resumes the connection parked with descriptor `fd`, if any.
    pub fn unpark(&self, fd: RawFd) {
        self.inner.unpark(fd);
    }
}

impl<T> ParkingLot<T> {
    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.inner.state.lock().parked
    }

    /// Connections resumed since the lot was made.
    pub fn resumed(&self) -> u64 {
        self.inner.resumed.load(Ordering::Relaxed)
    }
}

impl<T> Inner<T> {
    fn resume_now(&self, fd: OwnedFd, record: T) {
        self.resumed.fetch_add(1, Ordering::Relaxed);
        (self.resume)(fd, record);
    }

    fn unpark(&self, fd: RawFd) {
        let taken = {
            let mut st = self.state.lock();
            let slot = usize::try_from(fd)
                .ok()
                .and_then(|i| st.slots.get_mut(i))
                .and_then(Option::take);
            match slot {
                Some((sock, record)) => {
                    st.parked -= 1;
                    if let Err(e) = epoll::delete(&self.epoll, &sock) {
                        tracing::debug!(fd, error = %e, "epoll delete of a parked socket");
                    }
                    if st.parked == 0 {
                        // After a crowd left, give the slots back.
                        st.slots = Vec::new();
                    }
                    Some((sock, record))
                }
                None => {
                    if !st.closed {
                        st.early.insert(fd);
                    }
                    None
                }
            }
        };
        // Outside the lock: resuming spawns a task.
        if let Some((sock, record)) = taken {
            self.resume_now(sock, record);
        }
    }

    /// Shutdown: resumes every parked connection; nothing parks afterwards.
    fn unpark_all(&self) {
        let taken: Vec<(OwnedFd, T)> = {
            let mut st = self.state.lock();
            st.closed = true;
            st.early.clear();
            st.parked = 0;
            std::mem::take(&mut st.slots)
                .into_iter()
                .flatten()
                .collect()
        };
        for (sock, record) in taken {
            let _ = epoll::delete(&self.epoll, &sock);
            self.resume_now(sock, record);
        }
    }
}

/// The waker of one parked connection.
struct Unpark<T> {
    lot: Weak<Inner<T>>,
    fd: RawFd,
}

impl<T> Wake for Unpark<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(lot) = self.lot.upgrade() {
            lot.unpark(self.fd);
        }
    }
}

/// The lot's one task: resumes what the epoll instance reports, and everything at shutdown.
async fn watch<T>(
    lot: Weak<Inner<T>>,
    epoll: AsyncFd<OwnedFd>,
    shutdown: CancellationToken,
    hold: Option<TaskTrackerToken>,
) {
    loop {
        let ready = tokio::select! {
            () = shutdown.cancelled() => break,
            r = epoll.readable() => r,
        };
        let mut guard = match ready {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "parking lot: epoll instance failed");
                break;
            }
        };
        let Some(inner) = lot.upgrade() else {
            return;
        };
        match resume_ready(&inner, epoll.get_ref()) {
            // Drained: wait for the next edge.
            Ok(n) if n < EVENTS_PER_WAIT => guard.clear_ready(),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "parking lot: epoll_wait failed");
                break;
            }
        }
    }
    if let Some(inner) = lot.upgrade() {
        inner.unpark_all();
    }
    drop(hold);
}

/// Resumes what the epoll instance reports ready now (at most [`EVENTS_PER_WAIT`]); returns
/// how many.
fn resume_ready<T>(inner: &Inner<T>, epoll: &OwnedFd) -> rustix::io::Result<usize> {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS_PER_WAIT);
    let no_wait = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    epoll::wait(epoll, spare_capacity(&mut events), Some(&no_wait))?;
    for ev in &events {
        let data = ev.data;
        if let Ok(fd) = RawFd::try_from(data.u64()) {
            inner.unpark(fd);
        }
    }
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::mailbox::mailbox;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A connected pair: (client, the server side's descriptor).
    fn pair() -> (TcpStream, OwnedFd) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, OwnedFd::from(server))
    }

    fn lot(shutdown: CancellationToken) -> (ParkingLot<u32>, mpsc::Receiver<(OwnedFd, u32)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let lot = ParkingLot::start(
            Box::new(move |fd, record| tx.lock().send((fd, record)).unwrap()),
            shutdown,
            None,
        )
        .unwrap();
        (lot, rx)
    }

    async fn resumed(rx: &mpsc::Receiver<(OwnedFd, u32)>) -> (OwnedFd, u32) {
        for _ in 0..200 {
            if let Ok(r) = rx.try_recv() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not resumed");
    }

    #[tokio::test]
    async fn resumes_when_the_socket_becomes_readable_or_hangs_up() {
        let (lot, rx) = lot(CancellationToken::new());
        let (mut client, fd) = pair();
        let raw = fd.as_raw_fd();
        lot.park(fd, 7);
        assert_eq!(lot.parked(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "resumed with nothing to do");
        client.write_all(b"\xc0\x00").unwrap();
        let (fd, record) = resumed(&rx).await;
        assert_eq!((fd.as_raw_fd(), record), (raw, 7));
        assert_eq!((lot.parked(), lot.resumed()), (0, 1));

        // Parked again (the bytes were not read: level-triggered, resumed at once).
        lot.park(fd, 8);
        assert_eq!(resumed(&rx).await.1, 8);

        let (client, fd) = pair();
        lot.park(fd, 9);
        drop(client);
        assert_eq!(resumed(&rx).await.1, 9);
    }

    #[tokio::test]
    async fn resumes_on_a_mailbox_delivery() {
        let (lot, rx) = lot(CancellationToken::new());
        let (_client, fd) = pair();
        let (tx, mut mbox) = mailbox::<u32>();
        assert!(mbox.park_waker(&lot.waker(fd.as_raw_fd())));
        lot.park(fd, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        tx.send(5).unwrap();
        assert_eq!(resumed(&rx).await.1, 1);
        assert_eq!(mbox.try_recv(), Ok(5));
    }

    #[tokio::test]
    async fn a_wake_before_the_record_arrives_resumes_it_at_once() {
        let (lot, rx) = lot(CancellationToken::new());
        let (_client, fd) = pair();
        lot.waker(fd.as_raw_fd()).wake();
        lot.park(fd, 3);
        assert_eq!(resumed(&rx).await.1, 3);
        assert_eq!(lot.parked(), 0);
    }

    #[tokio::test]
    async fn shutdown_resumes_everything_and_nothing_parks_after() {
        let token = CancellationToken::new();
        let (lot, rx) = lot(token.clone());
        let (_c1, fd1) = pair();
        let (_c2, fd2) = pair();
        lot.park(fd1, 1);
        lot.park(fd2, 2);
        token.cancel();
        let mut got = [resumed(&rx).await.1, resumed(&rx).await.1];
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        let (_c3, fd3) = pair();
        lot.park(fd3, 3);
        assert_eq!(resumed(&rx).await.1, 3);
        assert_eq!(lot.parked(), 0);
    }
}
