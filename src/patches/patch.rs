//! One patch file: its version (`M-m-p`), its type, its header directives, its name
//! (`patch-MAJOR-MINOR-POINT-TYPE.sql`), its checksum and its statements.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

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

/// How a patch is applied (the README's table of patch types says where and how).
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

/// The inline data block of a `COPY ... FROM stdin` statement (the `\.` line excluded).
/// Kept apart from [`StatementSpan`] because few statements have one, and a patch of
/// half a million INSERTs should not pay for the field in every span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBlock {
    /// Index of its `COPY` statement in [`Patch::statements`].
    pub statement: usize,
    pub offset: usize,
    pub len: usize,
    /// 1-based line in the patch file of the first data line.
    pub line: usize,
}

/// A validated patch file.
///
/// The body is read once and shared: clones, nodes, statements and retries all refer to
/// the same text (statements are spans into it), so memory is bounded by the file's size
/// whatever the number of nodes.
#[derive(Debug, Clone)]
pub struct Patch {
    pub version: PatchVersion,
    pub kind: PatchType,
    pub path: PathBuf,
    /// `Arc<String>` rather than `Arc<str>`: made from the file's bytes without a copy.
    pub body: Arc<String>,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
    pub statements: Vec<StatementSpan>,
    /// `COPY ... FROM stdin` data blocks, in statement order.
    pub copies: Vec<CopyBlock>,
    pub order: PatchOrder,
}

impl Patch {
    /// Whether this is a `baseline-M-m-p.sql` file (the schema as of its version, for new
    /// nodes) rather than a patch.
    pub fn is_baseline(&self) -> bool {
        self.file_name().starts_with("baseline-")
    }

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

    /// The data block of statement `index` (an index into [`Patch::statements`]), if it
    /// is a `COPY ... FROM stdin`.
    pub fn copy_block(&self, index: usize) -> Option<&CopyBlock> {
        self.copies
            .binary_search_by_key(&index, |c| c.statement)
            .ok()
            .map(|k| &self.copies[k])
    }

    /// The text of a data block of this patch.
    pub fn copy_text(&self, block: &CopyBlock) -> &str {
        &self.body[block.offset..block.offset + block.len]
    }
}

/// Hex SHA-256 of `bytes`.
pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version of `baseline-MAJOR-MINOR-POINT.sql`; `None` when the name does not start
/// with `baseline-` (then it is no baseline at all), an error when it does but is malformed.
pub fn parse_baseline_name(name: &str) -> Option<Result<PatchVersion, String>> {
    const HINT: &str = "expected baseline-MAJOR-MINOR-POINT.sql";
    let stem = name.strip_prefix("baseline-")?;
    let Some(stem) = stem.strip_suffix(".sql") else {
        return Some(Err(HINT.to_string()));
    };
    Some(stem.parse::<PatchVersion>().map_err(|_| HINT.to_string()))
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
    fn baseline_names() {
        assert_eq!(
            parse_baseline_name("baseline-1-2-0.sql"),
            Some(Ok(PatchVersion::new(1, 2, 0)))
        );
        assert_eq!(parse_baseline_name("patch-1-2-0-std.sql"), None);
        assert!(matches!(
            parse_baseline_name("baseline-1-2.sql"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_baseline_name("baseline-1-2-0-std.sql"),
            Some(Err(_))
        ));
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
