//! `packages/NAME/package.yaml` → a checked [`Manifest`]: the package's name,
//! semantic version, subclass, owner and user roles, and dependencies.
//!
//! Like `cluster.yaml`, the raw YAML goes into a private struct that denies
//! unknown keys, and comes out as types that cannot hold an invalid state: a
//! name that is a plain lowercase identifier, a `MAJOR.MINOR.PATCH` version,
//! role names PostgreSQL can hold, and a schema name that fits in 63 bytes.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use super::{yaml_message, ConfigError};

/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// Room kept at the end of a schema name for the `_N` suffix `--mode moderate`
/// gives a schema it renames aside.
const ASIDE_ROOM: usize = 4;

/// A package's name: a lowercase identifier (`billing`, `geo_utils`), so that
/// it is its own schema name (basic) or the start of one (versioned) without quoting surprises.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PackageName(String);

impl PackageName {
    pub fn parse(name: &str) -> Result<PackageName, String> {
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(format!(
                "package name `{name}` must be a lowercase identifier: a-z first, then a-z, 0-9 or _"
            ));
        }
        if name.starts_with("pg_") {
            return Err(format!(
                "package name `{name}`: schema names starting with `pg_` are reserved by PostgreSQL"
            ));
        }
        if name == "pgconvoy" || name == "public" || name == "information_schema" {
            return Err(format!(
                "package name `{name}` is the name of a schema that is not a package's"
            ));
        }
        Ok(PackageName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A package's version: `MAJOR.MINOR.PATCH` of semantic versioning, ordered
/// numerically. Pre-release and build suffixes are refused: a versioned
/// package's schema is named from the three numbers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl PackageVersion {
    pub const fn new(major: u64, minor: u64, patch: u64) -> PackageVersion {
        PackageVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for PackageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl serde::Serialize for PackageVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for PackageVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(['-', '+']) {
            return Err(format!(
                "version `{s}`: pre-release and build suffixes are not supported (a versioned package's schema is named from MAJOR.MINOR.PATCH)"
            ));
        }
        let parts: Vec<&str> = s.split('.').collect();
        let bad =
            || format!("version `{s}` is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.9.0)");
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut n = [0u64; 3];
        for (slot, part) in n.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            // Semantic versioning forbids leading zeros; they would also make
            // `1.02.0` and `1.2.0` two versions with one schema name.
            if part.len() > 1 && part.starts_with('0') {
                return Err(format!(
                    "version `{s}`: `{part}` has a leading zero, which semantic versioning does not allow"
                ));
            }
            *slot = part
                .parse()
                .map_err(|_| format!("version `{s}`: `{part}` is too large"))?;
        }
        Ok(PackageVersion::new(n[0], n[1], n[2]))
    }
}

/// Where a package's objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subclass {
    /// Schema `NAME_MAJOR_MINOR_PATCH`: each version beside the others, so old
    /// clients keep calling the version they were built against.
    #[default]
    Versioned,
    /// Schema `NAME`: one version at a time.
    Basic,
}

impl fmt::Display for Subclass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Subclass::Versioned => "versioned",
            Subclass::Basic => "basic",
        })
    }
}

