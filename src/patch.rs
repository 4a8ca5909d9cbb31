//! Patches on disk: `PatchVersion`, `PatchType`, `Patch`, and the discovery and
//! validation of a patch directory (naming, duplicates, termination, gaps).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::sql;

/// `MAJOR-MINOR-POINT`, ordered element-wise numerically (1-9-0 < 1-10-0 < 2-0-0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatchVersion {
    pub major: u32,
    pub minor: u32,
    pub point: u32,
}

impl PatchVersion {
    pub const fn new(major: u32, minor: u32, point: u32) -> PatchVersion {
        PatchVersion {
            major,
            minor,
            point,
        }
    }
}

impl fmt::Display for PatchVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.major, self.minor, self.point)
    }
}

impl FromStr for PatchVersion {
    type Err = String;

    /// Parses `M-m-p` (as printed in all output).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('-').collect();
        let bad = || format!("`{s}` is not a version written M-m-p");
        if parts.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| parse_number(p).ok_or_else(bad);
        Ok(PatchVersion::new(n(parts[0])?, n(parts[1])?, n(parts[2])?))
    }
}

fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The ledger stores versions as `integer`.
    text.parse::<u32>().ok().filter(|n| *n <= i32::MAX as u32)
}

/// How a patch is applied; see PRODUCT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchType {
    /// On the master only, inside the claim transaction.
    Std,
    /// On every node, each inside its own transaction.
    Direct,
    /// On every node concurrently, outside any transaction, statement by statement.
    Concurrent,
}

impl PatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchType::Std => "std",
            PatchType::Direct => "direct",
            PatchType::Concurrent => "concurrent",
        }
    }

    /// Whether replicas run this patch themselves (rather than receiving it by replication).
    pub fn runs_on_replicas(self) -> bool {
        !matches!(self, PatchType::Std)
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PatchType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "std" => Ok(PatchType::Std),
            "direct" => Ok(PatchType::Direct),
            "concurrent" => Ok(PatchType::Concurrent),
            other => Err(format!(
                "`{other}` is not a patch type (std, direct or concurrent)"
            )),
        }
    }
}

/// Which side of a logically replicated cluster commits a `direct` or
/// `concurrent` patch first (header `-- pgconvoy: order=master-first`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchOrder {
    /// Replicas first, master last: safe for additive changes (new tables,
    /// nullable or defaulted columns, indexes).
    #[default]
    ReplicasFirst,
    /// Master first, then (once subscribers caught up) the replicas: for
    /// destructive changes (DROP COLUMN / TABLE).
    MasterFirst,
}

/// Reads `-- pgconvoy: key=value …` directives from the comment lines that
/// open a patch, before its first statement.
pub fn parse_header(body: &str) -> Result<PatchOrder, String> {
    let mut order = PatchOrder::default();
    for (n, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some(directives) = comment.trim().strip_prefix("pgconvoy:") else {
            continue;
        };
        for directive in directives.split([' ', ',']).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some(("order", "master-first")) => order = PatchOrder::MasterFirst,
                Some(("order", "replicas-first")) => order = PatchOrder::ReplicasFirst,
                Some(("order", other)) => {
                    return Err(format!(
                        "line {}: `order={other}`: expected master-first or replicas-first",
                        n + 1
                    ))
                }
                _ => {
                    return Err(format!(
                        "line {}: unknown pgconvoy directive `{directive}` (known: order=master-first|replicas-first)",
                        n + 1
                    ))
                }
            }
        }
    }
    Ok(order)
}

/// Where one statement lies in a patch body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementSpan {
    pub offset: usize,
    pub len: usize,
    /// 1-based line in the patch file.
    pub line: usize,
}

/// A validated patch file.
#[derive(Debug, Clone)]
pub struct Patch {
    pub version: PatchVersion,
    pub kind: PatchType,
    pub path: PathBuf,
    pub body: String,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
    pub statements: Vec<StatementSpan>,
    pub order: PatchOrder,
}

impl Patch {
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn statement_texts(&self) -> impl Iterator<Item = (&str, StatementSpan)> {
        self.statements
            .iter()
            .map(|s| (&self.body[s.offset..s.offset + s.len], *s))
    }
}

