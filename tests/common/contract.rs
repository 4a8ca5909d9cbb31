//! The JSON contract (`docs/schema/*.json`) as tests check it: every `--format json`
//! document is validated against its command's schema, and its `exit_code` must be the
//! process's. Commands added later need only a `docs/schema/COMMAND.json`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::cli::Run;

/// Where the schemas are kept.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema")
}

/// Every schema file, parsed, by file name.
fn schemas() -> &'static Vec<(String, Value)> {
    static SCHEMAS: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(schema_dir()).expect("docs/schema") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, v));
            }
        }
        out
    })
}

fn id_of(file: &str) -> String {
    let (_, v) = schemas()
        .iter()
        .find(|(n, _)| n == file)
        .unwrap_or_else(|| panic!("no docs/schema/{file}"));
    v["$id"]
        .as_str()
        .expect("every schema has an $id")
        .to_string()
}

/// The problems of `doc` against `docs/schema/{file}` (empty: valid).
pub fn problems(doc: &Value, file: &str) -> Vec<String> {
    let registry = jsonschema::Registry::new()
        .extend(
            schemas()
                .iter()
                .map(|(_, v)| (v["$id"].as_str().unwrap().to_string(), v.clone())),
        )
        .expect("schema ids are URIs")
        .prepare()
        .expect("the schemas resolve");
    let validator = jsonschema::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&serde_json::json!({ "$ref": id_of(file) }))
        .unwrap_or_else(|e| panic!("docs/schema/{file} does not compile: {e}"));
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The schema file for a command's document: `docs/schema/COMMAND.json` when there is
/// one, else the envelope alone (`common.json`).
pub fn schema_for(command: &str) -> String {
    let file = format!("{command}.json");
    if schemas().iter().any(|(n, _)| *n == file) {
        file
    } else {
        "common.json".into()
    }
}

/// The run's stdout as its JSON document: one object, valid against its command's
/// schema, whose `exit_code` is the process's. Panics saying what is wrong otherwise.
#[track_caller]
pub fn document(run: &Run) -> Value {
    let doc: Value = serde_json::from_str(&run.stdout()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document: {e}\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout(),
            run.stderr()
        )
    });
    assert_eq!(
        doc["exit_code"].as_i64(),
        Some(i64::from(run.code())),
        "the document's exit_code is not the process's\n{doc:#}"
    );
    let command = doc["command"].as_str().expect("command").to_string();
    let file = schema_for(&command);
    let problems = problems(&doc, &file);
    assert!(
        problems.is_empty(),
        "{command}'s document breaks docs/schema/{file}:\n  {}\n{doc:#}",
        problems.join("\n  ")
    );
    doc
}
