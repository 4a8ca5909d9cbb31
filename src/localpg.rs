//! Throwaway local PostgreSQL servers started from the installed binaries: for the test suite, the benchmarks and `pgconvoy demo`.
//!
//! Each [`LocalServer`] lives in its own short temp dir (`/tmp/pgconvoy-XXXXXX`) holding the
//! data dir, the unix socket and `server.log`. It listens on `127.0.0.1` on a free port, with
//! settings tuned for speed (no fsync) and for what pgconvoy needs (`wal_level=logical`,
//! prepared transactions, replication slots).
//!
//! When the process runs as root (initdb refuses that), the server binaries run as the
//! `postgres` OS user and the temp dir is handed to that user; client binaries (`psql`) always
//! run as the current user and connect over TCP.
//!
//! Servers never outlive their owner: besides `Drop`, every server has a watchdog, a tiny
//! detached `sh` whose stdin is a pipe held only by the owning process. When the owner goes away
//! (dropped, exits normally with the server in a `static`, or is SIGKILLed) the pipe closes, and
//! the watchdog stops the server (`-m immediate`) and removes the temp dir.

use std::ffi::CString;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Errors of the local-server harness.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No usable PostgreSQL server binaries were found.
    #[error(
        "postgresql server binaries (initdb, pg_ctl, postgres) not found; tried: {tried}. \
         install them with `apt-get install -y postgresql` (debian/ubuntu) or set PG_BIN to \
         the directory that holds initdb and pg_ctl"
    )]
    NotFound { tried: String },
    /// A program could not be started at all.
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file-system operation failed.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, so the server must run as the `postgres` os user, but that user does \
         not exist (create it, e.g. with `apt-get install -y postgresql`, or run as a normal user)"
    )]
    NoPostgresUser,
    /// `pg_ctl start` failed.
    #[error(
        "server in {} did not start on port {port}: {detail}\n--- tail of {} ---\n{log_tail}",
        data_dir.display(),
        log.display()
    )]
    StartFailed {
        data_dir: PathBuf,
        port: u16,
        detail: String,
        log: PathBuf,
        log_tail: String,
    },
}

type Result<T> = std::result::Result<T, LocalPgError>;

/// Directory holding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`, and
/// usually `psql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

fn has_server_tools(dir: &Path) -> bool {
    SERVER_TOOLS.iter().all(|t| dir.join(t).is_file())
}

impl PgBinaries {
    /// Finds the server binaries: `PG_BIN`, else `pg_config --bindir` (if that dir has the
    /// server tools; Debian's may be client-only), else the highest version in
    /// `/usr/lib/postgresql/*/bin` (and `/usr/pgsql-*/bin`, `/usr/local/pgsql/bin`), else
    /// `initdb` on `PATH` (symlinks resolved).
    pub fn locate() -> Result<PgBinaries> {
        let mut tried = Vec::new();

        if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            if has_server_tools(&dir) {
                return Ok(PgBinaries { bindir: dir });
            }
            // An explicit choice that is wrong is an error, not something to paper over.
            return Err(LocalPgError::NotFound {
                tried: format!("PG_BIN={} (no initdb/pg_ctl/postgres there)", dir.display()),
            });
        }
        tried.push("PG_BIN (unset)".to_string());

