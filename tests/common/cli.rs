//! Running the `pgconvoy` binary in a scratch directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory holding a `cluster.yaml` and a `patches/` directory.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("pgconvoy-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("patches")).unwrap();
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn patch(&self, name: &str, text: &str) -> PathBuf {
        self.write(&format!("patches/{name}"), text)
    }

    pub fn remove_patch(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join("patches").join(name)).unwrap();
    }

    /// Runs `pgconvoy ARGS` with the scratch dir as the current directory.
    pub fn run(&self, args: &[&str]) -> Run {
        run_in(self.dir.path(), args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_in(self.dir.path(), args, env)
    }
}

/// The binary under test: cargo's build, or `PGCONVOY_TEST_BIN` (a copy that a long
/// campaign runs while the tree is rebuilt).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("PGCONVOY_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pgconvoy").to_string())
    })
}

/// The binary in `dir`, with none of libpq's environment variables of the test process
/// and `HOME` set to `dir`, so that no `~/.pgpass`, `~/.pg_service.conf` or
/// `~/.postgresql` of whoever runs the tests plays a part.
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir).env("HOME", dir);
    for (k, _) in std::env::vars_os() {
        let k_text = k.to_string_lossy();
        if k_text.starts_with("PG") && k_text != "PG_BIN" {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(dir, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run(cmd.output().unwrap())
}

/// The outcome of one run of the binary.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code(),
            code,
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    #[track_caller]
    pub fn says(&self, needle: &str) -> &Run {
        let all = self.all();
        assert!(all.contains(needle), "output lacks {needle:?}:\n{all}");
        self
    }
    #[track_caller]
    pub fn never_says(&self, needle: &str) -> &Run {
        let all = self.all();
        assert!(!all.contains(needle), "output contains {needle:?}:\n{all}");
        self
    }
}
