//! A scenario file (scenarios/NAME.toml) as data: parsing and validation
//! only, no I/O beyond reading the file. Every error names the file and
//! the field at fault.
//!
//! ```toml
//! name = "sigkill-at-half"
//! replays = "The migrator is SIGKILLed halfway through; the rerun resumes the same run."
//! [dataset]
//! generator = { seed = 11, users = 200, malformed_rate = 0.0 }
//! fixtures = ["fixtures/wrong_types.json"]   # relative to the scenario file
//! [[dataset.keys]]                              # inline keys, fixture format
//! key = "okx:positions:u1"
//! type = "string"
//! json = [{ instId = "BTC-USDT-SWAP", pos = "1" }]
//! [[dataset.bulk]]                              # one legacy key holding N positions
//! key = "okx:positions:whale"
//! positions = 10000
//! [[fault]]
//! kind = "sigkill"
//! at_progress = 0.5                             # or after_ms = 300
//! invocation = 1                                # during which [[run]] (default 1)
//! [[run]]
//! exit = "killed"                               # or a code, or [4, 5]
//! [[run]]
//! migration = "grid-positions"
//! args = ["--skip-closed"]
//! exit = 0
//! [expect]
//! hold = ["counts", "index"]                    # default: every invariant checked
//! fail = []
//! rollback = true
//! [[expect.finding]]
//! kind = "quarantined"
//! key = "okx:positions:bad"
//! reason = "not_json"
//! [[expect.message]]
//! invocation = 1
//! contains = "maxmemory"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seed::GenConfig;

#[path = "model_fault.rs"]
mod fault;
pub use fault::{Fault, FaultName, Timing};

/// Why a scenario file (or directory) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or a field with the wrong name or type (the toml crate's
    /// message names the field and shows the line).
    #[error("{}: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    /// Well-formed TOML that describes an impossible scenario.
    #[error("{}: field `{field}`: {message}", file.display())]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("scenarios {name:?} are defined in both {} and {}", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no scenario named {name:?} in {}; `keyshift scenario list` shows them", dir.display())]
    Unknown { name: String, dir: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// One sentence: the failure it replays.
    pub replays: String,
    #[serde(default)]
    pub dataset: Dataset,
    #[serde(default)]
    pub server: ServerSpec,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub writers: Writers,
    #[serde(rename = "run")]
    pub runs: Vec<Invocation>,
    #[serde(default)]
    pub expect: Expect,
    /// The file it came from (set by the loader).
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Generator settings ([`GenConfig`] fields; `users` and `seed` at least).
    pub generator: Option<toml::Table>,
    /// Fixture files (JSON keyspace format), relative to the scenario file.
    #[serde(default)]
    pub fixtures: Vec<PathBuf>,
    /// Inline keys in the fixture entry format (`key`, `type`, `value` /
    /// `json` / `hex`, `ttl_ms`).
    #[serde(default)]
    pub keys: Vec<toml::Value>,
    /// Legacy keys holding many positions, made on the fly.
    #[serde(default)]
    pub bulk: Vec<Bulk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    pub key: String,
    pub positions: usize,
}

/// Server settings beyond the backend's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// `appendonly yes`, `appendfsync always`: a crash loses no acknowledged write.
    #[serde(default)]
    pub aof: bool,
    /// A 3-primary Redis Cluster instead of one server: the migrator gets
    /// its `redis+cluster://` URL, seeding and checks go to every primary.
    /// Only the faults that strike the migrator or keys (`sigkill`,
    /// `expire-keys`, `legacy-write`) apply to a cluster.
    #[serde(default)]
    pub cluster: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Writers {
    /// Writer tasks updating positions through the migration (0: none).
    #[serde(default)]
    pub count: usize,
    /// How many users they concentrate on.
    #[serde(default)]
    pub hot_users: usize,
    /// A legacy writer that keeps writing after its user migrated.
    #[serde(default)]
    pub rogue_legacy: bool,
    /// Each writer's pause between two operations (default: the writers'
    /// own, 2 ms).
    pub pause_ms: Option<u64>,
    /// How long they keep writing after the last run, before they stop.
    #[serde(default)]
    pub after_run_ms: u64,
}

