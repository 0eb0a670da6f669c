//! How every HTTP server we run takes its connections (`wasi:http/proxy` components, Spin apps,
//! Spin 1 modules, slight apps), so that clients that never finish a request cannot starve the
//! ones that do (issue 26: 1,100-1,500 connections that sent nothing used to leave normal
//! requests unanswered).
//!
//! The policy:
//! - **Header timeout.** A connection that has not sent a whole request header within
//!   [`HttpServe::header_timeout`] of opening, or of its last response, is closed: hyper's
//!   `header_read_timeout`, on a [`TokioTimer`]. The same timer bounds an idle keep-alive
//!   connection.
//! - **A cap per server**: [`HttpServe::max_connections`], and at most half the process's
//!   descriptor limit (`RLIMIT_NOFILE`; containerd gives containers 1024), so that connections
//!   never take the descriptors guests' files, sockets and stores need, nor those of the other
//!   containers of a pod sharing the process. A connection accepted at the cap closes the one
//!   that has been idle longest, idle meaning waiting for a request header (a fresh connection
//!   once read from, or a keep-alive one between requests). A connection not read from yet, or
//!   with a request in flight (from its header until its response's last byte is written), is
//!   never closed to make room; when none is idle, the server accepts nothing until one is, and
//!   new connections wait in the kernel's backlog.
//!
//!   Why the longest idle loses: a health probe (kubelet's opens a connection and sends a
//!   whole `GET`) is the newest connection, and has its request in flight as soon as it is
//!   read, so a flood of connections that send nothing, or half a header, only ever evicts
//!   itself.
//! - **An accept that fails** (`EMFILE`: the process's descriptors are in use elsewhere) closes
//!   the longest idle connection too, and the next accept waits 10 ms, so the loop never spins.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::Notify;

use wasmcell_workload::HttpServe;

/// How long in-flight requests may take to finish after SIGTERM. Below Docker's and
/// Kubernetes' default grace periods (10 s, 30 s), so a server ends by itself with 0.
const DRAIN: Duration = Duration::from_secs(5);

/// How long the accept loop waits after a failed accept before the next.
const AFTER_FAILED_ACCEPT: Duration = Duration::from_millis(10);

/// A server's connections, served on its threads' runtimes under the policy above.
pub struct Connections {
    builder: hyper::server::conn::http1::Builder,
    slots: Arc<Slots>,
    graceful: GracefulShutdown,
    runtimes: Vec<tokio::runtime::Handle>,
    dealt: usize,
}

impl Connections {
    /// Connections served as `http` says, dealt in turn to `runtimes`.
    pub fn new(http: &HttpServe, runtimes: Vec<tokio::runtime::Handle>) -> Connections {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(http.header_timeout);
        let cap = http.max_connections.min(descriptor_limit() / 2).max(1);
        Connections {
            builder,
            slots: Arc::new(Slots::new(cap)),
            graceful: GracefulShutdown::new(),
            runtimes,
            dealt: 0,
        }
    }

    /// Serves an accepted connection with `respond`, once there is room for it (see the
    /// module's docs); or, for a failed accept, makes room and waits a moment.
    pub async fn serve<F, R, B>(
        &mut self,
        accepted: std::io::Result<tokio::net::TcpStream>,
        respond: F,
    ) where
        F: Fn(Request<Incoming>) -> R + Send + 'static,
        R: Future<Output = Response<B>> + Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = match accepted {
            Ok(stream) => stream,
            // Out of descriptors, or a connection reset before it was accepted: the listener
            // itself is fine.
            Err(error) => {
                tracing::warn!("accept: {error}");
                self.slots.evict_longest_idle();
                tokio::time::sleep(AFTER_FAILED_ACCEPT).await;
                return;
            }
        };
        let lease = Arc::new(self.slots.admit().await);
        let (builder, watcher) = (self.builder.clone(), self.graceful.watcher());
        let runtime = &self.runtimes[self.dealt % self.runtimes.len()];
        self.dealt += 1;
        let _ = stream.set_nodelay(true);
        // Registered anew with the reactor of the runtime that serves it.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        runtime.spawn(async move {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let in_flight = lease.clone();
            let service = service_fn(move |request| {
                let busy = in_flight.busy();
                let response = respond(request);
                async move {
                    let response = response.await.map(|body| Tracked { body, _busy: busy });
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = watcher.watch(connection);
            tokio::pin!(connection);
            // The first poll reads what the client has sent: a whole request header makes the
            // connection busy before it can be evicted.
            let first = std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx)));
            if first.await.is_ready() {
                return;
            }
            lease.read();
            // Evicted: dropping the connection closes it.
            tokio::select! {
                _ = connection => {}
                () = lease.evicted() => {}
            }
        });
    }

    /// Lets the connections finish their requests in flight (bounded by [`DRAIN`]).
    pub async fn drain(self) {
        let _ = tokio::time::timeout(DRAIN, self.graceful.shutdown()).await;
    }
}

