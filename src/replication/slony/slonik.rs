//! Running `slonik`: the script goes in on stdin, passwords through a passfile named by
//! `PGPASSFILE` (never on the command line, in the script, or in anything printed), and the
//! output comes back with every password scrubbed out.
//!
//! On Linux the passfile is a memory-only file (`memfd`, mode 0600) that slonik inherits
//! as `/dev/fd/N`: it disappears with the processes, also when the coordinator is SIGKILLed.
//! Elsewhere it is a 0600 temp file removed when slonik has finished.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::error::SlonikError;
use crate::config::NodeConfig;
use crate::db::libpq::params::HostName;

/// What one slonik run printed (passwords scrubbed) and whether it succeeded.
#[derive(Debug, Clone)]
pub struct SlonikRun {
    pub ok: bool,
    /// stdout then stderr.
    pub output: String,
    /// The exit status as text, e.g. `exit status: 255`.
    pub status: String,
}

/// A statement the server refused, as slonik reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlonikFailure {
    /// The statement text slonik sent (from `PGRES_FATAL_ERROR [stmt] - …`).
    pub statement: Option<String>,
    /// The server's message (`ERROR: …`, `DETAIL: …`, `HINT: …`), or slonik's own words.
    pub message: String,
}

impl SlonikRun {
    /// The first failure slonik reported.
    pub fn failure(&self) -> SlonikFailure {
        parse_failure(&self.output)
    }
}

/// Splits slonik's report of a refused statement, `PGRES_FATAL_ERROR [stmt] - ERROR: …`,
/// keeping the server's message, detail and hint and dropping the context lines about
/// Slony's own functions.
pub fn parse_failure(output: &str) -> SlonikFailure {
    const MARK: &str = "PGRES_FATAL_ERROR [";
    if let Some(at) = output.find(MARK) {
        let rest = &output[at + MARK.len()..];
        if let Some(end) = rest.find("] - ") {
            let statement = rest[..end].to_string();
            let mut lines = Vec::new();
            for line in rest[end + 4..].lines() {
                let t = line.trim_end();
                if t.starts_with("CONTEXT:")
                    || t.starts_with("QUERY:")
                    || t.starts_with("PGRES_")
                    || (t.starts_with('<') && t.contains(">:"))
                {
                    break;
                }
                if !t.trim().is_empty() {
                    lines.push(t.trim().to_string());
                }
            }
            // `LINE n: …` and the caret line point into slonik's copy of the statement.
            let message = lines
                .iter()
                .filter(|l| !l.starts_with("LINE ") && !l.chars().all(|c| c == '^' || c == ' '))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            return SlonikFailure {
                statement: Some(statement),
                message,
            };
        }
    }
    let message = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    SlonikFailure {
        statement: None,
        message: if message.is_empty() {
            "slonik failed without a message".into()
        } else {
            message
        },
    }
}

/// Session settings slonik's connections get through `PGOPTIONS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlonikSession {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
}

/// How to run slonik for a cluster.
pub struct Slonik {
    program: PathBuf,
    /// `host:port:db:user:password` lines for the nodes whose password pgconvoy knows.
    passfile: Vec<String>,
    /// What to scrub from slonik's output.
    passwords: Vec<String>,
    session: SlonikSession,
}

impl std::fmt::Debug for Slonik {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slonik")
            .field("program", &self.program)
            .field("passfile_lines", &self.passfile.len())
            .finish()
    }
}

/// Escapes a `.pgpass` field.
fn pgpass_field(text: &str) -> String {
    text.replace('\\', "\\\\").replace(':', "\\:")
}

/// The `.pgpass` lines that give libpq `node`'s passwords: one per host whose password
/// pgconvoy resolved, matching that host, port, database and user exactly.
pub fn pgpass_lines(node: &NodeConfig) -> Vec<String> {
    let c = &node.conn;
    c.hosts
        .iter()
        .filter_map(|h| {
            let password = h.password.as_ref()?;
            let host = match (&h.name, &h.hostaddr) {
                (HostName::Tcp(n), _) => n.clone(),
                (HostName::Socket(p), _) => p.display().to_string(),
                (HostName::AddressOnly, Some(a)) => a.to_string(),
                (HostName::AddressOnly, None) => return None,
            };
            Some(format!(
                "{}:{}:{}:{}:{}",
                pgpass_field(&host),
                h.port,
                pgpass_field(&c.dbname),
                pgpass_field(&c.user),
                pgpass_field(password.secret.expose())
            ))
        })
        .collect()
}

