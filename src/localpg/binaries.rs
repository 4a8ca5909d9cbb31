//! Finding the installed PostgreSQL server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::command::run_checked;
use super::{LocalPgError, Result};

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
    pub(super) fn psql(&self) -> PathBuf {
        let p = self.tool("psql");
        if p.is_file() {
            p
        } else {
            find_on_path("psql").unwrap_or_else(|| PathBuf::from("psql"))
        }
    }
}

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
