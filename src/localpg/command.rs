//! Running the server's programs: as the `postgres` OS user when we are root, with
//! libpq's environment removed, failures described with their stderr.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use super::{LocalPgError, Result};

/// OS user the server binaries run as, when that differs from the current one.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunAs {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) fn server_user() -> Result<Option<RunAs>> {
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

pub(super) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Removes libpq's environment variables so they cannot redirect our commands.
pub fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

pub(super) fn run_checked(cmd: &mut Command) -> Result<Output> {
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

pub(super) fn command_failed(cmd: &Command, out: &Output) -> LocalPgError {
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

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LocalPgError + 'a {
    move |source| LocalPgError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn describe_joins_args() {
        let mut c = Command::new("pg_ctl");
        c.arg("start").arg(OsStr::new("-w"));
        assert_eq!(describe(&c), "pg_ctl start -w");
    }
}
