//! Connection service files (`~/.pg_service.conf`, `PGSERVICEFILE`, the system
//! `pg_service.conf`), read as libpq's `parseServiceInfo` reads them: the user's file
//! first, then the system file; `[name]` groups of `key=value` lines; the first value of a
//! key wins and never overrides what the DSN says.

use std::path::{Path, PathBuf};

use crate::db::libpq::conninfo::{keyword, DsnError};

/// Where to look for service definitions, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFiles {
    /// `PGSERVICEFILE` (must exist when set) or `~/.pg_service.conf` (used if it exists).
    pub user: Option<UserFile>,
    /// `$PGSYSCONFDIR/pg_service.conf` or the distribution's default; used if it exists.
    pub system: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFile {
    /// Named by `PGSERVICEFILE`: a missing file is an error, as in libpq.
    Explicit(PathBuf),
    /// `~/.pg_service.conf`: skipped when it does not exist.
    Home(PathBuf),
}

/// The settings of service `name`, in file order.
pub fn lookup(name: &str, files: &ServiceFiles) -> Result<Vec<(&'static str, String)>, DsnError> {
    let mut looked = Vec::new();
    if let Some(user) = &files.user {
        let (path, must_exist) = match user {
            UserFile::Explicit(p) => (p, true),
            UserFile::Home(p) => (p, false),
        };
        looked.push(path.display().to_string());
        match read(path) {
            Ok(Some(text)) => {
                if let Some(found) = parse(&text, name, path)? {
                    return Ok(found);
                }
            }
            Ok(None) if must_exist => {
                return Err(DsnError::ServiceFileRead {
                    path: path.display().to_string(),
                    message: "file not found (named by PGSERVICEFILE)".into(),
                })
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(path) = &files.system {
        looked.push(path.display().to_string());
        if let Some(text) = read(path)? {
            if let Some(found) = parse(&text, name, path)? {
                return Ok(found);
            }
        }
    }
    Err(DsnError::ServiceNotFound {
        name: name.to_string(),
        looked: if looked.is_empty() {
            "no service file".into()
        } else {
            looked.join(", ")
        },
    })
}

fn read(path: &Path) -> Result<Option<String>, DsnError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DsnError::ServiceFileRead {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// The group `[name]` of one file's `text`, if the file has it.
pub fn parse(
    text: &str,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<(&'static str, String)>>, DsnError> {
    let error = |line: usize, message: &str| DsnError::ServiceFile {
        path: path.display().to_string(),
        line,
        message: message.to_string(),
    };
    let mut in_group = false;
    let mut found: Option<Vec<(&'static str, String)>> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if in_group {
                break;
            }
            // libpq compares the name as a prefix followed by `]`; the rest of the line is ignored.
            in_group = header
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(']'));
            if in_group {
                found = Some(Vec::new());
            }
            continue;
        }
        if !in_group {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| error(n + 1, "syntax error (expected key=value)"))?;
        if key == "service" {
            return Err(error(
                n + 1,
                "nested service specifications are not supported",
            ));
        }
        let key = keyword(key)
            .ok_or_else(|| error(n + 1, &format!("syntax error (unknown key `{key}`)")))?;
        if let Some(group) = found.as_mut() {
            group.push((key, value.to_string()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# services\n\
        [other]\n\
        host=elsewhere\n\
        \n\
        [prod] # the rest of a header line is ignored\n\
          host=db1,db2\n\
        port=5433\n\
        dbname=app\n\
        sslmode=verify-full\n\
        host=ignored-second-value\n\
        [after]\n\
        host=after\n";

    #[test]
    fn reads_the_named_group() {
        let g = parse(FILE, "prod", Path::new("f")).unwrap().unwrap();
        assert_eq!(
            g,
            vec![
                ("host", "db1,db2".to_string()),
                ("port", "5433".to_string()),
                ("dbname", "app".to_string()),
                ("sslmode", "verify-full".to_string()),
                ("host", "ignored-second-value".to_string()),
            ]
        );
        assert_eq!(parse(FILE, "nope", Path::new("f")).unwrap(), None);
        // `[pro]` must not match `[prod]`.
        assert_eq!(parse(FILE, "pro", Path::new("f")).unwrap(), None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("[s]\nhost\n", "s", Path::new("/x/svc")).unwrap_err();
        assert_eq!(
            e,
            DsnError::ServiceFile {
                path: "/x/svc".into(),
                line: 2,
                message: "syntax error (expected key=value)".into()
            }
        );
        let e = parse("[s]\nservice=t\n", "s", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
        let e = parse("[s]\ncolour=blue\n", "s", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("`colour`"), "{e}");
        // Errors in other groups do not matter.
        assert!(parse("[t]\nbroken\n[s]\nhost=h\n", "s", Path::new("f")).is_ok());
    }

    #[test]
    fn user_file_then_system_file() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("user.conf");
        let system = d.path().join("pg_service.conf");
        std::fs::write(&user, "[a]\nhost=user-a\n").unwrap();
        std::fs::write(&system, "[a]\nhost=system-a\n[b]\nhost=system-b\n").unwrap();
        let files = ServiceFiles {
            user: Some(UserFile::Home(user.clone())),
            system: Some(system.clone()),
        };
        assert_eq!(
            lookup("a", &files).unwrap(),
            vec![("host", "user-a".into())]
        );
        assert_eq!(
            lookup("b", &files).unwrap(),
            vec![("host", "system-b".into())]
        );
        let e = lookup("c", &files).unwrap_err();
        assert!(matches!(e, DsnError::ServiceNotFound { .. }), "{e}");
        // A missing ~/.pg_service.conf is skipped; a missing PGSERVICEFILE is an error.
        let missing = d.path().join("missing.conf");
        let files = ServiceFiles {
            user: Some(UserFile::Home(missing.clone())),
            system: Some(system.clone()),
        };
        assert_eq!(
            lookup("b", &files).unwrap(),
            vec![("host", "system-b".into())]
        );
        let files = ServiceFiles {
            user: Some(UserFile::Explicit(missing)),
            system: Some(system),
        };
        assert!(matches!(
            lookup("b", &files),
            Err(DsnError::ServiceFileRead { .. })
        ));
    }
}
