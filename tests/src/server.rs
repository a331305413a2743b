//! A tokio TCP server on a thread of this process inside a network namespace: it binds there, then runs its
//! accept loop until dropped (runtime shut down, thread joined). For backends whose behaviour a test or the
//! bench controls or counts.
use std::future::Future;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::Netns;

pub struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Binds with `listen` inside `ns` and runs `serve` on the listener, on a runtime of `workers` threads, until
    /// dropped. Fails, naming `what`, when binding fails or the server does not start within 5 s.
    pub fn start<L, S, F>(
        ns: &Netns,
        what: &str,
        workers: usize,
        listen: L,
        serve: S,
    ) -> Result<Self>
    where
        L: FnOnce() -> std::io::Result<std::net::TcpListener> + Send + 'static,
        S: FnOnce(TcpListener) -> F + Send + 'static,
        F: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        // Runtime threads are created from this thread, which joined the namespace: they are in it too.
        let thread = ns.spawn_thread(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = match listen().and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                }) {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                tokio::select! {
                    _ = serve(listener) => {}
                    _ = stop_rx => {}
                }
                // Dropping the runtime cancels the connections still open.
            });
        })?;
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .with_context(|| format!("{what} did not start"))?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("binding {what}"))?;
        Ok(ServerThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
