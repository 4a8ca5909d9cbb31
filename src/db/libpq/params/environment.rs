//! Where connection defaults come from: the process's environment variables, home
//! directory and OS user, or a fixed environment for tests.

use std::path::{Path, PathBuf};

/// Where the process gets its defaults from; tests pass their own.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    /// `$HOME`, else the account's home directory (libpq's `pqGetHomeDirectory`).
    fn home_dir(&self) -> Option<PathBuf>;
    /// The OS user name: libpq's default `user`.
    fn os_user(&self) -> Option<String>;
    /// Where libpq looks for a server when no host is given.
    fn default_socket_dir(&self) -> PathBuf;
    /// The system service file's directory when `PGSYSCONFDIR` is unset.
    fn default_sysconfdir(&self) -> Option<PathBuf>;
}

/// The real environment of this process.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Some(PathBuf::from(h)),
            None => passwd_entry().map(|(_, home)| home),
        }
    }

    fn os_user(&self) -> Option<String> {
        passwd_entry().map(|(name, _)| name)
    }

    /// Debian and Ubuntu build libpq with `/var/run/postgresql`; upstream uses `/tmp`.
    fn default_socket_dir(&self) -> PathBuf {
        let debian = Path::new("/var/run/postgresql");
        if debian.is_dir() {
            debian.to_path_buf()
        } else {
            PathBuf::from("/tmp")
        }
    }

    /// Where distribution packages of libpq look for `pg_service.conf`.
    fn default_sysconfdir(&self) -> Option<PathBuf> {
        [
            "/etc/postgresql-common",
            "/etc/sysconfig/pgsql",
            "/usr/local/pgsql/etc",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
    }
}

/// A made-up environment: the variables given and nothing else, a home directory of
/// one's choosing, the OS user `postgres`, and no system service file. For tests, and
/// for anything that must not depend on who runs it.
#[derive(Debug, Clone, Default)]
pub struct FixedEnvironment {
    pub vars: std::collections::HashMap<String, String>,
    pub home: Option<PathBuf>,
    pub sysconfdir: Option<PathBuf>,
}

impl FixedEnvironment {
    pub fn new() -> FixedEnvironment {
        FixedEnvironment::default()
    }

    pub fn var(mut self, name: &str, value: &str) -> FixedEnvironment {
        self.vars.insert(name.into(), value.into());
        self
    }

    pub fn home(mut self, dir: &Path) -> FixedEnvironment {
        self.home = Some(dir.to_path_buf());
        self
    }
}

impl Environment for FixedEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
    fn os_user(&self) -> Option<String> {
        Some("postgres".into())
    }
    fn default_socket_dir(&self) -> PathBuf {
        PathBuf::from("/var/run/postgresql")
    }
    fn default_sysconfdir(&self) -> Option<PathBuf> {
        self.sysconfdir.clone()
    }
}

/// The effective user's name and home directory from the password database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the reads below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point at NUL-terminated strings inside buf.
    let (name, dir) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name),
            std::ffi::CStr::from_ptr(pw.pw_dir),
        )
    };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(dir.to_string_lossy().into_owned()),
    ))
}
