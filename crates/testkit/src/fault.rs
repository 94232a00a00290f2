//! A TCP fault proxy between a process and Redis: the network faults a deployment meets, on demand.
//!
//! Each process under test gets its own proxy (`redis://127.0.0.1:<proxy port>`), so one worker can be cut off
//! while its peers and TaskService still reach Redis. The faults act on bytes in flight, as a network does:
//!
//! - [`FaultProxy::partition`] holds every byte in both directions (and new connections) until
//!   [`FaultProxy::heal`]: requests sent meanwhile reach Redis late, after their caller timed out, exactly as
//!   TCP retransmission delivers them after a real partition heals;
//! - [`FaultProxy::lose_replies`] lets requests through but throws the replies away and resets the client's
//!   connection: the script ran, its caller never learns what it did; [`FaultProxy::lose_reply_to`] does
//!   that once, to the first request containing some bytes (a script's SHA, a key);
//! - [`FaultProxy::set_latency`] delays every chunk in both directions;
//! - [`FaultProxy::reset`] closes every open connection at once (a load balancer restart);
//! - [`FaultProxy::redirect`] points new connections at another Redis and resets the open ones, the way a
//!   Kubernetes Service or a Sentinel-aware address moves to a promoted replica after a failover.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The faults in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    partitioned: bool,
    lose_replies: bool,
    latency: Duration,
}

#[derive(Debug)]
struct Shared {
    upstream: Mutex<SocketAddr>,
    faults: watch::Sender<Faults>,
    /// Cancelled (and replaced) by [`FaultProxy::reset`]: every connection opened before watches the old one.
    generation: Mutex<CancellationToken>,
    /// [`FaultProxy::lose_reply_to`]'s bytes, until a request carries them.
    needle: Mutex<Option<Vec<u8>>>,
}

impl Shared {
    fn generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A proxy on `127.0.0.1`, forwarding to one Redis; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free port and forwards to `upstream`.
    ///
    /// # Panics
    /// When no port on 127.0.0.1 can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            faults: watch::Sender::new(Faults::default()),
            generation: Mutex::new(CancellationToken::new()),
            needle: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&shared), stop.clone()));
        Self { addr, shared, stop }
    }

    /// A proxy in front of a Redis listening on `127.0.0.1:port`.
    pub async fn to_port(port: u16) -> Self {
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Redis URL that goes through this proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn update(&self, f: impl FnOnce(&mut Faults)) {
        self.shared.faults.send_modify(f);
    }

    /// Cuts the link: nothing moves either way until [`Self::heal`]; bytes sent meanwhile are held, not lost.
    pub fn partition(&self) {
        self.update(|f| f.partitioned = true);
    }

    /// Restores the link; held bytes flow on.
    pub fn heal(&self) {
        self.update(|f| f.partitioned = false);
    }

    /// While on, requests reach Redis but every reply is discarded and the connection carrying it reset.
    pub fn lose_replies(&self, on: bool) {
        self.update(|f| f.lose_replies = on);
    }

    /// Once: the first request containing `needle` reaches Redis, and its reply is lost with its connection.
    pub fn lose_reply_to(&self, needle: &[u8]) {
        *self
            .shared
            .needle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(needle.to_vec());
    }

    /// Delays every chunk, both ways.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|f| f.latency = latency);
    }

    /// Closes every open connection now; new ones are accepted as before.
    pub fn reset(&self) {
        let mut generation = self
            .shared
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Sends new connections to `upstream` and resets the open ones.
    pub fn redirect(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = upstream;
        self.reset();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => match c {
                Ok((c, _)) => c,
                Err(_) => continue,
            },
        };
        tokio::spawn(connection(client, Arc::clone(&shared)));
    }
}

/// Waits while the link is cut; `false` when the connection was reset meanwhile.
async fn pass(faults: &mut watch::Receiver<Faults>, reset: &CancellationToken) -> bool {
    tokio::select! {
        _ = reset.cancelled() => false,
        r = faults.wait_for(|f| !f.partitioned) => r.is_ok(),
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let reset = shared.generation();
    let mut faults = shared.faults.subscribe();
    // A new connection during a partition is accepted (the SYN got through before) but goes nowhere yet.
    if !pass(&mut faults, &reset).await {
        return;
    }
    let upstream = *shared
        .upstream
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let armed = Arc::new(AtomicBool::new(false));
    let requests = pump(
        client_read,
        server_write,
        Side::Requests,
        Arc::clone(&shared),
        Arc::clone(&armed),
        reset.clone(),
    );
    let replies = pump(
        server_read,
        client_write,
        Side::Replies,
        Arc::clone(&shared),
        armed,
        reset.clone(),
    );
    // Either side ending ends the connection: dropping both halves closes both sockets.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}

/// Which way a pump moves bytes. Both share `armed`, set when a request carried
/// [`FaultProxy::lose_reply_to`]'s needle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Requests,
    Replies,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    side: Side,
    shared: Arc<Shared>,
    armed: Arc<AtomicBool>,
    reset: CancellationToken,
) {
    let mut faults = shared.faults.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = reset.cancelled() => return,
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if !pass(&mut faults, &reset).await {
            return;
        }
        let now = *faults.borrow();
        if side == Side::Requests {
            let mut needle = shared.needle.lock().unwrap_or_else(PoisonError::into_inner);
            if needle
                .as_deref()
                .is_some_and(|needle| buf[..n].windows(needle.len()).any(|w| w == needle))
            {
                *needle = None;
                armed.store(true, Ordering::SeqCst);
            }
        }
        if side == Side::Replies && (now.lose_replies || armed.load(Ordering::SeqCst)) {
            // Give Redis a moment with what it was sent, then reset, not FIN: the client must see the
            // connection fail, as after a dropped route.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = to.as_ref().set_zero_linger();
            return;
        }
        if !now.latency.is_zero() {
            tokio::select! {
                _ = reset.cancelled() => return,
                () = tokio::time::sleep(now.latency) => {}
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server standing in for Redis: whatever arrives goes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_holds_during_a_partition_and_delivers_after() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );
        proxy.partition();
        assert_eq!(round_trip(&mut s, Duration::from_millis(300)).await, None);
        proxy.heal();
        // The held request and its reply arrive once the link is back.
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn lost_replies_reset_the_connection_and_reset_closes_every_connection() {
        let proxy = FaultProxy::start(echo().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.lose_replies(true);
        assert_eq!(round_trip(&mut s, Duration::from_secs(5)).await, None);
        proxy.lose_replies(false);
        let mut t = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut t, Duration::from_secs(5)).await.is_some());
        proxy.reset();
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }

    #[tokio::test]
    async fn a_reply_to_marked_bytes_is_lost_once() {
        let proxy = FaultProxy::start(echo().await).await;
        proxy.lose_reply_to(b"ping");
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, Duration::from_secs(5)).await, None);
        let mut t = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut t, Duration::from_secs(5)).await.is_some());
    }

    #[tokio::test]
    async fn redirect_moves_new_connections() {
        let a = echo().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = listener.local_addr().unwrap();
        let proxy = FaultProxy::start(a).await;
        proxy.redirect(b);
        let _client = TcpStream::connect(proxy.addr()).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(
            accepted.is_ok(),
            "the connection did not reach the new upstream"
        );
    }
}
