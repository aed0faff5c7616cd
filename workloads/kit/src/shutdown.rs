//! Graceful shutdown: one [`CancellationToken`] for the whole process, cancelled by SIGTERM or
//! SIGINT (or by a test). Everything long-running takes a clone and stops when it is cancelled;
//! the caller bounds the drain with [`with_deadline`].

use std::future::Future;
use std::time::Duration;
pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "Failed to install the SIGTERM handler.");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received; shutting down."),
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down."),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}

/// Runs `fut` to completion or until `deadline` passes; says which.
pub async fn with_deadline<F: Future>(deadline: Duration, what: &str, fut: F) -> Option<F::Output> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                what,
                "Shutdown deadline passed; stopping anyway."
            );
            None
        }
    }
}
