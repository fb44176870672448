//! The HTTP side: the tiny_http worker pool and what it shares. A request is parsed into
//! a `route::Route`, answered by `respond` and written by `wire`; each is tested without
//! sockets.

mod respond;
mod route;
mod wire;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::Context;
use log::{error, info, warn};
use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{Method, Request};

pub use respond::{MAX_HEADER_BYTES, MAX_URL_BYTES, respond};
pub use route::{Route, RouteName};
pub use wire::{Reply, encode};

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::service::{Health, Shutdown};
use crate::store::Pool;

/// What the read path needs; shared by every worker.
pub struct State {
    pub cache: Arc<Cache>,
    pub pool: Arc<Pool>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// The listening server and its workers.
pub struct Server {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and starts `workers` threads answering requests.
    pub fn start(addr: SocketAddr, workers: usize, state: Arc<State>, shutdown: Shutdown) -> anyhow::Result<Server> {
        let listener = listen(addr).with_context(|| format!("listen on {addr}"))?;
        let addr = listener.local_addr().context("read listening address")?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, None).map_err(|e| anyhow::anyhow!("start HTTP server: {e}"))?,
        );
        let workers = (0..workers)
            .map(|i| {
                let (server, state, shutdown) = (server.clone(), state.clone(), shutdown.clone());
                thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || serve(&server, &state, &shutdown))
                    .context("spawn HTTP worker")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        info!("event=http_listening addr={addr} workers={}", workers.len());
        Ok(Server { server, addr, workers })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets each worker finish the request in hand, then joins them all.
    pub fn stop(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers {
            if worker.join().is_err() {
                error!("event=http_worker_panicked");
            }
        }
    }
}

/// A listening socket with TCP_NODELAY set, which the sockets it accepts inherit on
/// Linux. Without it, Nagle's algorithm holds back the second write of each response
/// until the client's delayed ACK, about 40 ms, on every keep-alive request.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(server: &tiny_http::Server, state: &State, shutdown: &Shutdown) {
    loop {
        match server.recv() {
            Ok(request) => handle(state, request),
            Err(_) if shutdown.is_signalled() => return,
            Err(e) => warn!("event=http_accept_failed error={e}"),
        }
    }
}

fn handle(state: &State, request: Request) {
    let started = std::time::Instant::now();
    let route = Route::parse(request.url());
    let reply = respond::respond_to(state, &request, &route);
    let route = route.name();
    let status = reply.status;
    let bytes = encode(&reply, *request.method() == Method::Head, &wire::http_date());
    // The whole response in one write: tiny_http would write each header in pieces,
    // each through a lock. Whether the connection stays open was settled when the
    // request was read (HTTP/1.0, `Connection: close`), as with `Request::respond`.
    let mut writer = request.into_writer();
    if let Err(e) = writer.write_all(&bytes).and_then(|()| writer.flush()) {
        // The client went away; nothing to do for it.
        log::debug!("event=http_write_failed error={e}");
    }
    drop(writer);
    state.metrics.count_request(route, status);
    state.metrics.http_seconds.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use tiny_http::TestRequest;

    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// The path and the query decide the route once, for the answer and for the count:
    /// `xuid` is not `uid`, so this is the index, served and counted as such.
    #[test]
    fn a_query_that_only_looks_like_a_lookup_is_served_and_counted_as_the_index() {
        let state = respond::tests::state();
        let request = || TestRequest::new().with_method(Method::Get).with_path("/?xuid=1").into();
        let reply = respond(&state, &request());
        assert_eq!((reply.status, reply.header("Location")), (200, None));
        assert!(std::str::from_utf8(&reply.body).unwrap().contains("<form"));
        handle(&state, request());
        let text = state.metrics.render(&state.cache);
        assert!(text.contains("orders_http_requests_total{route=\"index\",status=\"200\"} 1\n"), "{text}");
        assert!(!text.contains("route=\"lookup\""), "{text}");
    }
}
