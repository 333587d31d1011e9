//! Process signals as values: a cancellation token for "stop now, gracefully" and a counter that
//! ticks on every "reload your settings".

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a running service listens to. Clones share the same state.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Cancelled once, when the service must stop accepting work and drain.
    pub shutdown: CancellationToken,
    reload_tx: watch::Sender<u64>,
}

impl Signals {
    /// Signals that only change when told to (by tests, or by [`Signals::listen_os`]).
    pub fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            reload_tx: watch::channel(0).0,
        }
    }

    /// Starts listening for the operating system's signals: SIGTERM and SIGINT cancel
    /// [`Signals::shutdown`]; SIGHUP ticks the reload counter. Must be called within a Tokio runtime.
    pub fn listen_os(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {
                        tracing::info!(signal = "SIGTERM", "shutting down gracefully");
                        this.shutdown.cancel();
                    }
                    _ = int.recv() => {
                        tracing::info!(signal = "SIGINT", "shutting down gracefully");
                        this.shutdown.cancel();
                    }
                    _ = hup.recv() => {
                        tracing::info!(signal = "SIGHUP", "reloading");
                        this.trigger_reload();
                    }
                }
            }
        });
        Ok(())
    }

    /// Asks the service to reload what it can reload.
    pub fn trigger_reload(&self) {
        self.reload_tx.send_modify(|n| *n += 1);
    }

    /// A receiver that changes on every reload request.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reload_tx.subscribe()
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}
