//! A TCP proxy in front of a real dependency, which a test can cut off and restore: the service
//! under test sees exactly what it would see if PostgreSQL or Redis went away and came back.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    port: u16,
    /// Where connections go; empty until known (see [`TcpProxy::start_deferred`]).
    upstream: Arc<std::sync::Mutex<String>>,
    cut: Arc<AtomicBool>,
    /// Replaced on every cut; cancelling it drops the connections open at that moment.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> std::io::Result<Self> {
        Self::listen(upstream).await
    }

    /// Listens before the upstream exists (a service that must be started after its caller is
    /// told where it is); connections are refused until [`TcpProxy::set_upstream`].
    pub async fn start_deferred() -> std::io::Result<Self> {
        Self::listen(String::new()).await
    }

    /// Where connections go from now on (`host:port`).
    pub fn set_upstream(&self, upstream: String) {
        *self.upstream.lock().expect("not poisoned") = upstream;
    }

    async fn listen(upstream: String) -> std::io::Result<Self> {
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (cut2, generation2, stop2, upstream2) = (
            cut.clone(),
            generation.clone(),
            stop.clone(),
            upstream.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop2.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = generation2.lock().expect("not poisoned").clone();
                let upstream = upstream2.lock().expect("not poisoned").clone();
                if upstream.is_empty() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            upstream,
            cut,
            generation,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection and refuses new ones, as if the dependency had stopped.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut token = self.generation.lock().expect("not poisoned");
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Forwards connections again, as if the dependency had come back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().expect("not poisoned").cancel();
    }
}
