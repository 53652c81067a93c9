//! The HTTP front: one thread per core, each with its own single-threaded tokio
//! runtime, accepting on the same listening socket.
//!
//! Why not one multi-threaded runtime: on it, a request that reads its body wakes
//! its own task while the task runs (the body chunk arrives from the connection the
//! task itself is driving), and tokio treats that as a yield, pushes the task to the
//! back of the queue and wakes a parked worker to steal it. Measured with
//! `perf record -e sched:sched_waking` under wrk: about 1.5 extra context switches
//! per `/v1/infer` on two cores, and the task ping-pongs between the workers (the
//! request path ratios in BENCHMARKS.md). Here a connection lives its whole life on
//! the thread that accepted it, so its requests touch no other core's scheduler.
//!
//! Each thread accepts on a socket of its own, bound to the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the threads by their
//! addresses. Watching one shared socket instead let whichever thread woke first
//! take a whole burst of connections (all 64 of wrk's, measured), leaving the other
//! core idle. If the option cannot be set, the threads share the one socket.
//!
//! Shutdown: `stop` asks every thread to stop accepting and drain (axum's graceful
//! shutdown); `abort` ends a thread that did not drain in time, dropping its
//! connections.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The serving threads, started by [`Front::start`].
pub(super) struct Front {
    done: Vec<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
    stop: watch::Sender<bool>,
    abort: watch::Sender<bool>,
}

/// How many serving threads `configured` asks for (0: one per core).
pub(super) fn threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Front {
    /// Starts `threads` threads serving `router` on `listener`.
    pub(super) fn start(
        listener: TcpListener,
        router: Router,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let addr = listener
            .local_addr()
            .context("the listener has no address")?;
        let listener = listener
            .into_std()
            .context("cannot take the listening socket")?;
        let reuse_port = socket2::SockRef::from(&listener)
            .set_reuse_port(true)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "SO_REUSEPORT unavailable; the HTTP threads share one socket")
            })
            .is_ok();
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let mut done = Vec::with_capacity(threads);
        for i in 0..threads {
            let socket = match i {
                0 => listener.try_clone(),
                _ if reuse_port => own_socket(addr).or_else(|e| {
                    tracing::warn!(error = %e, "cannot bind a second socket; sharing the first");
                    listener.try_clone()
                }),
                _ => listener.try_clone(),
            }
            .context("cannot share the listening socket")?;
            let router = router.clone();
            let (stop_rx, abort_rx) = (stop_rx.clone(), abort_rx.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    let served = serve_one(socket, router, stop_rx, abort_rx);
                    let _ = tx.send(served);
                })
                .context("cannot start an HTTP thread")?;
            done.push(rx);
        }
        Ok(Self { done, stop, abort })
    }

    /// Stops accepting and lets every thread drain its connections.
    pub(super) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Ends the threads that are still draining.
    pub(super) fn abort(&self) {
        let _ = self.abort.send(true);
    }

    /// Resolves when every thread has ended; the first failure, if any. Cancel-safe:
    /// a thread is forgotten only once it has ended, so after a drain deadline cut
    /// one call short, the next (after [`Front::abort`]) still waits for the rest.
    pub(super) async fn finished(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(rx) = self.done.last_mut() {
            let served = rx
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("an HTTP thread panicked")));
            self.done.pop();
            if result.is_ok() {
                result = served;
            }
        }
        result
    }
}

/// A listening socket on `addr` joining the `SO_REUSEPORT` group of the first.
fn own_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One thread's life: a current-thread runtime serving `socket` until stopped.
fn serve_one(
    socket: std::net::TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an HTTP thread's runtime")?;
    runtime.block_on(async move {
        let listener =
            TcpListener::from_std(socket).context("cannot watch the listening socket")?;
        let graceful = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(graceful);
        tokio::select! {
            served = serve => served.context("HTTP server failed"),
            _ = abort.wait_for(|abort| *abort) => Ok(()),
        }
    })
}
