//! A patch directory: discovery of its `*.sql` files and their validation (names,
//! duplicate versions, unreadable or unterminated files, gaps in numbering), as findings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::patch::{
    checksum, parse_baseline_name, parse_file_name, parse_header, CopyBlock, Patch, PatchType,
    PatchVersion, StatementSpan,
};
use super::sql;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a patch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{label}: {}", self.message)
    }
}

/// The patches of a directory, in version order, with what was found wrong.
#[derive(Debug, Clone)]
pub struct PatchSet {
    pub dir: PathBuf,
    pub patches: Vec<Patch>,
    /// `baseline-M-m-p.sql` files, in version order: the whole schema as of that version,
    /// for new nodes. Loaded and checked as patches are (kind `std`: one transaction).
    pub baselines: Vec<Patch>,
    pub findings: Vec<Finding>,
}

impl PatchSet {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The newest baseline, the one new nodes get.
    pub fn newest_baseline(&self) -> Option<&Patch> {
        self.baselines.last()
    }

    pub fn get(&self, version: PatchVersion) -> Option<&Patch> {
        self.patches
            .binary_search_by_key(&version, |p| p.version)
            .ok()
            .map(|i| &self.patches[i])
    }
}

/// The patch directory itself could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read patch directory `{dir}`")]
pub struct DiscoverError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Reads every `*.sql` file of `dir` and validates the set. Gaps are errors when `strict`.
/// Problems with individual files are findings, so that `check` can report them all.
pub fn discover(dir: &Path, strict: bool) -> Result<PatchSet, DiscoverError> {
    let wrap = |source| DiscoverError {
        dir: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            let lossy = name.to_string_lossy().into_owned();
            if lossy.ends_with(".sql") {
                names.push(Err(lossy));
            }
            continue;
        };
        if !name.ends_with(".sql") {
            continue;
        }
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        names.push(Ok(name.to_string()));
    }
    names.sort();

    let mut findings = Vec::new();
    let mut named: Vec<(PatchVersion, PatchType, PathBuf)> = Vec::new();
    let mut baseline_names: Vec<(PatchVersion, PathBuf)> = Vec::new();
    let display = |name: &str| dir.join(name).display().to_string();
    for name in names {
        let name = match name {
            Ok(n) => n,
            Err(lossy) => {
                findings.push(error(format!(
                    "{}: file name is not valid UTF-8",
                    display(&lossy)
                )));
                continue;
            }
        };
        match parse_baseline_name(&name) {
            Some(Ok(version)) => {
                baseline_names.push((version, dir.join(&name)));
                continue;
            }
            Some(Err(why)) => {
                findings.push(error(format!("{}: bad file name: {why}", display(&name))));
                continue;
            }
            None => {}
        }
        let (version, kind) = match parse_file_name(&name) {
            Ok(v) => v,
            Err(why) => {
                findings.push(error(format!("{}: bad file name: {why}", display(&name))));
                continue;
            }
        };
        named.push((version, kind, dir.join(&name)));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));

    // Duplicates are judged on names alone, so every clash is named even when
    // a file's content is broken too.
    for pair in named.windows(2) {
        if pair[0].0 == pair[1].0 {
            findings.push(error(format!(
                "{} and {}: both are version {}",
                pair[0].2.display(),
                pair[1].2.display(),
                pair[1].0
            )));
        }
    }

    // Every file's content is checked; the first file of a version is kept.
    let mut patches: Vec<Patch> = Vec::with_capacity(named.len());
    let mut previous = None;
    for (version, kind, path) in named.iter().cloned() {
        let first = previous != Some(version);
        previous = Some(version);
        match load(version, kind, path, false) {
            Ok(patch) if first => patches.push(patch),
            Ok(_) => {}
            Err(messages) => findings.extend(messages.into_iter().map(error)),
        }
    }

    // Baselines: one per version, checked like patches.
    baseline_names.sort();
    let mut baselines: Vec<Patch> = Vec::with_capacity(baseline_names.len());
    for (version, path) in baseline_names {
        if let Some(earlier) = baselines.last().filter(|b| b.version == version) {
            findings.push(error(format!(
                "{} and {}: both are baseline {version}",
                earlier.path.display(),
                path.display()
            )));
            continue;
        }
        match load(version, PatchType::Std, path, true) {
            Ok(b) => baselines.push(b),
            Err(messages) => findings.extend(messages.into_iter().map(error)),
        }
    }

    let mut versions: Vec<PatchVersion> = named.iter().map(|n| n.0).collect();
    versions.dedup();
    let gap_severity = if strict {
        Severity::Error
    } else {
        Severity::Warning
    };
    for message in numbering_gaps(&versions) {
        findings.push(Finding {
            severity: gap_severity,
            message,
        });
    }

    Ok(PatchSet {
        dir: dir.to_path_buf(),
        patches,
        baselines,
        findings,
    })
}

