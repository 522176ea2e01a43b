//! The account-db server: a blocking accept thread, and one handler per persistent
//! connection on a bounded `threadpool`, each serving [`DbRequest`] lines from a [`Store`].
//!
//! Shutdown (as in tiny-http): set a flag, wake the blocked `accept()` by connecting to
//! ourselves, then shut down the read half of every open connection so idle handlers see end
//! of stream. A handler in the middle of a request finishes it and writes its reply first.

use crate::accountdb::store::{Created, Store};
use crate::protocol::accountdb::{
    decode_line, encode_line, DbRequest, DbResponse, Greeting, MAX_LINE,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use threadpool::ThreadPool;

/// How the server listens and how much it takes on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Connections served at once; each holds one handler thread. Further ones are refused.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Longer than the client pool's
    /// idle timeout, so the pool retires idle connections before the server drops them.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
            max_connections: 256,
            idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Open connections, so shutdown can wake their handlers.
#[derive(Default)]
struct Registry {
    stopping: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

/// Removes a connection from the registry when its handler ends, however it ends.
struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.open.lock().remove(&self.id);
    }
}

/// A running account-db server.
pub struct AccountDb {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    accept_thread: Option<JoinHandle<()>>,
}

impl AccountDb {
    /// Bind `config.listen` and start serving `store`.
    pub fn spawn(config: Config, store: Arc<dyn Store>) -> io::Result<AccountDb> {
        let listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::default());
        let accept_thread = std::thread::Builder::new()
            .name("account-db-accept".into())
            .spawn({
                let registry = registry.clone();
                move || accept_loop(listener, config, store, &registry)
            })?;
        Ok(AccountDb {
            local_addr,
            registry,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let requests in flight finish, close every connection, and wait.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.registry.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept(); if this fails the listener is already gone.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for AccountDb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    config: Config,
    store: Arc<dyn Store>,
    registry: &Arc<Registry>,
) {
    let pool = ThreadPool::with_name("account-db-conn".into(), config.max_connections.max(1));
    for stream in listener.incoming() {
        if registry.stopping.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "account-db accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if registry.open.lock().len() >= config.max_connections {
            tracing::warn!(?peer, "account-db refused a connection: at max connections");
            let refusal = DbResponse::Error {
                message: "too many connections".into(),
            };
            let _ = stream.write_all(&encode_line(&refusal));
            continue;
        }
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => registry.open.lock().insert(id, clone),
            Err(e) => {
                tracing::warn!(error = %e, "account-db could not track a connection");
                continue;
            }
        };
        let (store, registry, idle) = (store.clone(), registry.clone(), config.idle_timeout);
        pool.execute(move || {
            let _registered = Registered {
                registry: &registry,
                id,
            };
            if let Err(e) = serve(stream, &*store, idle) {
                tracing::debug!(?peer, error = %e, "account-db connection ended");
            }
        });
    }
    // Wake every idle handler: its next read sees end of stream.
    for stream in registry.open.lock().values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    pool.join();
}

/// Serve one connection until the peer closes it, it idles out, or IO fails.
fn serve(stream: TcpStream, store: &dyn Store, idle_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(idle_timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(&encode_line(&Greeting::current()))?;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if n < MAX_LINE {
                return Ok(()); // the peer closed mid-line: nobody to answer
            }
            let refusal = DbResponse::Error {
                message: format!("request line longer than {MAX_LINE} bytes"),
            };
            return writer.write_all(&encode_line(&refusal));
        }
        let response = match decode_line::<DbRequest>(&line) {
            Ok(request) => execute(store, request),
            Err(e) => DbResponse::Error {
                message: format!("bad request: {e}"),
            },
        };
        writer.write_all(&encode_line(&response))?;
    }
}

/// Run one request against the store.
fn execute(store: &dyn Store, request: DbRequest) -> DbResponse {
    let result = match request {
        DbRequest::Ping => store.ping().map(|()| DbResponse::Pong),
        DbRequest::Find { username } => store.find(&username).map(|found| match found {
            Some(account) => DbResponse::Found { account },
            None => DbResponse::NotFound,
        }),
        DbRequest::Create { account } => store.create(&account).map(|created| match created {
            Created::New => DbResponse::Created,
            Created::Exists => DbResponse::Exists,
        }),
    };
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "account store request failed");
        DbResponse::Error {
            message: e.to_string(),
        }
    })
}
