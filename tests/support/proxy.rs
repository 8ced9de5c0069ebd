//! A TCP proxy on 127.0.0.1 in front of a server, to provoke network faults: every connection
//! reset at once, or nothing forwarded for a while (a stalled network), or both.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP proxy on 127.0.0.1 in front of a server: pgtransit connects to the servers through one
/// each (the writer and the slot monitor do not), so the harness can reset its connections
/// ([`Proxy::drop_all`]) or stop forwarding for a while ([`Proxy::freeze`]), as a flaky network
/// would. The server's port stays the same across crashes, so the proxy outlives them (while the
/// server is down, a new connection is accepted and closed at once).
pub struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

struct ProxyShared {
    upstream: u16,
    stop: AtomicBool,
    /// Nothing is forwarded in either direction while set (new connections wait too).
    frozen: AtomicBool,
    conns: Mutex<Vec<Arc<ProxyConn>>>,
    /// Connections accepted so far.
    accepted: AtomicUsize,
}

/// One proxied connection: the client's side and the server's.
struct ProxyConn {
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    dead: AtomicBool,
}

impl ProxyConn {
    /// Closes both sides (both pumps then end).
    fn close(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        let _ = self.server.shutdown(std::net::Shutdown::Both);
    }
}

impl ProxyShared {
    /// Waits while the proxy is frozen (unless this connection is closed meanwhile).
    fn wait_thawed(&self, conn: &ProxyConn) {
        while self.frozen.load(Ordering::SeqCst) && !conn.dead.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Copies one direction until either side closes, then closes both.
    fn pump(&self, conn: &ProxyConn, to_server: bool) {
        use std::io::{Read, Write};
        let (mut from, mut to) =
            if to_server { (&conn.client, &conn.server) } else { (&conn.server, &conn.client) };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            self.wait_thawed(conn);
            if conn.dead.load(Ordering::SeqCst) {
                break;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read during a freeze: held until it ends.
            self.wait_thawed(conn);
            if conn.dead.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        conn.close();
    }
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            upstream,
            stop: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            conns: Mutex::new(vec![]),
            accepted: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                // The server down (crashed): as close to a refused connection as a proxy gets.
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", sh.upstream)) else {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Both pumps read and write through `&TcpStream`: one pair of sockets, one flag.
                let conn = Arc::new(ProxyConn { client, server, dead: AtomicBool::new(false) });
                {
                    let mut conns = sh.conns.lock().unwrap();
                    conns.retain(|c| !c.dead.load(Ordering::SeqCst));
                    conns.push(conn.clone());
                }
                for to_server in [true, false] {
                    let (sh, conn) = (sh.clone(), conn.clone());
                    std::thread::spawn(move || sh.pump(&conn, to_server));
                }
            }
        });
        Proxy { port, shared, accept: Some(accept) }
    }

    /// `postgresql://postgres@127.0.0.1:PROXY/dbname`, as `LocalCluster::url` but through here.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.shared.conns.lock().unwrap().iter().filter(|c| !c.dead.load(Ordering::SeqCst)).count()
    }

    /// Closes every current connection, both sides at once (a network reset). Returns how many.
    pub fn drop_all(&self) -> usize {
        let conns: Vec<Arc<ProxyConn>> = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        let n = conns.iter().filter(|c| !c.dead.load(Ordering::SeqCst)).count();
        for c in conns {
            c.close();
        }
        n
    }

    /// Forwards nothing for `d` (connections stay open, new ones wait), then resumes. Returns
    /// how many connections were open when it began. `watch` runs every 100 ms meanwhile.
    pub fn freeze(&self, d: Duration, watch: impl FnMut(Duration)) -> usize {
        let n = self.live();
        self.frozen_for(d, watch);
        self.shared.frozen.store(false, Ordering::SeqCst);
        n
    }

    /// Forwards nothing for `d`, then closes every connection (a partition that ends with dead
    /// connections). Returns how many were closed.
    pub fn freeze_then_drop(&self, d: Duration, watch: impl FnMut(Duration)) -> usize {
        self.frozen_for(d, watch);
        let n = self.drop_all();
        self.shared.frozen.store(false, Ordering::SeqCst);
        n
    }

    fn frozen_for(&self, d: Duration, mut watch: impl FnMut(Duration)) {
        self.shared.frozen.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while start.elapsed() < d {
            std::thread::sleep(Duration::from_millis(100).min(d.saturating_sub(start.elapsed())));
            watch(start.elapsed());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.frozen.store(false, Ordering::SeqCst);
        // Wakes the accept loop up.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.drop_all();
    }
}