/// Reads and checks one well-named patch file (or baseline file, `baseline`: it runs as a
/// `std` patch does, in one transaction); each error names the file (and line).
fn load(
    version: PatchVersion,
    kind: PatchType,
    path: PathBuf,
    baseline: bool,
) -> Result<Patch, Vec<String>> {
    let bytes =
        std::fs::read(&path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let checksum = checksum(&bytes);
    let body = String::from_utf8(bytes)
        .map_err(|_| vec![format!("{}: not valid UTF-8", path.display())])?;
    let mut statements = Vec::new();
    let mut copies = Vec::new();
    let mut refused = Vec::new();
    // One pass, keeping only compact spans: a large patch is never held as a second list.
    for s in sql::statements(&body) {
        let s = s.map_err(|e| vec![format!("{}: {e}", path.display())])?;
        if let Some(what) = sql::transaction_control(s.text) {
            refused.push(format!(
                "{}: line {}: `{what}` is transaction control, and pgconvoy owns the transactions: {}; remove it",
                path.display(),
                s.line,
                match kind {
                    _ if baseline => "a baseline runs inside one transaction pgconvoy opens on each new node",
                    PatchType::Std => "a `std` patch runs inside the master's claim transaction",
                    PatchType::Direct => "a `direct` patch runs inside a transaction pgconvoy opens on each node (on the master, the claim)",
                    PatchType::Concurrent => "a `concurrent` patch runs outside any transaction, one statement at a time",
                }
            ));
        }
        if let Some(d) = s.copy_data {
            copies.push(CopyBlock {
                statement: statements.len(),
                offset: d.offset,
                len: d.text.len(),
                line: d.line,
            });
        }
        statements.push(StatementSpan {
            offset: s.offset,
            len: s.text.len(),
            line: s.line,
        });
    }
    if statements.is_empty() {
        return Err(vec![format!(
            "{}: {}",
            path.display(),
            sql::SplitError::Empty
        )]);
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    statements.shrink_to_fit();
    let order = parse_header(&body).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    Ok(Patch {
        version,
        kind,
        path,
        body: Arc::new(body),
        checksum,
        statements,
        copies,
        order,
    })
}

fn error(message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        message,
    }
}

/// Within a major, the minors of point-0 patches are contiguous from the lowest
/// one present; a point `p > 0` needs `p - 1` of the same major and minor.
pub fn numbering_gaps(sorted: &[PatchVersion]) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_major: BTreeMap<u32, Vec<PatchVersion>> = BTreeMap::new();
    for v in sorted {
        by_major.entry(v.major).or_default().push(*v);
    }
    for (major, versions) in by_major {
        let minors: Vec<u32> = versions
            .iter()
            .filter(|v| v.point == 0)
            .map(|v| v.minor)
            .collect();
        for pair in minors.windows(2) {
            if pair[1] > pair[0] + 1 {
                let missing = if pair[1] == pair[0] + 2 {
                    format!("{major}-{}-0 is missing", pair[0] + 1)
                } else {
                    format!(
                        "{major}-{}-0 to {major}-{}-0 are missing",
                        pair[0] + 1,
                        pair[1] - 1
                    )
                };
                out.push(format!(
                    "gap in numbering: {missing} between {major}-{}-0 and {major}-{}-0",
                    pair[0], pair[1]
                ));
            }
        }
        for v in versions.iter().filter(|v| v.point > 0) {
            let prev = PatchVersion::new(v.major, v.minor, v.point - 1);
            if sorted.binary_search(&prev).is_err() {
                out.push(format!("gap in numbering: {v} has no predecessor {prev}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_blocks_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let body = "CREATE TABLE t (a int);\nCOPY t FROM stdin;\n1\n2\n\\.\nSELECT 1;\nCOPY t (a) FROM stdin;\n\\.\n";
        let path = dir.path().join("patch-1-0-0-std.sql");
        std::fs::write(&path, body).unwrap();
        let p = load(
            PatchVersion::new(1, 0, 0),
            PatchType::Std,
            path.clone(),
            false,
        )
        .unwrap();
        assert_eq!(p.statements.len(), 4);
        let first = p.copy_block(1).expect("statement 1 is a COPY");
        assert_eq!((p.copy_text(first), first.line), ("1\n2\n", 3));
        assert_eq!(p.copy_text(p.copy_block(3).unwrap()), "");
        assert!(p.copy_block(0).is_none() && p.copy_block(2).is_none());
        assert_eq!(p.statements[2].line, 6);

        std::fs::write(&path, "SELECT 1;\nBEGIN;\nSELECT 2;\nCOMMIT;\n").unwrap();
        let errors = load(
            PatchVersion::new(1, 0, 0),
            PatchType::Direct,
            path.clone(),
            false,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("line 2: `BEGIN`"), "{errors:?}");
        assert!(errors[1].contains("line 4: `COMMIT`"), "{errors:?}");

        std::fs::write(&path, "-- nothing\n").unwrap();
        let errors = load(PatchVersion::new(1, 0, 0), PatchType::Std, path, false).unwrap_err();
        assert!(errors[0].contains("no statements"), "{errors:?}");
    }

    #[test]
    fn gaps() {
        let v = |m, n, p| PatchVersion::new(m, n, p);
        assert!(numbering_gaps(&[v(1, 0, 0), v(1, 1, 0), v(1, 1, 1), v(2, 0, 0)]).is_empty());
        // Starting above zero is fine: old patches may have been folded into a baseline.
        assert!(numbering_gaps(&[v(1, 4, 0), v(1, 5, 0)]).is_empty());
        let g = numbering_gaps(&[v(1, 0, 0), v(1, 2, 0)]);
        assert_eq!(
            g,
            ["gap in numbering: 1-1-0 is missing between 1-0-0 and 1-2-0"]
        );
        let g = numbering_gaps(&[v(1, 0, 0), v(1, 4, 0)]);
        assert!(g[0].contains("1-1-0 to 1-3-0"), "{g:?}");
        let g = numbering_gaps(&[v(1, 0, 0), v(1, 0, 2)]);
        assert_eq!(g, ["gap in numbering: 1-0-2 has no predecessor 1-0-1"]);
    }
}