        match Command::new("pg_config").arg("--bindir").output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_tools(&dir) {
                    return Ok(PgBinaries { bindir: dir });
                }
                tried.push(format!(
                    "pg_config --bindir ({}: no server binaries)",
                    dir.display()
                ));
            }
            Ok(_) => tried.push("pg_config --bindir (failed)".to_string()),
            Err(_) => tried.push("pg_config --bindir (pg_config not on PATH)".to_string()),
        }

        let mut candidates: Vec<(Vec<u32>, PathBuf)> = Vec::new();
        for (parent, prefix, suffix) in [
            ("/usr/lib/postgresql", "", "bin"),
            ("/usr", "pgsql-", "bin"),
        ] {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(ver) = name.strip_prefix(prefix) else {
                    continue;
                };
                let key: Vec<u32> = ver.split('.').map_while(|p| p.parse().ok()).collect();
                if key.is_empty() {
                    continue;
                }
                let dir = entry.path().join(suffix);
                if has_server_tools(&dir) {
                    candidates.push((key, dir));
                }
            }
        }
        candidates.sort();
        if let Some((_, dir)) = candidates.pop() {
            return Ok(PgBinaries { bindir: dir });
        }
        tried.push("/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin (none)".to_string());

        let local = PathBuf::from("/usr/local/pgsql/bin");
        if has_server_tools(&local) {
            return Ok(PgBinaries { bindir: local });
        }
        tried.push("/usr/local/pgsql/bin (none)".to_string());

        if let Some(initdb) = find_on_path("initdb") {
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(dir) = real.parent() {
                if has_server_tools(dir) {
                    return Ok(PgBinaries {
                        bindir: dir.to_path_buf(),
                    });
                }
                tried.push(format!(
                    "initdb on PATH ({}: no pg_ctl/postgres beside it)",
                    real.display()
                ));
            }
        } else {
            tried.push("initdb on PATH (none)".to_string());
        }

        Err(LocalPgError::NotFound {
            tried: tried.join(", "),
        })
    }

    /// Path of a program in the bin dir.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`.
    pub fn version(&self) -> Result<String> {
        let out = run_checked(Command::new(self.tool("postgres")).arg("--version"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Major version number from [`PgBinaries::version`], e.g. `15`.
    pub fn major_version(&self) -> Result<u32> {
        let v = self.version()?;
        v.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LocalPgError::Command {
                command: format!("{} --version", self.tool("postgres").display()),
                status: "unparsable output".to_string(),
                stderr: v.clone(),
            })
    }

    /// `psql` from the bin dir, else from `PATH`.
    fn psql(&self) -> PathBuf {
        let p = self.tool("psql");
        if p.is_file() {
            p
        } else {
            find_on_path("psql").unwrap_or_else(|| PathBuf::from("psql"))
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Extra `postgresql.conf` settings, written after the defaults (so they override them).
    /// Values are written verbatim: quote strings yourself, e.g. `("search_path", "'x'")`.
    pub extra_settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, placed before the default ones (the first match wins).
    pub extra_hba_lines: Vec<String>,
    /// Where to create the temp dir. Default: `$TMPDIR` if its path is short, else `/tmp`
    /// (the unix socket path must stay under ~107 bytes).
    pub base_dir: Option<PathBuf>,
    /// Seconds `pg_ctl start` waits for the server.
    pub start_timeout_secs: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            extra_settings: Vec::new(),
            extra_hba_lines: Vec::new(),
            base_dir: None,
            start_timeout_secs: 60,
        }
    }
}

impl ServerOptions {
    /// Adds one `postgresql.conf` setting.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_settings.push((name.into(), value.into()));
        self
    }
}

/// OS user the server binaries run as, when that differs from the current one.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn server_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no nul");
    // SAFETY: getpwnam takes a valid C string; the returned record is read immediately. The
    // static buffer is not thread-safe, so serialize calls.
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(LocalPgError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Removes libpq's environment variables so they cannot redirect our commands.
fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(command_failed(cmd, &out))
    }
}

