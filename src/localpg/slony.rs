//! Throwaway Slony-I 2.2 clusters on harness-started servers: `slonik` builds them (init
//! cluster, store node/path, create set, set add table, subscribe set), `slon` daemons run as
//! watched child processes.
//!
//! A [`SlonyCluster`] is one database on each of N [`LocalServer`]s, node `i` having Slony node
//! id `i + 1`, node 1 the origin of set 1. Several clusters can share the same servers (each has
//! its own database and cluster name), so a test binary starts its servers once and builds a
//! fresh Slony cluster per test in a few seconds.
//!
//! Every `slon` has a keeper: a tiny `sh` that starts it in the background and whose stdin is a
//! pipe held only by the owning process. When the pipe closes (the [`Slon`] is dropped or
//! stopped, or the owner exits or is SIGKILLed), the keeper sends SIGTERM to `slon` (whose own
//! watchdog then stops its worker) and reaps it, so no daemon outlives its test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::binaries::find_on_path;
use super::command::run_checked;
use super::server::file_tail;
use super::{scrub_pg_env, LocalPgError, LocalServer, PgBinaries};

type Result<T> = std::result::Result<T, LocalPgError>;

/// `slonik` and `slon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlonyBinaries {
    pub slonik: PathBuf,
    pub slon: PathBuf,
}

impl SlonyBinaries {
    /// `slonik` and `slon` on `PATH`.
    pub fn locate() -> Result<SlonyBinaries> {
        let find = |name: &str| {
            find_on_path(name).ok_or_else(|| LocalPgError::NotFound {
                tried: format!(
                    "`{name}` on PATH (none; install Slony-I 2.2, e.g. `apt-get install -y slony1-2-bin postgresql-15-slony1-2`)"
                ),
            })
        };
        Ok(SlonyBinaries {
            slonik: find("slonik")?,
            slon: find("slon")?,
        })
    }