/// `PGOPTIONS` for slonik's sessions: the user's own, then ours.
fn pgoptions(session: &SlonikSession) -> Option<String> {
    let mut opts: Vec<String> = std::env::var("PGOPTIONS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .into_iter()
        .collect();
    if let Some(t) = session.lock_timeout {
        opts.push(format!("-c lock_timeout={}", t.as_millis()));
    }
    if let Some(t) = session.statement_timeout {
        opts.push(format!("-c statement_timeout={}", t.as_millis()));
    }
    (!opts.is_empty()).then(|| opts.join(" "))
}

impl Slonik {
    pub fn new<'a>(
        program: &Path,
        nodes: impl IntoIterator<Item = &'a NodeConfig>,
        session: SlonikSession,
    ) -> Slonik {
        let mut passfile = Vec::new();
        let mut passwords = Vec::new();
        for node in nodes {
            passfile.extend(pgpass_lines(node));
            for h in &node.conn.hosts {
                if let Some(p) = &h.password {
                    let p = p.secret.expose().to_string();
                    if !p.is_empty() && !passwords.contains(&p) {
                        passwords.push(p);
                    }
                }
            }
        }
        // Longest first, so a password containing another is scrubbed whole.
        passwords.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Slonik {
            program: program.to_path_buf(),
            passfile,
            passwords,
            session,
        }
    }

    /// `text` with every known password replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut s = text.to_string();
        for p in &self.passwords {
            s = s.replace(p.as_str(), "********");
        }
        s
    }

    /// The passfile's content: our lines, then the user's own passfile (`PGPASSFILE`, else
    /// `~/.pgpass`) so nodes whose password pgconvoy does not know still find theirs.
    fn passfile_text(&self) -> String {
        let mut text = self.passfile.join("\n");
        text.push('\n');
        let own = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        if let Some(own) = own.and_then(|p| std::fs::read_to_string(p).ok()) {
            text.push_str(&own);
            text.push('\n');
        }
        text
    }

    /// Runs `script` through slonik; fails only when slonik cannot be run at all.
    pub async fn run(&self, script: &str) -> Result<SlonikRun, SlonikError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Interrupted runs must not leave slonik committing behind our back.
            .kill_on_drop(true)
            // libpq prefers PGPASSWORD to any passfile; the config already folded it into
            // every node's password, which the passfile carries.
            .env_remove("PGPASSWORD")
            .env("PGAPPNAME", crate::db::cluster::APPLICATION_NAME);
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            if let Some(t) = self.session.connect_timeout {
                cmd.env("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string());
            }
        }
        if let Some(o) = pgoptions(&self.session) {
            cmd.env("PGOPTIONS", o);
        }
        let _passfile = if self.passfile.is_empty() {
            None
        } else {
            Some(Passfile::create(&self.passfile_text(), &mut cmd).map_err(SlonikError::Passfile)?)
        };
        let mut child = cmd.spawn().map_err(|source| SlonikError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let script = script.to_string();
        // Write while slonik runs: a large script must not deadlock against its output.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(script.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| SlonikError::Wait {
                program: self.program.clone(),
                source,
            })?;
        let _ = writer.await;
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(SlonikRun {
            ok: out.status.success(),
            output: self.scrub(&output),
            status: out.status.to_string(),
        })
    }
}

/// The passfile handed to one slonik process; gone when dropped (held only for that).
#[allow(dead_code)]
enum Passfile {
    #[cfg(target_os = "linux")]
    Memory(std::os::fd::OwnedFd),
    Temp(tempfile::NamedTempFile),
}

