//! Progress as JSON lines on stderr (`--progress json`), for CI systems: one object per
//! event, `{"at": RFC 3339, "event": "...", ...}`, the same events the terminal shows.

use std::io::Write;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::{Event, Reporter, StatementAt};
use crate::output::timestamp::rfc3339_millis;

/// One JSON object per event and line on stderr.
pub struct JsonReporter;

/// An event as its JSON object (without `at`).
pub fn to_json(event: &Event<'_>) -> Value {
    let ms = |d: &std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match event {
        Event::Note(text) => json!({"event": "note", "message": text}),
        Event::GroupStart { kind, versions } => {
            json!({"event": "group_start", "type": kind.to_string(), "patches": versions})
        }
        Event::NodeStart { version, node } => {
            json!({"event": "node_start", "patch": version.to_string(), "node": node.as_str()})
        }
        Event::Statement {
            version,
            node,
            text,
            at,
        } => {
            let (number, of, whole_body) = match at {
                StatementAt::One { number, of } => (*number, *of, false),
                StatementAt::Body { statements } => (1, *statements, true),
            };
            json!({"event": "statement", "patch": version.to_string(), "node": node.as_str(),
                   "statement": text, "number": number, "of": of, "whole_body": whole_body})
        }
        Event::IndexProgress {
            version,
            node,
            phase,
            percent,
        } => json!({"event": "index_progress", "patch": version.to_string(),
                    "node": node.as_str(), "phase": phase, "percent": percent}),
        Event::NodeDone {
            version,
            node,
            elapsed,
            error,
        } => json!({"event": "node_done", "patch": version.to_string(), "node": node.as_str(),
                    "duration_ms": ms(elapsed), "ok": error.is_none(), "error": error}),
        Event::PatchDone {
            version,
            elapsed,
            committed,
        } => json!({"event": "patch_done", "patch": version.to_string(),
                    "duration_ms": ms(elapsed), "committed": committed}),
    }
}

impl Reporter for JsonReporter {
    fn event(&self, event: &Event<'_>) {
        let mut v = to_json(event);
        if let Value::Object(map) = &mut v {
            map.insert(
                "at".into(),
                Value::String(rfc3339_millis(SystemTime::now())),
            );
        }
        // One write per line, so lines from concurrent nodes never interleave.
        let mut line = v.to_string();
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn wants_index_progress(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeName;
    use crate::patches::patch::PatchVersion;

    #[test]
    fn events_become_objects() {
        let node = NodeName::parse("node1").unwrap();
        let v = to_json(&Event::IndexProgress {
            version: PatchVersion::new(1, 2, 0),
            node: &node,
            phase: "building index: scanning table",
            percent: Some(42.0),
        });
        assert_eq!(v["event"], "index_progress");
        assert_eq!(v["node"], "node1");
        assert_eq!(v["patch"], "1-2-0");
        assert_eq!(v["percent"], 42.0);
        let v = to_json(&Event::NodeDone {
            version: PatchVersion::new(1, 2, 0),
            node: &node,
            elapsed: std::time::Duration::from_millis(1500),
            error: None,
        });
        assert_eq!(v["duration_ms"], 1500);
        assert_eq!(v["ok"], true);
    }
}
