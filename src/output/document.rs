//! The envelope every `--format json` document shares (`schema_version` 1, described in
//! `docs/schema/`): which command, its exit code, when it started and finished, and the
//! error it ended with, around the command's own fields. A command that fails or refuses
//! prints its document too, so a machine always has one object to read.

use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::timestamp::rfc3339_millis;
use crate::error::ErrorObject;

/// The version of the JSON contract. Adding fields keeps it; renaming, removing or
/// changing the meaning of one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// When a command started, for the document's `started_at` and `duration_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: SystemTime,
    instant: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            started: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Time since the start (monotonic).
    pub fn elapsed(&self) -> std::time::Duration {
        self.instant.elapsed()
    }
}

/// A command's JSON document: the envelope, then the command's own fields (`body`,
/// flattened into the same object; absent when the command failed before it had any).
#[derive(Debug, Serialize)]
pub struct Document<'a, T: Serialize> {
    pub schema_version: u32,
    /// The subcommand: `status`, `upgrade`, `dry-run`, …
    pub command: &'a str,
    /// The process's exit code.
    pub exit_code: u8,
    /// RFC 3339 UTC, milliseconds.
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// The error the command ended with (`null` on exit 0).
    pub error: Option<ErrorObject>,
    #[serde(flatten)]
    pub body: Option<&'a T>,
}

/// No fields of a command's own: the document of a command that failed early.
#[derive(Debug, Serialize)]
pub struct NoBody {}

impl<'a, T: Serialize> Document<'a, T> {
    /// The document of `command`, finished now, ending with `exit_code` and `error`.
    pub fn new(
        command: &'a str,
        clock: &Clock,
        exit_code: u8,
        error: Option<ErrorObject>,
        body: Option<&'a T>,
    ) -> Document<'a, T> {
        Document {
            schema_version: SCHEMA_VERSION,
            command,
            exit_code,
            started_at: rfc3339_millis(clock.started),
            finished_at: rfc3339_millis(SystemTime::now()),
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body {
        nodes: Vec<u8>,
    }

    #[test]
    fn the_body_sits_beside_the_envelope() {
        let clock = Clock::start();
        let body = Body { nodes: vec![1] };
        let doc = Document::new("status", &clock, 0, None, Some(&body));
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["command"], "status");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["nodes"][0], 1);
        assert!(v["error"].is_null());
        assert!(v["started_at"].as_str().unwrap().ends_with('Z'));

        let e = ErrorObject::plain("config", "cannot read config file `x`");
        let doc = Document::<NoBody>::new("status", &clock, 2, Some(e), None);
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["error"]["kind"], "config");
        assert!(v.get("nodes").is_none());
    }
}
