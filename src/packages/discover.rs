//! The packages directory on disk: each `NAME/` with its `package.yaml` and
//! object files, checked, ordered, and checksummed; every problem found is a
//! finding naming the file (and line), so `check` can report them all.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::object::{self, ObjectFile, ObjectKind};
use super::order;
use crate::config::package::{Manifest, PackageName};

/// A checked package, its objects in deploy order.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Types (in dependency order), then functions, then views (in dependency order).
    pub objects: Vec<ObjectFile>,
    /// Routines whose bodies name each other in a circle: created with
    /// `check_function_bodies` off.
    pub routine_cycle: Option<Vec<String>>,
    /// See [`checksum`].
    pub checksum: String,
}

impl Package {
    pub fn name(&self) -> &PackageName {
        &self.manifest.name
    }

    /// The schema this version deploys into.
    pub fn schema(&self) -> String {
        self.manifest.schema()
    }
}

/// One problem with the packages directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageFinding {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PackageFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The packages of a directory, in dependency order, with what was found wrong.
#[derive(Debug, Clone, Default)]
pub struct PackageSet {
    pub dir: PathBuf,
    pub packages: Vec<Package>,
    pub findings: Vec<PackageFinding>,
}

impl PackageSet {
    pub fn get(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name().as_str() == name)
    }

    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// `names` and everything they depend on, in deploy order; every package
    /// when `names` is empty. Unknown names are returned as the error.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Package>, Vec<String>> {
        if names.is_empty() {
            return Ok(self.packages.iter().collect());
        }
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| self.get(n).is_none())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(unknown);
        }
        let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut i = 0;
        while i < wanted.len() {
            if let Some(p) = self.get(wanted[i]) {
                for d in &p.manifest.depends {
                    if !wanted.contains(&d.as_str()) {
                        wanted.push(d.as_str());
                    }
                }
            }
            i += 1;
        }
        Ok(self
            .packages
            .iter()
            .filter(|p| wanted.contains(&p.name().as_str()))
            .collect())
    }
}

/// The packages directory itself could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read packages directory `{dir}`: {source}")]
pub struct DiscoverError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Reads every package under `dir`. A directory that does not exist holds no packages.
pub fn discover(dir: &Path) -> Result<PackageSet, DiscoverError> {
    let mut set = PackageSet {
        dir: dir.to_path_buf(),
        ..PackageSet::default()
    };
    if !dir.exists() {
        return Ok(set);
    }
    let wrap = |source| DiscoverError {
        dir: dir.to_path_buf(),
        source,
    };
    let mut package_dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Files beside the packages (a README) and hidden entries are not packages.
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        package_dirs.push((name, entry.path()));
    }
    package_dirs.sort();

    let mut loaded = Vec::new();
    for (dir_name, path) in package_dirs {
        match load(&dir_name, &path) {
            Ok(p) => loaded.push(p),
            Err(mut findings) => set.findings.append(&mut findings),
        }
    }
    set.packages = dependency_order(loaded, &mut set.findings);
    Ok(set)
}