/// A role name as the catalog holds it (taken literally: `Billing` is not `billing`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(name: &str) -> Result<RoleName, String> {
        if name.is_empty() {
            return Err("role name is empty".into());
        }
        if name.len() > MAX_IDENT {
            return Err(format!(
                "role name `{name}` is longer than {MAX_IDENT} bytes"
            ));
        }
        if name.contains('\0') {
            return Err("role name holds a NUL character".into());
        }
        if name.eq_ignore_ascii_case("public") {
            return Err(
                "`public` is every role, not a role: name the roles that may use the package"
                    .into(),
            );
        }
        Ok(RoleName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked `package.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: PackageName,
    pub version: PackageVersion,
    pub description: Option<String>,
    pub subclass: Subclass,
    /// Owns the schema and every object in it.
    pub owner_role: RoleName,
    /// Get USAGE on the schema, EXECUTE on its routines, SELECT on its views.
    pub user_roles: Vec<RoleName>,
    /// Names of packages this one uses; each is deployed before it.
    pub depends: Vec<PackageName>,
}

impl Manifest {
    /// The schema this version of the package is deployed into:
    /// `NAME_MAJOR_MINOR_PATCH` (versioned) or `NAME` (basic).
    pub fn schema(&self) -> String {
        schema_name(&self.name, self.version, self.subclass)
    }

    /// Reads and checks `package.yaml` at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::from_yaml(path, &text)
    }

    /// Checks the YAML `text` as if read from `path`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Manifest, ConfigError> {
        let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: yaml_message(&e),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let name = raw
            .name
            .ok_or_else(|| invalid("missing key `name`".into()))?;
        let name = PackageName::parse(&name).map_err(|m| invalid(format!("key `name`: {m}")))?;
        let version = match raw.version {
            None => {
                return Err(invalid(
                    "missing key `version` (e.g. `version: 1.0.0`)".into(),
                ))
            }
            Some(RawVersion::Text(t)) => t,
            // `version: 1.0` is read by YAML as a number: say what to write instead.
            Some(RawVersion::Number(n)) => {
                return Err(invalid(format!(
                "key `version`: `{n:?}` is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.9.0)"
            )))
            }
        };
        let version: PackageVersion = version
            .parse()
            .map_err(|m| invalid(format!("key `version`: {m}")))?;
        let owner_role = raw.owner_role.ok_or_else(|| {
            invalid(
                "missing key `owner_role` (the role that owns the package's schema and objects)"
                    .into(),
            )
        })?;
        let owner_role =
            RoleName::parse(&owner_role).map_err(|m| invalid(format!("key `owner_role`: {m}")))?;
        let mut user_roles = Vec::with_capacity(raw.user_roles.len());
        for role in &raw.user_roles {
            let role =
                RoleName::parse(role).map_err(|m| invalid(format!("key `user_roles`: {m}")))?;
            if user_roles.contains(&role) {
                return Err(invalid(format!(
                    "key `user_roles`: `{role}` is listed twice"
                )));
            }
            user_roles.push(role);
        }
        let mut depends = Vec::with_capacity(raw.depends.len());
        for dep in &raw.depends {
            let dep =
                PackageName::parse(dep).map_err(|m| invalid(format!("key `depends`: {m}")))?;
            if dep == name {
                return Err(invalid(format!(
                    "key `depends`: package `{name}` depends on itself"
                )));
            }
            if depends.contains(&dep) {
                return Err(invalid(format!("key `depends`: `{dep}` is listed twice")));
            }
            depends.push(dep);
        }
        let subclass = raw.subclass.unwrap_or_default();
        let schema = schema_name(&name, version, subclass);
        if schema.len() > MAX_IDENT - ASIDE_ROOM {
            return Err(invalid(format!(
                "schema name `{schema}` is longer than {} bytes (PostgreSQL keeps {MAX_IDENT}, and --mode moderate needs room for a `_N` suffix): shorten the package name",
                MAX_IDENT - ASIDE_ROOM
            )));
        }
        Ok(Manifest {
            name,
            version,
            description: raw.description,
            subclass,
            owner_role,
            user_roles,
            depends,
        })
    }
}

/// The schema of `name` at `version`: `NAME_MAJOR_MINOR_PATCH` for a
/// versioned package (`billing_1_9_0`), `NAME` for a basic one.
pub fn schema_name(name: &PackageName, version: PackageVersion, subclass: Subclass) -> String {
    match subclass {
        Subclass::Versioned => format!(
            "{name}_{}_{}_{}",
            version.major, version.minor, version.patch
        ),
        Subclass::Basic => name.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    version: Option<RawVersion>,
    description: Option<String>,
    subclass: Option<Subclass>,
    owner_role: Option<String>,
    #[serde(default)]
    user_roles: Vec<String>,
    #[serde(default)]
    depends: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Text(String),
    Number(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: billing\nversion: 1.9.0\ndescription: invoices and totals\nsubclass: versioned\nowner_role: billing_owner\nuser_roles: [app, reporting]\ndepends: [money]\n";

    fn load(yaml: &str) -> Result<Manifest, String> {
        Manifest::from_yaml(Path::new("packages/billing/package.yaml"), yaml)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_every_key() {
        let m = load(OK).unwrap();
        assert_eq!(m.name.as_str(), "billing");
        assert_eq!(m.version, PackageVersion::new(1, 9, 0));
        assert_eq!(m.subclass, Subclass::Versioned);
        assert_eq!(m.owner_role.as_str(), "billing_owner");
        assert_eq!(m.user_roles.len(), 2);
        assert_eq!(m.depends, vec![PackageName::parse("money").unwrap()]);
        assert_eq!(m.schema(), "billing_1_9_0");
    }

    #[test]
    fn defaults() {
        let m = load("name: geo\nversion: 0.1.0\nowner_role: o\n").unwrap();
        assert_eq!(m.subclass, Subclass::Versioned);
        assert!(m.user_roles.is_empty() && m.depends.is_empty());
        assert_eq!(m.description, None);
    }

    #[test]
    fn basic_schema_is_the_name() {
        let m = load(&OK.replace("versioned", "basic")).unwrap();
        assert_eq!(m.schema(), "billing");
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let e = load(&format!("{OK}owner: x\n")).unwrap_err();
        assert!(e.contains("`owner`"), "{e}");
        assert!(e.contains("package.yaml"), "{e}");
        let e = load(&OK.replace("depends", "depend")).unwrap_err();
        assert!(e.contains("`depend`"), "{e}");
    }

    #[test]
    fn missing_keys() {
        for (key, yaml) in [
            ("name", "version: 1.0.0\nowner_role: o\n"),
            ("version", "name: a\nowner_role: o\n"),
            ("owner_role", "name: a\nversion: 1.0.0\n"),
        ] {
            let e = load(yaml).unwrap_err();
            assert!(e.contains(&format!("missing key `{key}`")), "{e}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!("0.0.0".parse(), Ok(PackageVersion::new(0, 0, 0)));
        assert_eq!("10.20.30".parse(), Ok(PackageVersion::new(10, 20, 30)));
        for bad in [
            "1.0", "1", "1.0.0.0", "a.b.c", "1.02.0", "1..0", "", "v1.0.0", " 1.0.0",
        ] {
            assert!(bad.parse::<PackageVersion>().is_err(), "{bad}");
        }
        let e = "1.0.0-rc.1".parse::<PackageVersion>().unwrap_err();
        assert!(e.contains("pre-release"), "{e}");
        assert!(PackageVersion::new(1, 10, 0) > PackageVersion::new(1, 9, 0));
        let e = load(&OK.replace("1.9.0", "1.9")).unwrap_err();
        assert!(e.contains("`version`") && e.contains("1.9"), "{e}");
        let e = load(&OK.replace("1.9.0", "'1.9'")).unwrap_err();
        assert!(e.contains("`version`"), "{e}");
    }

    #[test]
    fn names() {
        assert!(PackageName::parse("billing").is_ok());
        assert!(PackageName::parse("geo_utils2").is_ok());
        for bad in [
            "", "Billing", "2fa", "_x", "a-b", "a.b", "pg_x", "public", "pgconvoy",
        ] {
            assert!(PackageName::parse(bad).is_err(), "{bad}");
        }
        let e = load(&OK.replace("name: billing", "name: Billing")).unwrap_err();
        assert!(e.contains("`name`"), "{e}");
    }

    #[test]
    fn roles() {
        assert!(RoleName::parse("App Users").is_ok());
        assert!(RoleName::parse("").is_err());
        assert!(RoleName::parse("PUBLIC").is_err());
        assert!(RoleName::parse(&"r".repeat(64)).is_err());
        let e = load(&OK.replace("[app, reporting]", "[app, app]")).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = load(&OK.replace("[app, reporting]", "[public]")).unwrap_err();
        assert!(e.contains("`user_roles`"), "{e}");
    }

    #[test]
    fn depends_checked() {
        let e = load(&OK.replace("[money]", "[billing]")).unwrap_err();
        assert!(e.contains("itself"), "{e}");
        let e = load(&OK.replace("[money]", "[Money]")).unwrap_err();
        assert!(e.contains("`depends`"), "{e}");
    }

    #[test]
    fn schema_length_is_bounded() {
        let long = "a".repeat(60);
        let e = load(&OK.replace("name: billing", &format!("name: {long}"))).unwrap_err();
        assert!(e.contains("longer"), "{e}");
        assert!(load(&OK.replace("name: billing", &format!("name: {}", "a".repeat(45)))).is_ok());
    }
}
