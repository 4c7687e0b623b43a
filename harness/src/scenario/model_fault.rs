//! A scenario's faults: what strikes, and when.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultName {
    /// SIGKILL the migrator.
    Sigkill,
    /// Freeze the server for `duration_ms` (docker pause / SIGSTOP).
    Pause,
    /// kill -9 of the server, then start it again on its data (needs `server.aof`).
    CrashRestart,
    /// SHUTDOWN SAVE, then start it again on the same port and data dir.
    ShutdownRestart,
    /// CLIENT KILL of every connection the migrator opened.
    DropConnections,
    /// Disconnect the container from its network for `duration_ms` (docker only).
    NetworkCut,
    /// CONFIG SET maxmemory just above used memory; lifted before the next invocation.
    Maxmemory,
    /// PEXPIRE `keys` to 1 ms: keys expiring while the run goes on.
    ExpireKeys,
    /// SET `keys` to `value`: a rogue writer still using the legacy layout.
    LegacyWrite,
}

impl FaultName {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultName::Sigkill => "sigkill",
            FaultName::Pause => "pause",
            FaultName::CrashRestart => "crash-restart",
            FaultName::ShutdownRestart => "shutdown-restart",
            FaultName::DropConnections => "drop-connections",
            FaultName::NetworkCut => "network-cut",
            FaultName::Maxmemory => "maxmemory",
            FaultName::ExpireKeys => "expire-keys",
            FaultName::LegacyWrite => "legacy-write",
        }
    }

    /// Faults a cluster scenario can apply: they strike the migrator or
    /// single keys, never one server.
    pub fn on_cluster(self) -> bool {
        matches!(
            self,
            FaultName::Sigkill | FaultName::ExpireKeys | FaultName::LegacyWrite
        )
    }

    /// Faults only a container can suffer.
    pub fn docker_only(self) -> bool {
        self == FaultName::NetworkCut
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultName,
    /// Apply once the run's journal holds this fraction of the legacy keys.
    pub at_progress: Option<f64>,
    /// Apply this long after the invocation started.
    pub after_ms: Option<u64>,
    /// Apply once the invocation has exited (before the next one, or the checks).
    #[serde(default)]
    pub at_exit: bool,
    /// Which `[[run]]` it strikes (1-based).
    #[serde(default = "first")]
    pub invocation: usize,
    /// How long a pause or network cut lasts.
    pub duration_ms: Option<u64>,
    /// The keys of `expire-keys` and `legacy-write`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// What `legacy-write` writes (a legacy JSON value).
    pub value: Option<String>,
}

fn first() -> usize {
    1
}

/// When a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    Progress(f64),
    AfterMs(u64),
    AtExit,
}

impl Fault {
    /// Validation guarantees exactly one of the three.
    pub fn timing(&self) -> Timing {
        match (self.at_progress, self.after_ms) {
            _ if self.at_exit => Timing::AtExit,
            (Some(p), _) => Timing::Progress(p),
            (None, Some(ms)) => Timing::AfterMs(ms),
            (None, None) => Timing::AfterMs(0),
        }
    }
}