/// This process's soft limit on open descriptors.
fn descriptor_limit() -> usize {
    // SAFETY: rlimit is plain data; all zeroes is a valid value.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes the struct it is given, and fails only for a bad resource.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// The connections of one server, shared by the threads serving them.
struct Slots {
    table: Mutex<Table<Arc<Notify>>>,
    /// Signalled when a connection leaves or goes idle: the accept loop may be waiting for it.
    room: Notify,
}

impl Slots {
    fn new(cap: usize) -> Slots {
        Slots {
            table: Mutex::new(Table::new(cap)),
            room: Notify::new(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table<Arc<Notify>>> {
        // A panic while holding it left a consistent table: every change is one call.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection: at once while there is room or an idle connection to
    /// evict, else once there is.
    async fn admit(self: &Arc<Slots>) -> Lease {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the table is read, so a slot freed meanwhile wakes it.
            room.as_mut().enable();
            let evicted = Arc::new(Notify::new());
            let admitted = self.table().admit(evicted.clone());
            if let Some((id, longest_idle)) = admitted {
                if let Some(longest_idle) = longest_idle {
                    longest_idle.notify_one();
                }
                return Lease {
                    slots: self.clone(),
                    id,
                    evicted,
                };
            }
            room.await;
        }
    }

    fn evict_longest_idle(&self) {
        if let Some(evicted) = self.table().evict_longest_idle() {
            evicted.notify_one();
        }
    }
}

/// A connection's place among its server's.
struct Lease {
    slots: Arc<Slots>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Lease {
    /// Marks the connection as having a request in flight until the guard is dropped.
    fn busy(&self) -> Busy {
        self.slots.table().busy(self.id);
        Busy {
            slots: self.slots.clone(),
            id: self.id,
        }
    }

    /// Marks the connection as read from once (see [`State::New`]).
    fn read(&self) {
        self.slots.table().read(self.id);
        self.slots.room.notify_one();
    }

    /// Resolves when the connection was evicted to make room for another.
    async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slots.table().leave(self.id);
        self.slots.room.notify_one();
    }
}

/// A request in flight on a connection; the connection is idle again once it is dropped.
struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slots.table().idle(self.id);
        self.slots.room.notify_one();
    }
}

/// A response body holding its request's [`Busy`]: hyper drops it once its last byte is
/// written (or the connection ends), which is when the request is no longer in flight.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Which connections a server holds, and which is idle longest: the bookkeeping of the policy,
/// with `T` what it takes to close one.
struct Table<T> {
    cap: usize,
    /// Counts up: the next connection's id, and the order connections became idle in.
    clock: u64,
    live: HashMap<u64, Live<T>>,
    /// `(idle since, id)` of each idle connection, longest idle first.
    idle: BTreeSet<(u64, u64)>,
}

struct Live<T> {
    state: State,
    close: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Accepted, and not read from yet: never evicted, so that a request sent with the
    /// connection (a probe's) is read before the connection can lose its place, however many
    /// connections a burst brings in meanwhile.
    New,
    /// Waiting for a request header, since this tick of the clock.
    Idle(u64),
    /// A request in flight.
    Busy,
}

impl<T> Table<T> {
    fn new(cap: usize) -> Table<T> {
        Table {
            cap,
            clock: 0,
            live: HashMap::new(),
            idle: BTreeSet::new(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Takes a new connection if there is room for it, or an idle connection to evict for it:
    /// its id, and the evicted connection's `close`. `None` when no connection is idle.
    fn admit(&mut self, close: T) -> Option<(u64, Option<T>)> {
        let evicted = match self.live.len() < self.cap {
            true => None,
            false => Some(self.evict_longest_idle()?),
        };
        let id = self.tick();
        let state = State::New;
        self.live.insert(id, Live { state, close });
        Some((id, evicted))
    }

    /// Forgets the connection idle longest, and returns its `close`.
    fn evict_longest_idle(&mut self) -> Option<T> {
        let (_, id) = self.idle.pop_first()?;
        self.live.remove(&id).map(|live| live.close)
    }

    /// Moves a connection from `from` (any state if `None`) to `to`.
    fn set(&mut self, id: u64, from: Option<State>, to: State) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if from.is_some_and(|from| from != live.state) {
            return;
        }
        if let State::Idle(since) = live.state {
            self.idle.remove(&(since, id));
        }
        if let State::Idle(since) = to {
            self.idle.insert((since, id));
        }
        live.state = to;
    }

    /// The connection has been read from once: from now on it may be evicted while idle.
    fn read(&mut self, id: u64) {
        let now = self.tick();
        self.set(id, Some(State::New), State::Idle(now));
    }

    fn busy(&mut self, id: u64) {
        self.set(id, None, State::Busy);
    }

    fn idle(&mut self, id: u64) {
        let now = self.tick();
        self.set(id, Some(State::Busy), State::Idle(now));
    }

    fn leave(&mut self, id: u64) {
        self.set(id, None, State::New);
        self.live.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A server of `ok` under `http`'s policy on a loopback port; its address.
    async fn serve_ok(http: HttpServe) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut connections = Connections::new(&http, vec![tokio::runtime::Handle::current()]);
            loop {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                let ok = |_| async { Response::new(Full::new(Bytes::from_static(b"ok"))) };
                connections.serve(accepted, ok).await;
            }
        });
        addr
    }

    /// Sends a whole GET on `client` and reads its response, up to its `ok` body.
    async fn get(client: &mut TcpStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\nok") {
            let mut buf = [0; 1024];
            let read = client.read(&mut buf).await.unwrap();
            assert_ne!(read, 0, "closed mid-response: {response:?}");
            response.extend_from_slice(&buf[..read]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    }

    /// Whether the server closed `client` within `within`.
    async fn closed(client: &mut TcpStream, within: Duration) -> bool {
        let read = tokio::time::timeout(within, client.read(&mut [0; 64])).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn a_keep_alive_connection_idle_past_the_header_timeout_is_closed() {
        // hyper runs its header timer from the end of a response too, not only from the
        // connection's start: this is the server's only bound on an idle keep-alive connection.
        let header_timeout = Duration::from_millis(300);
        let addr = serve_ok(HttpServe {
            header_timeout,
            ..HttpServe::default()
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        get(&mut client).await;
        let idle = std::time::Instant::now();
        assert!(closed(&mut client, Duration::from_secs(10)).await);
        assert!(idle.elapsed() >= header_timeout - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_request_at_the_cap_is_answered_and_the_longest_idle_connection_closed() {
        let addr = serve_ok(HttpServe {
            max_connections: 2,
            ..HttpServe::default()
        })
        .await;
        let mut oldest = TcpStream::connect(addr).await.unwrap();
        let mut newer = TcpStream::connect(addr).await.unwrap();
        newer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut probe = TcpStream::connect(addr).await.unwrap();
        get(&mut probe).await;
        assert!(closed(&mut oldest, Duration::from_secs(5)).await);
        assert!(!closed(&mut newer, Duration::from_millis(200)).await);
    }

    /// Admits a connection and reads from it.
    fn admit_read<T: std::fmt::Debug>(table: &mut Table<T>, close: T) -> (u64, Option<T>) {
        let (id, evicted) = table.admit(close).unwrap();
        table.read(id);
        (id, evicted)
    }

    #[test]
    fn a_connection_at_the_cap_evicts_the_one_idle_longest() {
        let mut table = Table::new(3);
        let ids = ["a", "b", "c"].map(|name| {
            let (id, evicted) = admit_read(&mut table, name);
            assert_eq!(evicted, None, "room for three");
            id
        });
        // `a` takes a request and finishes it: it is now idle more recently than `b` and `c`.
        table.busy(ids[0]);
        table.idle(ids[0]);
        assert_eq!(admit_read(&mut table, "d").1, Some("b"));
        assert_eq!(admit_read(&mut table, "e").1, Some("c"));
        assert_eq!(admit_read(&mut table, "f").1, Some("a"));
        assert_eq!(table.live.len(), 3);
    }

    #[test]
    fn a_connection_with_a_request_in_flight_is_never_evicted() {
        let mut table = Table::new(2);
        let (probe, _) = admit_read(&mut table, "probe");
        table.busy(probe);
        let (idle, _) = admit_read(&mut table, "idle");
        let (new, evicted) = admit_read(&mut table, "new");
        assert_eq!(evicted, Some("idle"));
        table.busy(new);
        assert_eq!(table.admit("waits"), None, "all in flight: no room");
        table.leave(idle);
        assert_eq!(
            table.admit("waits"),
            None,
            "an evicted connection leaving frees nothing"
        );
        table.idle(probe);
        assert_eq!(table.admit("waits").unwrap().1, Some("probe"));
    }

    #[test]
    fn a_connection_not_read_from_yet_is_never_evicted() {
        // A burst of connections accepted before any is read: the first, a probe whose request
        // is waiting to be read, keeps its place however many come after it.
        let mut table = Table::new(2);
        let (probe, _) = table.admit("probe").unwrap();
        let (flood, _) = admit_read(&mut table, "flood");
        assert_eq!(table.admit("burst").unwrap().1, Some("flood"));
        assert_eq!(table.admit("more"), None, "nobody read from yet: no room");
        table.read(probe);
        table.busy(probe);
        table.read(flood);
        assert_eq!(
            table.admit("more"),
            None,
            "an evicted connection stays evicted"
        );
    }

    #[test]
    fn a_connection_that_leaves_makes_room() {
        let mut table = Table::new(1);
        let (first, _) = admit_read(&mut table, 1);
        table.busy(first);
        assert_eq!(table.admit(2), None);
        table.leave(first);
        assert_eq!(admit_read(&mut table, 2).1, None);
        assert!(table.idle.len() == 1 && table.live.len() == 1);
    }
}