    /// `slonik -v`, e.g. `slonik version 2.2.11`.
    pub fn version(&self) -> Result<String> {
        let out = run_checked(Command::new(&self.slonik).arg("-v"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The PostgreSQL server binaries whose server can load Slony-I's module
/// (`slony1_funcs.*.so` in the version's `lib` dir): `PG_BIN` when set (trusted as is), else
/// the highest `/usr/lib/postgresql/N` that has the module. Slony's SQL is installed by
/// `slonik` from `/usr/share/slony1`, its module is per major version, so initdb must come
/// from the same version as the module.
pub fn slony_pg_binaries() -> Result<PgBinaries> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
        return Ok(PgBinaries {
            bindir: PathBuf::from(dir),
        });
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let has_module = std::fs::read_dir(entry.path().join("lib"))
                .map(|files| {
                    files.flatten().any(|f| {
                        let n = f.file_name().to_string_lossy().into_owned();
                        n.starts_with("slony1_funcs") && n.ends_with(".so")
                    })
                })
                .unwrap_or(false);
            if has_module && entry.path().join("bin/initdb").is_file() {
                found.push((major, entry.path().join("bin")));
            }
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, bindir)| PgBinaries { bindir })
        .ok_or_else(|| LocalPgError::NotFound {
            tried: "/usr/lib/postgresql/*/lib/slony1_funcs*.so (no PostgreSQL version with \
                    Slony-I's module; install e.g. `postgresql-15-slony1-2`, or set PG_BIN)"
                .to_string(),
        })
}

/// How the `slon` daemons run.
#[derive(Debug, Clone, Copy)]
pub struct SlonOptions {
    /// `-s`: how often the origin checks whether a SYNC is due (ms).
    pub sync_interval_ms: u32,
    /// `-t`: a SYNC at least this often even when idle (ms).
    pub sync_interval_timeout_ms: u32,
}

impl Default for SlonOptions {
    fn default() -> Self {
        // Short intervals keep an EXECUTE SCRIPT round trip well under a second; Slony's
        // defaults (2 s / 10 s) are for production, not for tests.
        SlonOptions {
            sync_interval_ms: 100,
            sync_interval_timeout_ms: 1000,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SlonySpec {
    /// Slony cluster name (schema `_NAME`): lowercase letters, digits, `_`.
    pub name: String,
    /// Database created on every server.
    pub db: String,
    /// SQL run on every node before replication starts (the tables to replicate must exist
    /// on every node first, as Slony requires).
    pub schema_sql: String,
    /// Tables (`schema.table`, each with a primary key) put in set 1.
    pub tables: Vec<String>,
    /// Sequences (`schema.sequence`) put in set 1.
    pub sequences: Vec<String>,
    pub slon: SlonOptions,
    /// How long to wait for subscriptions and confirmations.
    pub timeout: Duration,
}

impl SlonySpec {
    pub fn new(name: &str, db: &str) -> SlonySpec {
        SlonySpec {
            name: name.to_string(),
            db: db.to_string(),
            schema_sql: String::new(),
            tables: Vec::new(),
            sequences: Vec::new(),
            slon: SlonOptions::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One `slon` daemon and its keeper.
#[derive(Debug)]
pub struct Slon {
    keeper: Option<(Child, ChildStdin)>,
    log: PathBuf,
}

/// Starts `slon` in the background, stops it when stdin closes, waits for it.
const KEEPER_SCRIPT: &str = r#"slon="$1"; shift; log="$1"; shift
"$slon" "$@" </dev/null >>"$log" 2>&1 &
pid=$!
read _x
kill -TERM "$pid" 2>/dev/null
wait "$pid""#;

impl Slon {
    /// Starts `slon CLUSTER CONNINFO` with its log appended to `log`.
    pub fn start(
        bins: &SlonyBinaries,
        cluster: &str,
        conninfo: &str,
        opts: SlonOptions,
        log: &Path,
    ) -> Result<Slon> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(KEEPER_SCRIPT)
            .arg("pgconvoy-slon-keeper")
            .arg(&bins.slon)
            .arg(log)
            .arg("-s")
            .arg(opts.sync_interval_ms.to_string())
            .arg("-t")
            .arg(opts.sync_interval_timeout_ms.to_string())
            .arg(cluster)
            .arg(conninfo)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C on the owner does not reach it; only the pipe closing does.
            .process_group(0);
        scrub_pg_env(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| LocalPgError::Spawn {
            program: format!("{} (slon keeper)", bins.slon.display()),
            source,
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        Ok(Slon {
            keeper: Some((child, stdin)),
            log: log.to_path_buf(),
        })
    }

    /// Stops the daemon and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.keeper.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Whether the daemon is still meant to run (its keeper lives).
    pub fn is_running(&mut self) -> bool {
        match &mut self.keeper {
            Some((child, _)) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Slon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running Slony-I cluster: one database on each server, node `i` = Slony node `i + 1`,
/// node 1 the origin of set 1, every other node subscribed to it from node 1.
#[derive(Debug)]
pub struct SlonyCluster<'s> {
    servers: Vec<&'s LocalServer>,
    bins: SlonyBinaries,
    spec: SlonySpec,
    slons: Vec<Option<Slon>>,
    /// How long bring-up took (databases, slonik, slons, subscriptions, first confirmation).
    pub bring_up: Duration,
    /// Bring-up by phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
}

impl<'s> SlonyCluster<'s> {
    /// Creates the databases, runs `schema_sql` on every node, builds the cluster with
    /// slonik, starts a slon per node, subscribes every other node to set 1 and waits until
    /// every subscription is active and a SYNC is confirmed everywhere.
    pub fn create(servers: &[&'s LocalServer], spec: SlonySpec) -> Result<SlonyCluster<'s>> {
        let started = Instant::now();
        let bins = SlonyBinaries::locate()?;
        if servers.is_empty() {
            return Err(failed("build a slony cluster", "no servers given".into()));
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = servers
                .iter()
                .map(|s| {
                    let spec = &spec;
                    scope.spawn(move || {
                        s.create_database(&spec.db)?;
                        if !spec.schema_sql.trim().is_empty() {
                            s.psql(&spec.db, &spec.schema_sql)?;
                        }
                        Ok::<_, LocalPgError>(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("database setup thread"))
        })?;
        let mut cluster = SlonyCluster {
            servers: servers.to_vec(),
            bins,
            slons: servers.iter().map(|_| None).collect(),
            spec,
            bring_up: Duration::ZERO,
            phases: Vec::new(),
        };
        let mut mark = started;
        let mut phase = |c: &mut SlonyCluster<'s>, name: &'static str| {
            c.phases.push((name, mark.elapsed()));
            mark = Instant::now();
        };
        phase(&mut cluster, "databases");

        let mut init = String::new();
        init.push_str("init cluster (id = 1, comment = 'node 1');\n");
        for i in 1..cluster.len() {
            init.push_str(&format!(
                "store node (id = {id}, comment = 'node {id}', event node = 1);\n",
                id = i + 1
            ));
        }
        for a in 0..cluster.len() {
            for b in 0..cluster.len() {
                if a != b {
                    init.push_str(&format!(
                        "store path (server = {}, client = {}, conninfo = {});\n",
                        a + 1,
                        b + 1,
                        slonik_string(&cluster.conninfo(a))
                    ));
                }
            }
        }
        init.push_str("create set (id = 1, origin = 1, comment = 'set 1');\n");
        for (k, t) in cluster.spec.tables.iter().enumerate() {
            init.push_str(&format!(
                "set add table (set id = 1, origin = 1, id = {}, fully qualified name = {});\n",
                k + 1,
                slonik_string(t)
            ));
        }
        for (k, s) in cluster.spec.sequences.iter().enumerate() {
            init.push_str(&format!(
                "set add sequence (set id = 1, origin = 1, id = {}, fully qualified name = {});\n",
                k + 1,
                slonik_string(s)
            ));
        }
        cluster.slonik(&init)?;
        phase(&mut cluster, "slonik init");

        for i in 0..cluster.len() {
            cluster.start_slon(i)?;
        }
        if cluster.len() > 1 {
            let mut sub = String::new();
            for i in 1..cluster.len() {
                sub.push_str(&format!(
                    "subscribe set (id = 1, provider = 1, receiver = {}, forward = yes);\n",
                    i + 1
                ));
            }
            cluster.slonik(&sub)?;
            phase(&mut cluster, "slonik subscribe");
            cluster.wait_subscribed(1)?;
            phase(&mut cluster, "subscriptions active");
            cluster.sync_and_wait()?;
            phase(&mut cluster, "first sync confirmed");
        }
        cluster.bring_up = started.elapsed();
        Ok(cluster)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The Slony cluster name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The database on every server.
    pub fn db(&self) -> &str {
        &self.spec.db
    }

    /// `"_NAME"`, the cluster's schema, quoted.
    pub fn schema(&self) -> String {
        format!("\"_{}\"", self.spec.name)
    }

    /// Slony node id of node `i`.
    pub fn node_id(&self, i: usize) -> u32 {
        u32::try_from(i + 1).expect("few nodes")
    }

    /// The server of node `i`.
    pub fn server(&self, i: usize) -> &'s LocalServer {
        self.servers[i]
    }

    /// DSN of node `i` (libpq key/value, superuser `postgres`, no password).
    pub fn dsn(&self, i: usize) -> String {
        self.servers[i].dsn(&self.spec.db)
    }

    fn conninfo(&self, i: usize) -> String {
        self.dsn(i)
    }

    /// `cluster name = …; node N admin conninfo = …;` for every node.
    pub fn preamble(&self) -> String {
        let mut s = format!("cluster name = {};\n", self.spec.name);
        for i in 0..self.len() {
            s.push_str(&format!(
                "node {} admin conninfo = {};\n",
                i + 1,
                slonik_string(&self.conninfo(i))
            ));
        }
        s
    }

    /// Runs `commands` after the preamble through `slonik` (script on stdin); returns its
    /// output (stdout and stderr).
    pub fn slonik(&self, commands: &str) -> Result<String> {
        let script = format!("{}{commands}", self.preamble());
        let mut cmd = Command::new(&self.bins.slonik);
        scrub_pg_env(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| LocalPgError::Spawn {
            program: self.bins.slonik.display().to_string(),
            source,
        })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(script.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|source| LocalPgError::Spawn {
                program: self.bins.slonik.display().to_string(),
                source,
            })?;
        let _ = writer.join();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            let short: String = commands.chars().take(300).collect();
            return Err(LocalPgError::Command {
                command: format!("slonik running `{}`", short.trim()),
                status: out.status.to_string(),
                stderr: text.trim().to_string(),
            });
        }
        Ok(text)
    }

    /// Runs SQL on node `i`'s database through psql.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String> {
        self.servers[i].psql(&self.spec.db, sql)
    }

    /// The log of node `i`'s slon (in its server's temp dir).
    pub fn slon_log(&self, i: usize) -> PathBuf {
        self.servers[i]
            .root_dir()
            .join(format!("slon-{}-{}.log", self.spec.name, self.spec.db))
    }

    /// Starts node `i`'s slon (again); does nothing if it runs.
    pub fn start_slon(&mut self, i: usize) -> Result<()> {
        if let Some(s) = &mut self.slons[i] {
            if s.is_running() {
                return Ok(());
            }
        }
        let slon = Slon::start(
            &self.bins,
            &self.spec.name,
            &self.conninfo(i),
            self.spec.slon,
            &self.slon_log(i),
        )?;
        self.slons[i] = Some(slon);
        Ok(())
    }

    /// Stops node `i`'s slon and waits until it is gone.
    pub fn stop_slon(&mut self, i: usize) {
        if let Some(mut s) = self.slons[i].take() {
            s.stop();
        }
    }

    /// Whether node `i`'s slon runs.
    pub fn slon_running(&mut self, i: usize) -> bool {
        self.slons[i].as_mut().is_some_and(Slon::is_running)
    }

    /// Waits until every receiver's subscription to `set` is active on the origin.
    pub fn wait_subscribed(&self, set: u32) -> Result<()> {
        let want = self.len() - 1;
        let sql = format!(
            "SELECT count(*) FROM {}.sl_subscribe WHERE sub_set = {set} AND sub_active",
            self.schema()
        );
        self.poll(&format!("subscriptions to set {set} active"), || {
            Ok(self.psql(0, &sql)?.trim() == want.to_string())
        })
    }

    /// Creates a SYNC event on the origin and waits until every other node confirmed it
    /// (each receiver's own `sl_confirm`, written with the data it applied); returns the
    /// event's sequence number.
    pub fn sync_and_wait(&self) -> Result<i64> {
        let seqno = self.sync()?;
        for i in 1..self.len() {
            self.wait_confirmed(i, seqno)?;
        }
        Ok(seqno)
    }

    /// Creates a SYNC event on the origin (as slonik's `sync` does); returns its seqno.
    pub fn sync(&self) -> Result<i64> {
        let s = self.schema();
        let out = self.psql(
            0,
            &format!(
                "BEGIN; LOCK TABLE {s}.sl_event_lock; SELECT {s}.createEvent('_{}', 'SYNC'); COMMIT;",
                self.spec.name
            ),
        )?;
        out.trim()
            .parse()
            .map_err(|_| failed("create a sync event", format!("unexpected output `{out}`")))
    }

    /// Waits until node `i` confirmed the origin's event `seqno`.
    pub fn wait_confirmed(&self, i: usize, seqno: i64) -> Result<()> {
        let sql = format!(
            "SELECT coalesce(max(con_seqno), 0) >= {seqno} FROM {}.sl_confirm \
             WHERE con_origin = 1 AND con_received = {}",
            self.schema(),
            self.node_id(i)
        );
        self.poll(
            &format!("node {} to confirm event {seqno}", self.node_id(i)),
            || Ok(self.psql(i, &sql)?.trim() == "t"),
        )
    }

    fn poll(&self, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + self.spec.timeout;
        loop {
            if cond()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = (0..self.len())
                    .map(|i| {
                        format!(
                            "--- slon of node {} ---\n{}",
                            i + 1,
                            file_tail(&self.slon_log(i), 0, 1500)
                        )
                    })
                    .collect();
                return Err(failed(
                    "wait",
                    format!(
                        "gave up waiting for {what} after {:?}\n{}",
                        self.spec.timeout,
                        logs.join("\n")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

impl Drop for SlonyCluster<'_> {
    fn drop(&mut self) {
        for s in self.slons.iter_mut().flatten() {
            s.stop();
        }
    }
}

/// A slonik string literal: single quotes, a quote doubled; slonik keeps backslashes as they are.
pub fn slonik_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn failed(what: &str, detail: String) -> LocalPgError {
    LocalPgError::Command {
        command: format!("slony lab: {what}"),
        status: "failed".into(),
        stderr: detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slonik_strings_double_quotes_only() {
        assert_eq!(slonik_string("a"), "'a'");
        assert_eq!(slonik_string("it's"), "'it''s'");
        assert_eq!(slonik_string(r"a\b"), r"'a\b'");
    }

    #[test]
    fn keeper_stops_its_daemon_when_the_pipe_closes() {
        // A script that ignores slon's arguments and sleeps stands in for slon: the keeper
        // must end it when we let go.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-slon");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let bins = SlonyBinaries {
            slonik: PathBuf::from("/bin/true"),
            slon: fake,
        };
        let log = dir.path().join("log");
        let mut slon = Slon::start(&bins, "c", "host=x", SlonOptions::default(), &log).unwrap();
        assert!(slon.is_running());
        let started = Instant::now();
        slon.stop();
        assert!(!slon.is_running());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