impl Passfile {
    /// Writes `text` to a fresh 0600 passfile and points `cmd`'s `PGPASSFILE` at it.
    fn create(text: &str, cmd: &mut tokio::process::Command) -> std::io::Result<Passfile> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            let name = std::ffi::CString::new("pgconvoy-pgpass").expect("no nul");
            // SAFETY: memfd_create takes a valid C string and flags; a negative result is an error.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: fd is a fresh descriptor we own.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut file = std::fs::File::from(owned.try_clone()?);
                // libpq ignores a passfile that group or others may read.
                // SAFETY: fchmod on a descriptor we own.
                if unsafe { libc::fchmod(fd, 0o600) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                file.write_all(text.as_bytes())?;
                file.flush()?;
                let raw = owned.as_raw_fd();
                cmd.env("PGPASSFILE", format!("/dev/fd/{raw}"));
                // SAFETY: runs in the child between fork and exec; fcntl is async-signal-safe.
                // Only the child's copy loses close-on-exec, so no other process inherits it.
                unsafe {
                    cmd.pre_exec(move || {
                        let flags = libc::fcntl(raw, libc::F_GETFD);
                        if flags < 0
                            || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                return Ok(Passfile::Memory(owned));
            }
        }
        let mut file = tempfile::Builder::new()
            .prefix("pgconvoy-pgpass-")
            .tempfile()?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        cmd.env("PGPASSFILE", file.path());
        Ok(Passfile::Temp(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeName, Role};

    fn node(dsn: &str) -> NodeConfig {
        let conn = crate::db::libpq::params::resolve(
            dsn,
            &crate::db::libpq::params::FixedEnvironment::new().var("PGUSER", "me"),
            None,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        NodeConfig::new(NodeName::parse("n").unwrap(), Role::Master, conn)
    }

    #[test]
    fn pgpass_lines_match_what_the_dsn_names() {
        assert_eq!(
            pgpass_lines(&node(
                "host=db0 port=5433 dbname=app user=mig password='s3:c\\\\r'"
            )),
            vec!["db0:5433:app:mig:s3\\:c\\\\r"]
        );
        assert_eq!(
            pgpass_lines(&node("host=a,b port=1,2 user=u password=p")),
            vec!["a:1:u:u:p", "b:2:u:u:p"]
        );
        assert_eq!(
            pgpass_lines(&node("host=/run/pg dbname=x password=p")),
            vec!["/run/pg:5432:x:me:p"]
        );
        assert!(pgpass_lines(&node("host=db0 dbname=app")).is_empty());
    }

    #[test]
    fn output_is_scrubbed() {
        let nodes = [node("host=a password=abc"), node("host=b password=abcdef")];
        let s = Slonik::new(Path::new("slonik"), nodes.iter(), SlonikSession::default());
        assert_eq!(s.scrub("x abcdef y abc z"), "x ******** y ******** z");
        assert!(!format!("{s:?}").contains("abc"));
    }

    #[test]
    fn failures_are_parsed() {
        let out = "<stdin>:5: PGRES_FATAL_ERROR [\nINSERT INTO public.nope VALUES (1);] - ERROR:  relation \"public.nope\" does not exist\nLINE 2: INSERT INTO public.nope VALUES (1);\n                    ^\nQUERY:  \nINSERT INTO public.nope VALUES (1);\nCONTEXT:  PL/pgSQL function _convoy.ddlcapture(text,text) line 60 at EXECUTE\n";
        let f = parse_failure(out);
        assert_eq!(
            f.statement.as_deref(),
            Some("\nINSERT INTO public.nope VALUES (1);")
        );
        assert_eq!(f.message, "ERROR:  relation \"public.nope\" does not exist");
        let f = parse_failure("<stdin>:3: could not connect to server\n");
        assert_eq!(f.statement, None);
        assert!(f.message.contains("could not connect"));
    }

    #[tokio::test]
    async fn passwords_reach_slonik_only_through_the_passfile() {
        // A stand-in slonik that prints its environment, arguments and passfile.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-slonik");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"args:$*\"\necho \"file:$PGPASSFILE\"\ncat \"$PGPASSFILE\" | head -1 | cut -d: -f1-4\nstat -L -c 'mode:%a' \"$PGPASSFILE\"\ncat >/dev/null\necho 'said s3cret' >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let nodes = [node(
            "host=db0 port=5432 dbname=app user=mig password=s3cret",
        )];
        let s = Slonik::new(&fake, nodes.iter(), SlonikSession::default());
        let run = s.run("cluster name = c;\n").await.unwrap();
        assert!(!run.ok);
        assert!(run.output.contains("args:\n"), "{}", run.output);
        assert!(run.output.contains("db0:5432:app:mig"), "{}", run.output);
        assert!(run.output.contains("mode:600"), "{}", run.output);
        assert!(!run.output.contains("s3cret"), "{}", run.output);
        assert!(run.output.contains("said ********"), "{}", run.output);
    }
}
