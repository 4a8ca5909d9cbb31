//! Who this coordinator is: OS user, host, process id, when it started, and the run key
//! its sessions carry on every node, so that ledgers (`applied_by`), the cluster lock and
//! `pgconvoy unlock` can name it.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::output::timestamp::rfc3339;

/// The first key of the shared advisory lock every pgconvoy session holds for its whole
/// life (two-integer form, `pg_locks.objsubid = 2`): "PGCV". The second key is the run
/// key ([`Identity::run_key`]), so all sessions of one coordinator, on every node, can be
/// found (and ended) from another process.
pub const RUN_LOCK_CLASS: i32 = 0x5047_4356;

/// This process, as the ledgers and the lock name it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub os_user: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339 UTC, when this process first asked who it is (about when it started).
    pub since: String,
    /// 31 bits, the second key of this process's run lock on every node.
    pub run_key: i32,
}

impl Identity {
    /// This process (computed once).
    pub fn current() -> &'static Identity {
        static ME: OnceLock<Identity> = OnceLock::new();
        ME.get_or_init(|| {
            let now = SystemTime::now();
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown-host".into());
            let pid = std::process::id();
            let nanos = now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            // Host, pid and start time together: two coordinators never share a key in
            // practice, even with equal pids on two hosts.
            let digest =
                crate::patches::patch::checksum(format!("{host}\n{pid}\n{nanos}").as_bytes());
            let run_key = i32::from_str_radix(&digest[..7], 16).unwrap_or(1);
            Identity {
                os_user: os_user(),
                host,
                pid,
                since: rfc3339(now),
                run_key,
            }
        })
    }

    /// `applied_by` of ledger rows this process writes, without the database user (the
    /// ledger statements append ` as ` and the session's `session_user`):
    /// `pgconvoy 0.1.0 upgrade by alice@db-admin pid 4242`.
    pub fn applied_by(&self, action: &str) -> String {
        format!(
            "pgconvoy {} {action} by {}@{} pid {}",
            env!("CARGO_PKG_VERSION"),
            self.os_user,
            self.host,
            self.pid
        )
    }

    /// What the cluster lock's query says about its holder (read back by `unlock` from
    /// `pg_stat_activity.query`): `pgconvoy upgrade by alice@db-admin pid 4242 since …`.
    pub fn lock_comment(&self, action: &str) -> String {
        let text = format!(
            "pgconvoy {action} by {}@{} pid {} since {}",
            self.os_user, self.host, self.pid, self.since
        );
        // It sits inside /* … */: nothing may end the comment early.
        text.replace("*/", "* /").replace("/*", "/ *")
    }
}

/// The name of the effective user, or its uid when it has none.
fn os_user() -> String {
    // SAFETY: geteuid has no preconditions; getpwuid_r writes only into the buffers it
    // is given, whose sizes are passed along, and the result is read only on success.
    unsafe {
        let uid = libc::geteuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc == 0 && !out.is_null() && !pwd.pw_name.is_null() {
            let name = std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned();
            if !name.is_empty() {
                return name;
            }
        }
        format!("uid{uid}")
    }
}

/// What a lock comment written by [`Identity::lock_comment`] says, read back from a query
/// text; `None` when the text holds none.
pub fn parse_lock_comment(query: &str) -> Option<String> {
    let start = query.find("/* pgconvoy ")? + 3;
    let end = query[start..].find(" */")? + start;
    Some(query[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_user_host_pid() {
        let me = Identity::current();
        assert!(!me.os_user.is_empty());
        assert!(me.run_key > 0);
        let by = me.applied_by("stamp");
        assert!(by.contains(" stamp by "), "{by}");
        assert!(by.ends_with(&format!("pid {}", std::process::id())), "{by}");
    }

    #[test]
    fn lock_comments_round_trip() {
        let me = Identity::current();
        let comment = me.lock_comment("upgrade");
        let query = format!("/* {comment} */ SELECT pg_try_advisory_lock($1)");
        assert_eq!(
            parse_lock_comment(&query).as_deref(),
            Some(comment.as_str())
        );
        assert_eq!(parse_lock_comment("SELECT 1"), None);
        let odd = Identity {
            os_user: "a*/b".into(),
            ..me.clone()
        };
        assert!(!odd.lock_comment("x").contains("*/"));
    }
}
