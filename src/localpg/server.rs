//! One throwaway server: its temp dir, initdb, start on a free port, a watchdog that
//! stops it when its owner goes away, stop and restart, and a standby of it. For TLS
//! tests it can serve TLS with a certificate from [`super::certs::TestCa`], TCP over TLS
//! only if asked (`hostssl`); for network-failure tests it can run inside a
//! [`super::netns::NetNamespace`], listening on the namespace's address.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::binaries::PgBinaries;
use super::command::{
    command_failed, describe, io_err, run_checked, scrub_pg_env, server_user, RunAs,
};
use super::{LocalPgError, Result};
use crate::db::libpq::conninfo::quote_value;
use crate::db::quote::quote_ident;

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
    /// The address the server listens on and the harness connects to. Default `127.0.0.1`.
    pub listen_address: Option<String>,
    /// Run the server inside this network namespace (see [`super::netns::NetNamespace::path`]).
    pub netns: Option<PathBuf>,
    /// Serve TLS with this certificate.
    pub tls: Option<ServerTls>,
    /// Listen on this port instead of a free one (`pgconvoy demo --port-base`); a port in
    /// use is an error, not retried elsewhere.
    pub port: Option<u16>,
}

/// A server's TLS: its certificate, the CA its clients' certificates must chain to, and
/// whether plain TCP connections are refused.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: super::certs::CertFiles,
    /// `ssl_ca_file`: needed for `cert` authentication and `clientcert=…` in pg_hba.conf.
    pub client_ca: Option<PathBuf>,
    /// TCP lines of the default pg_hba.conf are `hostssl`, so plain TCP sessions are refused.
    pub tls_only: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            extra_settings: Vec::new(),
            extra_hba_lines: Vec::new(),
            base_dir: None,
            start_timeout_secs: 60,
            listen_address: None,
            netns: None,
            tls: None,
            port: None,
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

/// A chosen port must be free on 127.0.0.1 (a clear error instead of pg_ctl's log).
fn check_port_free(port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|source| LocalPgError::Io {
            what: "listen on",
            path: PathBuf::from(format!("127.0.0.1:{port}")),
            source,
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

/// Last `max` bytes of a file from byte `from` on, as text.
pub(super) fn file_tail(path: &Path, from: u64, max: u64) -> String {
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
    listen_address: String,
    /// Open handle of the network namespace the server runs in.
    netns: Option<std::fs::File>,
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
        if let Some(port) = opts.port {
            // Before initdb: a taken port fails at once, not seconds later.
            check_port_free(port)?;
        }
        let mut server = LocalServer::prepare(bins, opts)?;
        server.initdb(opts)?;
        match opts.port {
            Some(port) => {
                server.set_port(port)?;
                server.pg_ctl_start()?;
            }
            None => server.start_on_a_free_port()?,
        }
        Ok(server)
    }

    /// Starts a hot standby of `primary`: `pg_basebackup -R` of it into a new
    /// temp dir, then a server on a free port that streams the primary's WAL.
    pub fn start_standby(primary: &LocalServer, opts: &ServerOptions) -> Result<LocalServer> {
        let mut server = LocalServer::prepare(&primary.bins, opts)?;
        let mut cmd = server.server_cmd("pg_basebackup");
        cmd.arg("-D")
            .arg(&server.data_dir)
            .arg("-h")
            .arg(primary.host())
            .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-p"])
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
            listen_address: opts
                .listen_address
                .clone()
                .unwrap_or_else(|| "127.0.0.1".to_string()),
            netns: match &opts.netns {
                Some(p) => Some(std::fs::File::open(p).map_err(io_err("open", p))?),
                None => None,
            },
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

    /// The address the server listens on: `127.0.0.1` unless the options said otherwise.
    pub fn host(&self) -> &str {
        &self.listen_address
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
            quote_value(dbname)
        )
    }

    /// DSN for `dbname` as `user` with `password` (checked with scram-sha-256 for users other
    /// than `postgres`).
    pub fn dsn_as(&self, dbname: &str, user: &str, password: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host(),
            self.port,
            quote_value(user),
            quote_value(password),
            quote_value(dbname)
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
        if self.run_as.is_some() {
            cmd.env("HOME", &self.root).env("USER", "postgres");
            cmd.env("LOGNAME", "postgres");
        }
        match &self.netns {
            // std switches the user before running pre_exec hooks, and joining a
            // namespace needs root: join first, then switch by hand.
            Some(ns) => {
                let fd = ns.as_raw_fd();
                let run_as = self.run_as;
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        if let Some(u) = run_as {
                            if libc::setgroups(0, std::ptr::null()) != 0
                                || libc::setgid(u.gid) != 0
                                || libc::setuid(u.uid) != 0
                            {
                                return Err(io::Error::last_os_error());
                            }
                        }
                        Ok(())
                    });
                }
            }
            None => {
                if let Some(u) = self.run_as {
                    cmd.uid(u.uid).gid(u.gid);
                }
            }
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
            ("listen_addresses", format!("'{}'", self.listen_address)),
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
        if let Some(tls) = &opts.tls {
            self.install_tls(tls, &mut conf)?;
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
        let host = if opts.tls.as_ref().is_some_and(|t| t.tls_only) {
            "hostssl"
        } else {
            "host"
        };
        let net = if self.listen_address.contains(':') {
            format!("{}/128", self.listen_address)
        } else {
            format!("{}/32", self.listen_address)
        };
        hba.push_str(&format!(
            "local all all trust\n\
             {host} all postgres {net} trust\n\
             {host} replication all {net} trust\n\
             {host} all all {net} scram-sha-256\n"
        ));
        self.write(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    /// Copies the certificate, key and client CA into the data dir (the key readable by
    /// the server user only, as the server demands) and turns TLS on.
    fn install_tls(&self, tls: &ServerTls, conf: &mut String) -> Result<()> {
        let copy = |from: &Path, name: &str| -> Result<()> {
            let to = self.data_dir.join(name);
            std::fs::copy(from, &to).map_err(io_err("copy", from))?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(io_err("chmod", &to))?;
            self.own(&to)
        };
        copy(&tls.cert.cert, "server.crt")?;
        copy(&tls.cert.key, "server.key")?;
        conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        if let Some(ca) = &tls.client_ca {
            copy(ca, "client_ca.crt")?;
            conf.push_str("ssl_ca_file = 'client_ca.crt'\n");
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
