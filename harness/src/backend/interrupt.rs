//! Ctrl-C and SIGTERM during a command that starts disposable servers: the
//! command's future is dropped (each server's drop removes its container
//! or kills its child), then the engine is swept for any container of this
//! process still there, so an interrupted gate leaves nothing behind.

use std::fmt;
use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// The signal that ended a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    pub signal: &'static str,
    /// Containers the sweep still found after the drops.
    pub swept: usize,
}

impl Interrupted {
    /// The shell's convention: 128 + the signal number.
    pub fn exit_code(&self) -> u8 {
        match self.signal {
            "SIGTERM" => 128 + 15,
            _ => 128 + 2,
        }
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted by {}; disposable servers removed",
            self.signal
        )?;
        if self.swept > 0 {
            write!(f, " ({} container(s) by the sweep)", self.swept)?;
        }
        Ok(())
    }
}

/// Runs `work` to its end, or until SIGINT or SIGTERM arrives; then drops
/// it and removes this process's leftover containers and networks.
pub async fn until_interrupted<F: Future>(work: F) -> Result<F::Output, Interrupted> {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM ({e}); a SIGTERM leaves containers behind");
            return Ok(work.await);
        }
    };
    let signal = {
        let work = std::pin::pin!(work);
        tokio::select! {
            output = work => return Ok(output),
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
        // `work` is dropped here, and every server it held with it.
    };
    let swept = match super::remove_leftovers().await {
        Ok(swept) => swept,
        Err(e) => {
            eprintln!("keyshift: after {signal}, could not sweep for leftover containers: {e}");
            0
        }
    };
    Err(Interrupted { signal, swept })
}