/// Reads one package directory; every problem in it is a finding.
fn load(dir_name: &str, dir: &Path) -> Result<Package, Vec<PackageFinding>> {
    let mut findings = Vec::new();
    let finding = |file: PathBuf, line: Option<usize>, message: String| PackageFinding {
        file,
        line,
        message,
    };
    let manifest_path = dir.join("package.yaml");
    let manifest = if manifest_path.is_file() {
        match Manifest::load(&manifest_path) {
            Ok(m) if m.name.as_str() != dir_name => {
                findings.push(finding(
                    manifest_path.clone(),
                    None,
                    format!(
                        "name `{}` differs from its directory `{dir_name}`: a package lives in packages/NAME/",
                        m.name
                    ),
                ));
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                // The config error already names the file.
                let message = e.to_string();
                let prefix = format!("{}: ", manifest_path.display());
                let message = message
                    .strip_prefix(&prefix)
                    .unwrap_or(&message)
                    .to_string();
                findings.push(finding(manifest_path.clone(), None, message));
                None
            }
        }
    } else {
        findings.push(finding(
            dir.to_path_buf(),
            None,
            "no package.yaml: every directory under packages/ is a package".into(),
        ));
        None
    };

    // Relative path → bytes, for the checksum; objects by kind, in file-name order.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Ok(bytes) = std::fs::read(&manifest_path) {
        files.insert("package.yaml".into(), bytes);
    }
    let mut objects = Vec::new();
    let known: Vec<&str> = ObjectKind::ALL.iter().map(|k| k.dir()).collect();
    let mut entries: Vec<(String, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect(),
        Err(e) => {
            findings.push(finding(
                dir.to_path_buf(),
                None,
                format!("cannot read: {e}"),
            ));
            Vec::new()
        }
    };
    entries.sort();
    for (name, path) in &entries {
        if path.is_dir() && !name.starts_with('.') && !known.contains(&name.as_str()) {
            findings.push(finding(
                path.clone(),
                None,
                format!(
                    "unknown directory `{name}/`: a package holds types/, functions/ and views/"
                ),
            ));
        }
    }
    for kind in ObjectKind::ALL {
        let sub = dir.join(kind.dir());
        if !sub.is_dir() {
            continue;
        }
        let mut names: Vec<(String, PathBuf)> = match std::fs::read_dir(&sub) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| !n.starts_with('.'))
                .collect(),
            Err(e) => {
                findings.push(finding(sub.clone(), None, format!("cannot read: {e}")));
                continue;
            }
        };
        names.sort();
        for (name, path) in names {
            if path.is_dir() {
                findings.push(finding(
                    path,
                    None,
                    format!(
                        "subdirectories of {}/ are not read: put the file in {}/ itself",
                        kind.dir(),
                        kind.dir()
                    ),
                ));
                continue;
            }
            // Like the patch directory: only `*.sql` files are SQL, a README beside them is fine.
            if !name.ends_with(".sql") {
                continue;
            }
            let rel = format!("{}/{name}", kind.dir());
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    findings.push(finding(path, None, format!("cannot read: {e}")));
                    continue;
                }
            };
            files.insert(rel.clone(), bytes.clone());
            let Ok(body) = String::from_utf8(bytes) else {
                findings.push(finding(path, None, "not valid UTF-8".into()));
                continue;
            };
            match object::parse(kind, &rel, body) {
                Ok(o) => objects.push((path, o)),
                Err(e) => findings.push(finding(path, e.line, e.message)),
            }
        }
    }
    if findings.is_empty() && objects.is_empty() {
        findings.push(finding(
            dir.to_path_buf(),
            None,
            "holds no objects: put one CREATE per file under types/, functions/ or views/".into(),
        ));
    }
    // Two files creating one type or view is the same object twice; routines may be overloaded.
    for i in 0..objects.len() {
        for j in 0..i {
            let (a, b) = (&objects[j].1, &objects[i].1);
            if a.kind == b.kind && a.kind != ObjectKind::Function && a.name == b.name {
                findings.push(finding(
                    objects[i].0.clone(),
                    Some(b.line),
                    format!("{} `{}` is also created by {}", b.kind, b.name, a.rel_path),
                ));
            }
        }
    }
    let objects: Vec<ObjectFile> = objects.into_iter().map(|(_, o)| o).collect();
    let ordered = match order::package(&objects) {
        Ok(o) => Some(o),
        Err(message) => {
            findings.push(finding(dir.to_path_buf(), None, message));
            None
        }
    };
    match (manifest, ordered) {
        (Some(manifest), Some(ordered)) if findings.is_empty() => {
            let mut slots: Vec<Option<ObjectFile>> = objects.into_iter().map(Some).collect();
            let objects = ordered
                .order
                .iter()
                .map(|&i| slots[i].take().expect("each index once"))
                .collect();
            Ok(Package {
                dir: dir.to_path_buf(),
                manifest,
                objects,
                routine_cycle: ordered.routine_cycle,
                checksum: checksum(&files),
            })
        }
        _ => Err(findings),
    }
}

