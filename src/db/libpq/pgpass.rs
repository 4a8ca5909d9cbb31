//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), matched as libpq's
//! `passwordFromFile` does: `host:port:dbname:user:password` lines, `*` as a whole field
//! matches anything, `\` escapes `:` and `\`, `#` starts a comment line, the first match
//! wins, and a file that group or others may read is ignored with a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `localhost` in a password file matches a connection over the default Unix socket.
const LOCALHOST: &str = "localhost";

/// What looking into a password file gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No file, or no line matched.
    NotFound,
    Found(String),
    /// The file exists but was not used; the text says why (for a warning).
    Ignored(String),
}

/// The fields a line is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// The host as given (`host=`, else `hostaddr=`), or a socket directory.
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
    /// The socket directory used when no host is given; it also matches `localhost`.
    pub default_socket_dir: &'a str,
}

/// Looks `key` up in the file at `path`.
pub fn lookup(path: &Path, key: Key<'_>) -> Lookup {
    let Ok(meta) = std::fs::metadata(path) else {
        return Lookup::NotFound;
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!(
            "password file `{}` is not a plain file",
            path.display()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "password file `{}` has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        ));
    }
    // Read as bytes: a password file need not be UTF-8 in the lines we skip.
    let Ok(bytes) = std::fs::read(path) else {
        return Lookup::NotFound;
    };
    match find(&String::from_utf8_lossy(&bytes), key) {
        Some(p) => Lookup::Found(p),
        None => Lookup::NotFound,
    }
}

/// The first matching line's password in the file's `text`.
pub fn find(text: &str, key: Key<'_>) -> Option<String> {
    if key.dbname.is_empty() || key.user.is_empty() {
        return None;
    }
    let host = if key.host.is_empty() || key.host == key.default_socket_dir {
        LOCALHOST
    } else {
        key.host
    };
    let port = key.port.to_string();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut matched = true;
        for token in [host, port.as_str(), key.dbname, key.user] {
            match field_matches(rest, token) {
                Some(r) => rest = r,
                None => {
                    matched = false;
                    break;
                }
            }
        }
        if matched {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// libpq's `pwdfMatchesString`: if the field at the start of `buf` matches `token`,
/// the rest of the line after the field's `:`.
fn field_matches<'a>(buf: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = buf.strip_prefix("*:") {
        return Some(rest);
    }
    let b = buf.as_bytes();
    let t = token.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < b.len() {
        let mut escaped = false;
        if b[i] == b'\\' {
            i += 1;
            escaped = true;
            if i >= b.len() {
                return None;
            }
        }
        if b[i] == b':' && j == t.len() && !escaped {
            return Some(&buf[i + 1..]);
        }
        if j == t.len() || b[i] != t[j] {
            return None;
        }
        i += 1;
        j += 1;
    }
    None
}

/// The password field ends at an unescaped `:` (or the end of the line); `\x` is `x`.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' {
            break;
        }
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(host: &'a str, port: u16, db: &'a str, user: &'a str) -> Key<'a> {
        Key {
            host,
            port,
            dbname: db,
            user,
            default_socket_dir: "/var/run/postgresql",
        }
    }

    #[test]
    fn first_match_wins_and_wildcards() {
        let text = "# comment\n\
                    db1:5432:app:alice:first\n\
                    db1:5432:app:alice:second\n\
                    *:*:*:bob:bobs\n\
                    db2:*:app:*:any-user-on-db2\n";
        assert_eq!(
            find(text, key("db1", 5432, "app", "alice")).as_deref(),
            Some("first")
        );
        assert_eq!(find(text, key("x", 1, "y", "bob")).as_deref(), Some("bobs"));
        assert_eq!(
            find(text, key("db2", 6000, "app", "carol")).as_deref(),
            Some("any-user-on-db2")
        );
        assert_eq!(find(text, key("db1", 5433, "app", "alice")), None);
        assert_eq!(find(text, key("db1", 5432, "app", "")), None);
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let text = "db\\:1:5432:a\\\\b:u:p\\:w\\\\d:ignored\r\n";
        assert_eq!(
            find(text, key("db:1", 5432, "a\\b", "u")).as_deref(),
            Some("p:w\\d")
        );
        // `*` only as a whole field.
        assert_eq!(find("d*:5432:a:u:pw\n", key("db", 5432, "a", "u")), None);
        assert_eq!(
            find("*x:5432:a:u:pw\n", key("*x", 5432, "a", "u")).as_deref(),
            Some("pw")
        );
        // A line with too few fields matches nothing.
        assert_eq!(find("db:5432:a\n", key("db", 5432, "a", "u")), None);
        // Password may be empty, or run to the end of the line.
        assert_eq!(
            find("h:1:d:u:\n", key("h", 1, "d", "u")).as_deref(),
            Some("")
        );
        assert_eq!(
            find("h:1:d:u:a b c", key("h", 1, "d", "u")).as_deref(),
            Some("a b c")
        );
    }

    #[test]
    fn localhost_matches_default_socket_and_no_host() {
        let text = "localhost:5432:app:u:local\n/tmp/s:5432:app:u:sock\n";
        assert_eq!(
            find(text, key("", 5432, "app", "u")).as_deref(),
            Some("local")
        );
        assert_eq!(
            find(text, key("/var/run/postgresql", 5432, "app", "u")).as_deref(),
            Some("local")
        );
        assert_eq!(
            find(text, key("/tmp/s", 5432, "app", "u")).as_deref(),
            Some("sock")
        );
        // A TCP connection to 127.0.0.1 is not "localhost" to libpq.
        assert_eq!(find(text, key("127.0.0.1", 5432, "app", "u")), None);
    }

    #[test]
    fn permissions_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pgpass");
        std::fs::write(&p, "h:5432:d:u:pw\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let k = key("h", 5432, "d", "u");
        match lookup(&p, k) {
            Lookup::Ignored(why) => assert!(why.contains("0600"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&p, k), Lookup::Found("pw".into()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(lookup(&p, k), Lookup::Found("pw".into()));
        assert_eq!(lookup(&d.path().join("missing"), k), Lookup::NotFound);
        assert!(matches!(lookup(d.path(), k), Lookup::Ignored(_)));
    }
}