/// Hex SHA-256 of `bytes`.
pub fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Splits `patch-MAJOR-MINOR-POINT-TYPE.sql` into its version and type.
pub fn parse_file_name(name: &str) -> Result<(PatchVersion, PatchType), String> {
    const HINT: &str =
        "expected patch-MAJOR-MINOR-POINT-TYPE.sql with TYPE std, direct or concurrent";
    let stem = name
        .strip_prefix("patch-")
        .and_then(|s| s.strip_suffix(".sql"))
        .ok_or_else(|| HINT.to_string())?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() != 4 {
        return Err(HINT.to_string());
    }
    let mut numbers = [0u32; 3];
    for (slot, text) in numbers.iter_mut().zip(&parts[..3]) {
        *slot = match parse_number(text) {
            Some(n) => n,
            None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(format!("number `{text}` is too large"))
            }
            None => return Err(HINT.to_string()),
        };
    }
    let kind = parts[3]
        .parse::<PatchType>()
        .map_err(|e| format!("{e}; {HINT}"))?;
    Ok((PatchVersion::new(numbers[0], numbers[1], numbers[2]), kind))
}

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

    pub fn get(&self, version: PatchVersion) -> Option<&Patch> {
        self.patches
            .binary_search_by_key(&version, |p| p.version)
            .ok()
            .map(|i| &self.patches[i])
    }
}

/// The patch directory itself could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read patch directory `{dir}`: {source}")]
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
        match load(version, kind, path) {
            Ok(patch) if first => patches.push(patch),
            Ok(_) => {}
            Err(message) => findings.push(error(message)),
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
        findings,
    })
}

/// Reads and checks one well-named patch file; the error names the file.
fn load(version: PatchVersion, kind: PatchType, path: PathBuf) -> Result<Patch, String> {
    let bytes =
        std::fs::read(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let checksum = checksum(&bytes);
    let body =
        String::from_utf8(bytes).map_err(|_| format!("{}: not valid UTF-8", path.display()))?;
    let statements = sql::split(&body)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .iter()
        .map(|s| StatementSpan {
            offset: s.offset,
            len: s.text.len(),
            line: s.line,
        })
        .collect();
    let order = parse_header(&body).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Patch {
        version,
        kind,
        path,
        body,
        checksum,
        statements,
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
    fn parses_good_names() {
        assert_eq!(
            parse_file_name("patch-1-10-0-std.sql").unwrap(),
            (PatchVersion::new(1, 10, 0), PatchType::Std)
        );
        assert_eq!(
            parse_file_name("patch-0-02-3-concurrent.sql").unwrap(),
            (PatchVersion::new(0, 2, 3), PatchType::Concurrent)
        );
        assert_eq!(
            parse_file_name("patch-2-0-0-direct.sql").unwrap().1,
            PatchType::Direct
        );
    }

    #[test]
    fn rejects_bad_names() {
        for name in [
            "patch-1-5-std.sql",
            "patch-1-5-0-fast.sql",
            "fix-calendar.sql",
            "patch-1-5-0-std.SQL",
            "patch--5-0-std.sql",
            "patch-1-+5-0-std.sql",
            "patch-1-5-0-0-std.sql",
            "patch-a-5-0-std.sql",
            "patch-1-5-0-std-.sql",
            "patch-99999999999-5-0-std.sql",
        ] {
            assert!(parse_file_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        let mut v = [
            PatchVersion::new(2, 0, 0),
            PatchVersion::new(1, 10, 0),
            PatchVersion::new(1, 9, 0),
            PatchVersion::new(1, 9, 1),
        ];
        v.sort();
        let s: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(s, ["1-9-0", "1-9-1", "1-10-0", "2-0-0"]);
        assert_eq!("1-9-1".parse::<PatchVersion>().unwrap(), v[1]);
        assert!("1-9".parse::<PatchVersion>().is_err());
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

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("CREATE TABLE a();").unwrap(),
            PatchOrder::ReplicasFirst
        );
        assert_eq!(
            parse_header("-- drop the old column\n-- pgconvoy: order=master-first\nALTER TABLE a DROP COLUMN b;").unwrap(),
            PatchOrder::MasterFirst
        );
        // Only the opening comments count.
        assert_eq!(
            parse_header("SELECT 1;\n-- pgconvoy: order=master-first\n").unwrap(),
            PatchOrder::ReplicasFirst
        );
        assert!(parse_header("-- pgconvoy: order=sideways\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_header("\n-- pgconvoy: speed=fast\n")
            .unwrap_err()
            .contains("line 2"));
    }

    #[test]
    fn checksum_is_sha256() {
        assert_eq!(
            checksum(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