/// Orders packages so each follows the packages it depends on; a missing
/// dependency or a cycle is a finding, and its packages are left out.
fn dependency_order(packages: Vec<Package>, findings: &mut Vec<PackageFinding>) -> Vec<Package> {
    let index: BTreeMap<&str, usize> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name().as_str(), i))
        .collect();
    let mut bad = vec![false; packages.len()];
    let mut after = vec![Vec::new(); packages.len()];
    for (i, p) in packages.iter().enumerate() {
        for d in &p.manifest.depends {
            match index.get(d.as_str()) {
                Some(&j) => after[i].push(j),
                None => {
                    bad[i] = true;
                    findings.push(PackageFinding {
                        file: p.dir.join("package.yaml"),
                        line: None,
                        message: format!(
                            "package `{}` depends on `{d}`, which is not in the packages directory (or has errors)",
                            p.name()
                        ),
                    });
                }
            }
        }
    }
    let order = loop {
        match order::topological(packages.len(), &after) {
            Ok(order) => break order,
            Err(cycle) => {
                let first = cycle[0];
                findings.push(PackageFinding {
                    file: packages[first].dir.join("package.yaml"),
                    line: None,
                    message: format!(
                        "packages depend on each other in a circle: {}",
                        cycle
                            .iter()
                            .map(|&i| format!("`{}`", packages[i].name()))
                            .collect::<Vec<_>>()
                            .join(" → ")
                    ),
                });
                // Break the circle to find any other one; its members stay refused.
                for &i in &cycle {
                    bad[i] = true;
                }
                let (a, b) = (cycle[0], cycle[1]);
                after[a].retain(|&d| d != b);
            }
        }
    };
    // A package whose dependency is refused is refused too (transitively, in order).
    for &i in &order {
        if after[i].iter().any(|&d| bad[d]) && !bad[i] {
            bad[i] = true;
            findings.push(PackageFinding {
                file: packages[i].dir.join("package.yaml"),
                line: None,
                message: format!(
                    "package `{}` cannot be deployed: a package it depends on has errors",
                    packages[i].name()
                ),
            });
        }
    }
    let mut slots: Vec<Option<Package>> = packages.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter(|&i| !bad[i])
        .map(|i| slots[i].take().expect("each index once"))
        .collect()
}