impl Writers {
    pub fn any(&self) -> bool {
        self.count > 0 || self.rogue_legacy
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationName {
    GridPositions,
    OrderPlaced,
}

impl MigrationName {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationName::GridPositions => "grid-positions",
            MigrationName::OrderPlaced => "order-placed",
        }
    }
}

/// One exit code, any of several (a fault whose landing decides between
/// two clean aborts, e.g. 4 for a broken connection or 5 for a lost lock),
/// or `"killed"` for an invocation the scenario SIGKILLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExitSpec {
    One(i32),
    AnyOf(Vec<i32>),
    Killed(Killed),
    /// Any exit code (not a signal): what is asked of a team's command
    /// (`--engine`) where keyshift would give one of its own error codes.
    /// Set by the runner, never read from a scenario file.
    #[serde(skip_deserializing)]
    Any(AnyExit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnyExit {
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Killed {
    Killed,
}

impl ExitSpec {
    /// `exit` is `None` when the process died of a signal.
    pub fn accepts(&self, exit: Option<i32>) -> bool {
        match (self, exit) {
            (ExitSpec::One(c), Some(e)) => *c == e,
            (ExitSpec::AnyOf(cs), Some(e)) => cs.contains(&e),
            (ExitSpec::Killed(_), None) => true,
            (ExitSpec::Any(_), Some(_)) => true,
            _ => false,
        }
    }

    fn codes(&self) -> Vec<i32> {
        match self {
            ExitSpec::One(c) => vec![*c],
            ExitSpec::AnyOf(cs) => cs.clone(),
            ExitSpec::Killed(_) | ExitSpec::Any(_) => Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ExitSpec::One(c) => c.to_string(),
            ExitSpec::AnyOf(cs) => format!("one of {cs:?}"),
            ExitSpec::Killed(_) => "killed".into(),
            ExitSpec::Any(_) => "any code".into(),
        }
    }
}

/// One `keyshift migrate` invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    #[serde(default = "grid")]
    pub migration: MigrationName,
    /// Extra flags: `--skip-closed`, `--exchange EX`, `--max-positions-per-user N`.
    #[serde(default)]
    pub args: Vec<String>,
    pub exit: ExitSpec,
    /// The runner lock's TTL (`KEYSHIFT_LOCK_TTL_MS`); default 2000, so a
    /// killed runner's lock frees fast. A run that plans one huge user on
    /// a debug build needs longer, or it loses its lock mid-plan.
    pub lock_ttl_ms: Option<u64>,
}

fn grid() -> MigrationName {
    MigrationName::GridPositions
}

/// Invariant ids a scenario may name.
pub const INVARIANTS: [&str; 8] = [
    "counts",
    "index",
    "fields",
    "backup",
    "ttl",
    "untouched",
    "rollback",
    "no-lost-writes",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Invariants that must hold; default: every one checked.
    pub hold: Option<Vec<String>>,
    /// Invariants that must fail.
    #[serde(default)]
    pub fail: Vec<String>,
    #[serde(default, rename = "finding")]
    pub findings: Vec<FindingSpec>,
    #[serde(default, rename = "message")]
    pub messages: Vec<MessageSpec>,
    /// Roll back after the checks and require the pre-migration keyspace.
    #[serde(default)]
    pub rollback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A legacy key left untouched and reported (journal outcome).
    Quarantined,
    /// A key in conflict with an existing target (journal outcome).
    Conflict,
    /// A migrated legacy key that exists again (verify's counts).
    Reappeared,
    /// A legacy key gone before it was migrated (expired): neither
    /// migrated nor present.
    Vanished,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingSpec {
    pub kind: FindingKind,
    pub key: String,
    /// A substring of the reason tag or detail.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// Which `[[run]]` (1-based) printed it, on stdout or stderr.
    pub invocation: usize,
    pub contains: String,
}

impl Scenario {
    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        s.file = file.to_path_buf();
        s.validate()?;
        Ok(s)
    }

    pub fn load(file: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(file).map_err(|source| ScenarioError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        Scenario::parse(file, &text)
    }

    /// The generator configuration, when the dataset has one; unknown
    /// settings are refused (a typo would silently use a default).
    pub fn generator(&self) -> Result<Option<GenConfig>, ScenarioError> {
        let Some(table) = &self.dataset.generator else {
            return Ok(None);
        };
        let known = serde_json::to_value(GenConfig::default()).expect("GenConfig serialises");
        if let Some(k) = table.keys().find(|k| known.get(k.as_str()).is_none()) {
            let names: Vec<&String> = known.as_object().expect("object").keys().collect();
            return Err(self.invalid(
                &format!("dataset.generator.{k}"),
                format!("unknown generator setting; known: {names:?}"),
            ));
        }
        for required in ["users", "seed"] {
            if !table.contains_key(required) {
                return Err(self.invalid(
                    &format!("dataset.generator.{required}"),
                    "missing: a generated dataset names its size and seed".into(),
                ));
            }
        }
        let cfg = GenConfig::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| self.invalid("dataset.generator", e.to_string()))?;
        Ok(Some(cfg))
    }

    fn invalid(&self, field: &str, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.clone(),
            field: field.to_owned(),
            message,
        }
    }

    /// The error naming `field` of this scenario's file.
    fn refuse(&self, field: &str, message: &str) -> Result<(), ScenarioError> {
        Err(self.invalid(field, message.to_owned()))
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        self.validate_header()?;
        self.validate_dataset()?;
        for (i, f) in self.faults.iter().enumerate() {
            self.validate_fault(i, f)?;
        }
        for (i, r) in self.runs.iter().enumerate() {
            self.validate_run(i, r)?;
        }
        self.validate_expect()?;
        if self.writers.hot_users > 0 && self.writers.count == 0 {
            return self.refuse("writers.hot_users", "hot users need writers (count > 0)");
        }
        Ok(())
    }

    fn validate_header(&self) -> Result<(), ScenarioError> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return self.refuse(
                "name",
                "use lowercase letters, digits and '-' (it names the report directory)",
            );
        }
        if self.replays.trim().is_empty() {
            return self.refuse("replays", "say in one sentence what failure this replays");
        }
        if self.runs.is_empty() {
            return self.refuse(
                "run",
                "at least one [[run]] (a migrator invocation) is needed",
            );
        }
        Ok(())
    }

    fn validate_dataset(&self) -> Result<(), ScenarioError> {
        self.generator()?;
        let d = &self.dataset;
        if d.generator.is_none() && d.fixtures.is_empty() && d.keys.is_empty() && d.bulk.is_empty()
        {
            return self.refuse("dataset", "empty: give a generator, fixtures, keys or bulk");
        }
        for (i, b) in d.bulk.iter().enumerate() {
            if b.positions == 0 || b.positions > 100_000 {
                return self.refuse(
                    &format!("dataset.bulk[{i}].positions"),
                    "between 1 and 100000",
                );
            }
        }
        Ok(())
    }

    /// `[[run]]` number `i` (0-based): its exit codes, and the only
    /// arguments a scenario may add.
    fn validate_run(&self, i: usize, r: &Invocation) -> Result<(), ScenarioError> {
        let field = format!("run[{i}]");
        let codes = r.exit.codes();
        let killed = matches!(r.exit, ExitSpec::Killed(_));
        if (codes.is_empty() && !killed) || codes.iter().any(|c| !(0..=5).contains(c)) {
            return self.refuse(
                &format!("{field}.exit"),
                "exit codes are 0..=5 (DESIGN §6), or \"killed\"",
            );
        }
        let sigkilled = self.faults_of(i + 1).any(|f| f.kind == FaultName::Sigkill);
        if killed != sigkilled {
            return self.refuse(
                &format!("{field}.exit"),
                "\"killed\" is the exit of exactly the runs a sigkill fault strikes",
            );
        }
        let mut args = r.args.iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--skip-closed" => {}
                "--exchange" | "--max-positions-per-user" if args.next().is_some() => {}
                _ => {
                    return self.refuse(
                        &format!("{field}.args"),
                        &format!(
                            "{a:?}: only --skip-closed, --exchange EX and \
                             --max-positions-per-user N are allowed"
                        ),
                    )
                }
            }
        }
        Ok(())
    }

    fn validate_expect(&self) -> Result<(), ScenarioError> {
        let e = &self.expect;
        for id in e.hold.iter().flatten().chain(&e.fail) {
            if !INVARIANTS.contains(&id.as_str()) {
                return self.refuse(
                    "expect.hold/fail",
                    &format!("unknown invariant {id:?}; known: {INVARIANTS:?}"),
                );
            }
        }
        if let Some(both) = e
            .fail
            .iter()
            .find(|f| e.hold.iter().flatten().any(|h| h == *f))
        {
            return self.refuse(
                "expect.fail",
                &format!("{both:?} cannot both hold and fail"),
            );
        }
        for (i, m) in e.messages.iter().enumerate() {
            if m.invocation == 0 || m.invocation > self.runs.len() || m.contains.is_empty() {
                return self.refuse(
                    &format!("expect.message[{i}]"),
                    "needs an invocation in 1..=runs and a non-empty `contains`",
                );
            }
        }
        Ok(())
    }

    fn validate_fault(&self, i: usize, f: &Fault) -> Result<(), ScenarioError> {
        let field = |name: &str| format!("fault[{i}].{name}");
        let bad = |name: &str, message: &str| self.refuse(&field(name), message);
        let timings = [f.at_progress.is_some(), f.after_ms.is_some(), f.at_exit];
        if timings.iter().filter(|t| **t).count() != 1 {
            return bad(
                "at_progress",
                "give exactly one of at_progress, after_ms and at_exit",
            );
        }
        if f.at_progress.is_some_and(|p| !(0.0..1.0).contains(&p)) {
            return bad(
                "at_progress",
                "a fraction in [0, 1): the run must still be going",
            );
        }
        if f.at_exit && !matches!(f.kind, FaultName::LegacyWrite | FaultName::ExpireKeys) {
            return bad(
                "at_exit",
                "only legacy-write and expire-keys strike after the run",
            );
        }
        if f.invocation == 0 || f.invocation > self.runs.len() {
            return bad(
                "invocation",
                "names a [[run]] (1-based) that does not exist",
            );
        }
        let lasts = matches!(f.kind, FaultName::Pause | FaultName::NetworkCut);
        match f.duration_ms {
            None if lasts => return bad("duration_ms", "a pause or network cut needs its length"),
            Some(_) if !lasts => return bad("duration_ms", "only pause and network-cut last"),
            _ => {}
        }
        let takes_keys = matches!(f.kind, FaultName::ExpireKeys | FaultName::LegacyWrite);
        if takes_keys == f.keys.is_empty() {
            return bad(
                "keys",
                "expire-keys and legacy-write need keys; other faults take none",
            );
        }
        if (f.kind == FaultName::LegacyWrite) != f.value.is_some() {
            return bad(
                "value",
                "legacy-write needs the value it writes; other faults take none",
            );
        }
        if self.server.cluster && !f.kind.on_cluster() {
            return bad(
                "kind",
                "a cluster scenario takes only sigkill, expire-keys and legacy-write faults (server faults strike one server)",
            );
        }
        if f.kind == FaultName::CrashRestart && !self.server.aof {
            return bad("kind", "a crash restart loses unsynced writes without AOF: set server.aof = true (or use shutdown-restart)");
        }
        Ok(())
    }

    /// The faults that strike invocation `n` (1-based).
    pub fn faults_of(&self, n: usize) -> impl Iterator<Item = &Fault> {
        self.faults.iter().filter(move |f| f.invocation == n)
    }

    /// The docker-only faults it uses.
    pub fn docker_only_faults(&self) -> Vec<&'static str> {
        self.faults
            .iter()
            .filter(|f| f.kind.docker_only())
            .map(|f| f.kind.as_str())
            .collect()
    }
}

/// Every `*.toml` scenario of `dir`, sorted by name; names are unique.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let io = |source| ScenarioError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let files = crate::seed::fixtures::files_with_extension(dir, "toml").map_err(io)?;
    let mut all: Vec<Scenario> = files
        .iter()
        .map(|f| Scenario::load(f))
        .collect::<Result<_, _>>()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = all.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ScenarioError::Duplicate {
            name: w[0].name.clone(),
            first: w[0].file.clone(),
            second: w[1].file.clone(),
        });
    }
    Ok(all)
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