fn command_failed(cmd: &Command, out: &Output) -> LocalPgError {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    LocalPgError::Command {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr,
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LocalPgError + 'a {
    move |source| LocalPgError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Ports handed out by this process, so parallel starts never pick the same one.
static USED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn free_port() -> Result<u16> {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|source| LocalPgError::Io {
            what: "bind a port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0 && !used.contains(&port) {
            used.push(port);
            return Ok(port);
        }
    }
    Err(LocalPgError::Io {
        what: "find a free port on",
        path: PathBuf::from("127.0.0.1"),
        source: io::Error::new(io::ErrorKind::AddrInUse, "every port tried was taken"),
    })
}

fn default_base_dir() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 60 && t.is_dir() {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

/// Quotes a value for a libpq key/value connection string when needed.
fn dsn_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Last `max` bytes of a file from byte `from` on, as text.
fn file_tail(path: &Path, from: u64, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(max));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

const WATCHDOG_SCRIPT: &str =
    r#"read _x; "$1" stop -D "$2" -m immediate -s >/dev/null 2>&1; rm -rf "$3""#;

/// One running (or stopped, restartable) throwaway PostgreSQL server.
#[derive(Debug)]
pub struct LocalServer {
    bins: PgBinaries,
    run_as: Option<RunAs>,
    port: u16,
    root: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    start_timeout_secs: u32,
    running: bool,
    /// Removed on drop.
    tempdir: Option<tempfile::TempDir>,
    /// Watchdog and the write end of its stdin pipe.
    watchdog: Option<(Child, ChildStdin)>,
}

impl LocalServer {
    /// initdb's a fresh data dir in a new temp dir and starts a server on a free port.
    pub fn start(bins: &PgBinaries, opts: &ServerOptions) -> Result<LocalServer> {
        let mut server = LocalServer::prepare(bins, opts)?;
        server.initdb(opts)?;
        server.start_on_a_free_port()?;
        Ok(server)
    }

    /// Starts a hot standby of `primary`: `pg_basebackup -R` of it into a new
    /// temp dir, then a server on a free port that streams the primary's WAL.
    pub fn start_standby(primary: &LocalServer, opts: &ServerOptions) -> Result<LocalServer> {
        let mut server = LocalServer::prepare(&primary.bins, opts)?;
        let mut cmd = server.server_cmd("pg_basebackup");
        cmd.arg("-D")
            .arg(&server.data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-p",
            ])
            .arg(primary.port.to_string());
        run_checked(&mut cmd)?;
        let socket_dir = server.root.to_string_lossy().replace('\'', "''");
        let mut conf = format!(
            "\n# --- pgconvoy localpg standby ---\nunix_socket_directories = '{socket_dir}'\nhot_standby = on\n"
        );
        for (k, v) in &opts.extra_settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        server.append(&server.data_dir.join("postgresql.conf"), &conf)?;
        server.start_on_a_free_port()?;
        Ok(server)
    }

    /// A new temp dir (owned by the server user) with its watchdog; no data dir yet.
    fn prepare(bins: &PgBinaries, opts: &ServerOptions) -> Result<LocalServer> {
        let run_as = server_user()?;
        let base = opts.base_dir.clone().unwrap_or_else(default_base_dir);
        let tempdir = tempfile::Builder::new()
            .prefix("pgconvoy-")
            .tempdir_in(&base)
            .map_err(io_err("create a temp dir in", &base))?;
        let root = tempdir.path().to_path_buf();
        if let Some(u) = run_as {
            std::os::unix::fs::chown(&root, Some(u.uid), Some(u.gid))
                .map_err(io_err("chown to postgres", &root))?;
        }
        let mut server = LocalServer {
            bins: bins.clone(),
            run_as,
            port: 0,
            data_dir: root.join("data"),
            log: root.join("server.log"),
            root,
            start_timeout_secs: opts.start_timeout_secs.max(1),
            running: false,
            tempdir: Some(tempdir),
            watchdog: None,
        };
        // From here on, `server`'s Drop cleans up whatever fails.
        server.spawn_watchdog()?;
        Ok(server)
    }

    /// Starts the data dir on a free port, trying another one if it was taken meanwhile.
    fn start_on_a_free_port(&mut self) -> Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            self.set_port(port)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e @ LocalPgError::StartFailed { .. }) if port_conflict(&e) => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The data dir (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temp dir holding the data dir, socket and log; removed on drop.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The unix socket directory (usable as `host=` in a DSN).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// Binaries this server runs from.
    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    /// libpq key/value DSN for `dbname` as superuser `postgres` (trusted over TCP, no password).
    pub fn dsn(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            self.host(),
            self.port,
            dsn_value(dbname)
        )
    }

    /// DSN for `dbname` as `user` with `password` (checked with scram-sha-256 for users other
    /// than `postgres`).
    pub fn dsn_as(&self, dbname: &str, user: &str, password: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host(),
            self.port,
            dsn_value(user),
            dsn_value(password),
            dsn_value(dbname)
        )
    }

    /// `CREATE DATABASE name` (run through psql, so safe to call from inside a tokio runtime).
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// Runs `sql` (a script; several statements are fine) through
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1` against `dbname` and returns its stdout with
    /// trailing newlines removed. Blocking; safe inside a tokio runtime (it does not use one).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bins.psql());
        scrub_pg_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg("-d")
            .arg(self.dsn(dbname))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| LocalPgError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let script = sql.to_string();
        // Write from another thread so a large output cannot deadlock against a large input.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
        let out = child
            .wait_with_output()
            .map_err(|source| LocalPgError::Spawn {
                program: cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let _ = writer.join();
        if !out.status.success() {
            let mut e = command_failed(&cmd, &out);
            if let LocalPgError::Command { command, .. } = &mut e {
                let short: String = sql.chars().take(200).collect();
                *command = format!("psql on database {dbname} running `{short}`");
            }
            return Err(e);
        }
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        while s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    }

    /// `pg_ctl stop -m fast`; does nothing if the server is not running.
    pub fn stop(&mut self) -> Result<()> {
        if !self.is_running() {
            self.running = false;
            return Ok(());
        }
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "60", "-s"]);
        run_checked(&mut cmd)?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again: same data dir, same port. Does nothing if it runs.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            self.running = true;
            return Ok(());
        }
        self.pg_ctl_start()
    }

    /// Stops (fast) and starts the server again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Whether the postmaster named in `postmaster.pid` is alive.
    pub fn is_running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill with signal 0 only checks for existence/permission.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }

    /// A command for a server binary, run as the `postgres` OS user when we are root.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bins.tool(tool));
        scrub_pg_env(&mut cmd);
        cmd.current_dir(&self.root).env("LC_ALL", "C");
        if let Some(u) = self.run_as {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("HOME", &self.root).env("USER", "postgres");
            cmd.env("LOGNAME", "postgres");
        }
        cmd
    }

    fn spawn_watchdog(&mut self) -> Result<()> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgconvoy-watchdog")
            .arg(self.bins.tool("pg_ctl"))
            .arg(&self.data_dir)
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C / job control on the owner do not reach it; only the
            // pipe closing does.
            .process_group(0);
        scrub_pg_env(&mut cmd);
        if let Some(u) = self.run_as {
            // The temp dir belongs to postgres, which may remove it from sticky /tmp.
            cmd.uid(u.uid).gid(u.gid);
        }
        let mut child = cmd.spawn().map_err(|source| LocalPgError::Spawn {
            program: "/bin/sh (watchdog)".to_string(),
            source,
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        self.watchdog = Some((child, stdin));
        Ok(())
    }

    fn initdb(&self, opts: &ServerOptions) -> Result<()> {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        run_checked(&mut cmd)?;

        let mut conf = String::from("\n# --- pgconvoy localpg ---\n");
        let socket_dir = self.root.to_string_lossy().replace('\'', "''");
        for (k, v) in [
            ("listen_addresses", "'127.0.0.1'".to_string()),
            ("unix_socket_directories", format!("'{socket_dir}'")),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("wal_level", "logical".into()),
            ("max_prepared_transactions", "20".into()),
            ("max_connections", "200".into()),
            ("max_wal_senders", "10".into()),
            ("max_replication_slots", "10".into()),
            ("shared_buffers", "32MB".into()),
            ("log_min_messages", "warning".into()),
        ] {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        for (k, v) in &opts.extra_settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        conf.push_str("include = 'pgconvoy_port.conf'\n");
        self.append(&self.data_dir.join("postgresql.conf"), &conf)?;

        let mut hba = String::from("# written by pgconvoy localpg\n");
        for line in &opts.extra_hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        );
        self.write(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    fn set_port(&mut self, port: u16) -> Result<()> {
        self.port = port;
        self.write(
            &self.data_dir.join("pgconvoy_port.conf"),
            &format!("port = {port}\n"),
        )
    }

    /// Writes a file in the data dir, owned by the server user.
    fn write(&self, path: &Path, text: &str) -> Result<()> {
        std::fs::write(path, text).map_err(io_err("write", path))?;
        self.own(path)
    }

    fn append(&self, path: &Path, text: &str) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err("open", path))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("write", path))?;
        self.own(path)
    }

    fn own(&self, path: &Path) -> Result<()> {
        if let Some(u) = self.run_as {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .map_err(io_err("chown to postgres", path))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-s", "-t"])
            .arg(self.start_timeout_secs.to_string());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LocalPgError::Spawn {
                program: describe(&cmd),
                source,
            })?;
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        // pg_ctl may give up (timeout) while the postmaster still runs: make sure it does not.
        if self.is_running() {
            let mut stop = self.server_cmd("pg_ctl");
            stop.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-s"]);
            let _ = stop.stdin(Stdio::null()).output();
        }
        self.running = false;
        // The postmaster may still be writing its last words.
        std::thread::sleep(Duration::from_millis(50));
        let detail = command_failed(&cmd, &out).to_string();
        Err(LocalPgError::StartFailed {
            data_dir: self.data_dir.clone(),
            port: self.port,
            detail,
            log: self.log.clone(),
            log_tail: file_tail(&self.log, log_start, 4000),
        })
    }
}

fn port_conflict(e: &LocalPgError) -> bool {
    let LocalPgError::StartFailed { log_tail, .. } = e else {
        return false;
    };
    [
        "Address already in use",
        "could not bind",
        "could not create any TCP/IP sockets",
    ]
    .iter()
    .any(|m| log_tail.contains(m))
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if self.is_running() {
            let mut cmd = self.server_cmd("pg_ctl");
            cmd.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-s"]);
            let _ = cmd.stdin(Stdio::null()).output();
        }
        if let Some(t) = self.tempdir.take() {
            let _ = t.close();
        }
        // Closing the pipe lets the watchdog finish (nothing left to do); reap it.
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Several independent servers, e.g. a primary and replicas for pgconvoy to orchestrate.
#[derive(Debug)]
pub struct LocalCluster {
    pub servers: Vec<LocalServer>,
}

impl LocalCluster {
    /// Starts `n` servers with [`PgBinaries::locate`]d binaries.
    pub fn start(n: usize, opts: &ServerOptions) -> Result<LocalCluster> {
        Self::start_with(&PgBinaries::locate()?, n, opts)
    }

    /// Starts `n` servers from `bins` (one after the other).
    pub fn start_with(bins: &PgBinaries, n: usize, opts: &ServerOptions) -> Result<LocalCluster> {
        let servers = (0..n)
            .map(|_| LocalServer::start(bins, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(LocalCluster { servers })
    }

    /// DSN of database `dbname` on every server.
    pub fn dsns(&self, dbname: &str) -> Vec<String> {
        self.servers.iter().map(|s| s.dsn(dbname)).collect()
    }

    /// Creates database `name` on every server.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.servers
            .iter()
            .try_for_each(|s| s.create_database(name))
    }
}

impl std::ops::Index<usize> for LocalCluster {
    type Output = LocalServer;
    fn index(&self, i: usize) -> &LocalServer {
        &self.servers[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn dsn_quoting() {
        assert_eq!(dsn_value("app"), "app");
        assert_eq!(dsn_value(""), "''");
        assert_eq!(dsn_value("a b"), "'a b'");
        assert_eq!(dsn_value("it's"), r"'it\'s'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let failed = |tail: &str| LocalPgError::StartFailed {
            data_dir: PathBuf::from("/tmp/x/data"),
            port: 5999,
            detail: "pg_ctl: could not start server".into(),
            log: PathBuf::from("/tmp/x/server.log"),
            log_tail: tail.into(),
        };
        let busy = failed(
            "WARNING:  could not create listen socket for \"127.0.0.1\"\n\
             FATAL:  could not create any TCP/IP sockets",
        );
        assert!(port_conflict(&busy));
        let msg = busy.to_string();
        assert!(msg.starts_with("server in /tmp/x/data did not start on port 5999"));
        assert!(msg.contains("could not create any TCP/IP sockets"), "{msg}");
        assert!(!port_conflict(&failed(
            "FATAL:  data directory has wrong ownership"
        )));
    }

    #[test]
    fn describe_joins_args() {
        let mut c = Command::new("pg_ctl");
        c.arg("start").arg(OsStr::new("-w"));
        assert_eq!(describe(&c), "pg_ctl start -w");
    }
}