/// The package's checksum: SHA-256 of the `sha256sum`-style listing of its
/// files (`package.yaml` and every `*.sql` under types/, functions/, views/),
/// one `HEX  PATH\n` line per file in byte order of the relative path. So a
/// DBA can recompute it by hand:
///
/// ```sh
/// cd packages/billing && find package.yaml types functions views -name package.yaml -o -name '*.sql' 2>/dev/null \
///   | LC_ALL=C sort | xargs sha256sum | sha256sum
/// ```
pub fn checksum(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut listing = String::new();
    for (path, bytes) in files {
        listing.push_str(&hex(&Sha256::digest(bytes)));
        listing.push_str("  ");
        listing.push_str(path);
        listing.push('\n');
    }
    hex(&Sha256::digest(listing.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }
        fn write(&self, rel: &str, text: &str) -> &Dir {
            let p = self.0.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }
        fn package(&self, name: &str, extra: &str) -> &Dir {
            self.write(
                &format!("{name}/package.yaml"),
                &format!("name: {name}\nversion: 1.0.0\nowner_role: owner\n{extra}"),
            )
        }
        fn set(&self) -> PackageSet {
            discover(self.0.path()).unwrap()
        }
    }

    fn messages(set: &PackageSet) -> Vec<String> {
        set.findings.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn missing_directory_is_no_packages() {
        let set = discover(Path::new("/nonexistent/packages")).unwrap();
        assert!(set.packages.is_empty() && set.is_ok());
    }

    #[test]
    fn reads_a_package_in_deploy_order() {
        let d = Dir::new();
        d.package("billing", "user_roles: [app]\n")
            .write("billing/types/a_invoice.sql", "CREATE TYPE invoice AS (id int, total cents);\n")
            .write("billing/types/b_cents.sql", "CREATE DOMAIN cents AS numeric(12,2);\n")
            .write("billing/functions/total.sql", "CREATE FUNCTION total(i invoice) RETURNS cents LANGUAGE sql AS $$ SELECT i.total $$;\n")
            .write("billing/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n")
            .write("billing/README.md", "docs")
            .write("billing/types/notes.txt", "not sql")
            .write("README.md", "about the packages");
        let set = d.set();
        assert!(set.is_ok(), "{:?}", messages(&set));
        let p = set.get("billing").unwrap();
        let order: Vec<&str> = p.objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(order, ["cents", "invoice", "total", "v"]);
        assert_eq!(p.schema(), "billing_1_0_0");
        assert_eq!(p.checksum.len(), 64);
    }

    #[test]
    fn checksum_covers_manifest_and_sql_only() {
        let d = Dir::new();
        d.package("a", "")
            .write("a/types/t.sql", "CREATE TYPE t AS (x int);\n");
        let before = d.set().get("a").unwrap().checksum.clone();
        d.write("a/README.md", "more docs");
        assert_eq!(
            d.set().get("a").unwrap().checksum,
            before,
            "docs do not count"
        );
        d.write("a/types/t.sql", "CREATE TYPE t AS (x bigint);\n");
        assert_ne!(d.set().get("a").unwrap().checksum, before, "content counts");
        d.write("a/types/t.sql", "CREATE TYPE t AS (x int);\n");
        assert_eq!(d.set().get("a").unwrap().checksum, before);
        d.package("a", "description: now described\n");
        assert_ne!(
            d.set().get("a").unwrap().checksum,
            before,
            "package.yaml counts"
        );
    }

    #[test]
    fn checksum_is_the_sha256sum_listing() {
        // `printf 'x' | sha256sum` and the listing's own digest, computed independently.
        let mut files = BTreeMap::new();
        files.insert("package.yaml".to_string(), b"x".to_vec());
        let listing =
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881  package.yaml\n";
        assert_eq!(checksum(&files), hex(&Sha256::digest(listing.as_bytes())));
    }

    #[test]
    fn every_problem_is_named() {
        let d = Dir::new();
        d.package("a", "colour: blue\n")
            .write("a/types/t.sql", "CREATE TYPE t AS (x int);\n");
        d.package("b", "")
            .write(
                "b/types/two.sql",
                "CREATE TYPE x AS (a int);\nCREATE TYPE y AS (b int);\n",
            )
            .write(
                "b/functions/tx.sql",
                "BEGIN;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\nCOMMIT;\n",
            )
            .write("b/function/oops.sql", "CREATE VIEW v AS SELECT 1;\n");
        d.write("c/types/t.sql", "CREATE TYPE t AS (x int);\n");
        d.write(
            "d/package.yaml",
            "name: other\nversion: 1.0.0\nowner_role: o\n",
        )
        .write("d/types/t.sql", "CREATE TYPE t AS (x int);\n");
        d.package("e", "")
            .write("e/views/v.sql", "CREATE VIEW s.v AS SELECT 1;\n");
        let set = d.set();
        let m = messages(&set);
        let has = |needle: &str| m.iter().any(|f| f.contains(needle));
        assert!(has("a/package.yaml") && has("`colour`"), "{m:#?}");
        assert!(
            has("b/types/two.sql line 2") && has("two objects"),
            "{m:#?}"
        );
        assert!(
            has("b/functions/tx.sql line 1") && has("transaction control"),
            "{m:#?}"
        );
        assert!(has("unknown directory `function/`"), "{m:#?}");
        assert!(has("no package.yaml"), "{m:#?}");
        assert!(has("differs from its directory `d`"), "{m:#?}");
        assert!(has("e/views/v.sql line 1") && has("`s.v`"), "{m:#?}");
        assert!(set.packages.is_empty());
    }

    #[test]
    fn missing_dependency_and_dependents() {
        let d = Dir::new();
        d.package("app", "depends: [billing]\n")
            .write("app/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n");
        d.package("billing", "depends: [money]\n")
            .write("billing/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n");
        let set = d.set();
        let m = messages(&set);
        assert!(m.iter().any(|f| f.contains("depends on `money`")), "{m:#?}");
        assert!(
            m.iter()
                .any(|f| f.contains("package `app` cannot be deployed")),
            "{m:#?}"
        );
        assert!(set.packages.is_empty());
    }

    #[test]
    fn dependency_cycle_named() {
        let d = Dir::new();
        for (name, dep) in [("a", "b"), ("b", "c"), ("c", "a")] {
            d.package(name, &format!("depends: [{dep}]\n")).write(
                &format!("{name}/views/v.sql"),
                "CREATE VIEW v AS SELECT 1 AS n;\n",
            );
        }
        d.package("free", "")
            .write("free/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n");
        let set = d.set();
        let m = messages(&set);
        assert!(
            m.iter()
                .any(|f| f.contains("circle") && f.contains("`a`") && f.contains("`c`")),
            "{m:#?}"
        );
        let names: Vec<&str> = set.packages.iter().map(|p| p.name().as_str()).collect();
        assert_eq!(names, ["free"]);
    }

    #[test]
    fn dependency_order_and_selection() {
        let d = Dir::new();
        d.package("app", "depends: [billing, geo]\n")
            .write("app/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n");
        d.package("billing", "depends: [money]\n")
            .write("billing/views/v.sql", "CREATE VIEW v AS SELECT 1 AS n;\n");
        d.package("money", "")
            .write("money/types/m.sql", "CREATE DOMAIN m AS numeric;\n");
        d.package("geo", "").write(
            "geo/types/p.sql",
            "CREATE TYPE p AS (x float8, y float8);\n",
        );
        let set = d.set();
        assert!(set.is_ok(), "{:?}", messages(&set));
        let names: Vec<&str> = set.packages.iter().map(|p| p.name().as_str()).collect();
        assert_eq!(names, ["geo", "money", "billing", "app"]);
        let sel: Vec<&str> = set
            .select(&["billing".into()])
            .unwrap()
            .iter()
            .map(|p| p.name().as_str())
            .collect();
        assert_eq!(sel, ["money", "billing"]);
        assert_eq!(set.select(&["nope".into()]).unwrap_err(), ["nope"]);
        assert_eq!(set.select(&[]).unwrap().len(), 4);
    }

    #[test]
    fn duplicate_type_names() {
        let d = Dir::new();
        d.package("a", "")
            .write("a/types/one.sql", "CREATE TYPE t AS (x int);\n")
            .write("a/types/two.sql", "CREATE TYPE T AS (y int);\n")
            .write(
                "a/functions/f1.sql",
                "CREATE FUNCTION f(int) RETURNS int LANGUAGE sql AS 'SELECT 1';\n",
            )
            .write(
                "a/functions/f2.sql",
                "CREATE FUNCTION f(text) RETURNS int LANGUAGE sql AS 'SELECT 2';\n",
            );
        let m = messages(&d.set());
        assert_eq!(m.len(), 1, "{m:#?}");
        assert!(
            m[0].contains("two.sql") && m[0].contains("also created by types/one.sql"),
            "{m:#?}"
        );
    }

    #[test]
    fn empty_package() {
        let d = Dir::new();
        d.package("a", "");
        let m = messages(&d.set());
        assert!(m.iter().any(|f| f.contains("holds no objects")), "{m:#?}");
    }
}
