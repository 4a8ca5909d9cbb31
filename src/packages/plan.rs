//! The deploy plan of one node, a pure function of what the packages directory
//! holds and what the node's `pgconvoy.package` and catalog say: nothing to
//! do, deploy, or — when the schema already holds something else — refuse,
//! rename it aside, or drop it, as the mode says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// What to do when a package's schema already holds other content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse, writing nothing anywhere: bump the version or choose a mode.
    #[default]
    Safe,
    /// Rename the old schema aside (`NAME_…_N`), then deploy.
    Moderate,
    /// Drop the old schema with CASCADE, then deploy.
    Unsafe,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Safe, Mode::Moderate, Mode::Unsafe];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Safe => "safe",
            Mode::Moderate => "moderate",
            Mode::Unsafe => "unsafe",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "safe" => Ok(Mode::Safe),
            "moderate" => Ok(Mode::Moderate),
            "unsafe" => Ok(Mode::Unsafe),
            other => Err(format!(
                "`{other}` is not a deploy mode (safe, moderate or unsafe)"
            )),
        }
    }
}

/// A package as deployed on a node: a live row of `pgconvoy.package`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deployed {
    pub name: String,
    pub version: String,
    pub schema: String,
    pub checksum: String,
}

/// What the plan needs to know about a node.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// Live deployments, by schema.
    pub live: BTreeMap<String, Deployed>,
    /// Every schema in the node's database.
    pub schemas: BTreeSet<String>,
}

/// A package version the run wants on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub version: String,
    pub schema: String,
    pub checksum: String,
}

/// What holds a package's schema on a node when it is not this version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Occupant {
    /// The package, deployed at `version` with other files (or another version of a basic package).
    Package { version: String, checksum: String },
    /// A schema of that name that pgconvoy has no record of.
    Unrecorded,
}

impl Occupant {
    /// What the schema holds, in words, as against the `wanted` version.
    pub fn describe(&self, wanted: &str) -> String {
        match self {
            Occupant::Package { version, checksum } => {
                let checksum = &checksum[..checksum.len().min(12)];
                if version == wanted {
                    format!("{version} with other files (checksum {checksum})")
                } else {
                    format!("version {version} (checksum {checksum})")
                }
            }
            Occupant::Unrecorded => "objects pgconvoy did not deploy".into(),
        }
    }

    /// [`Occupant::describe`] without the checksum.
    pub fn brief(&self, wanted: &str) -> String {
        match self {
            Occupant::Package { version, .. } if version == wanted => {
                format!("{version} with other files")
            }
            Occupant::Package { version, .. } => format!("version {version}"),
            Occupant::Unrecorded => "objects pgconvoy did not deploy".into(),
        }
    }
}

/// What happens to one package on one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Same version, same checksum: nothing to do.
    UpToDate,
    /// The schema is free: create it. `stale` when a record said it was
    /// deployed but the schema is gone (dropped by hand).
    Deploy { stale: bool },
    /// The schema holds something else; `--mode safe` writes nothing anywhere.
    Refuse { occupant: Occupant },
    /// `--mode moderate`: rename the schema to `to`, then deploy.
    RenameAside { occupant: Occupant, to: String },
    /// `--mode unsafe`: `DROP SCHEMA … CASCADE`, then deploy.
    Drop { occupant: Occupant },
}

impl Action {
    /// Whether the node's transaction creates the schema.
    pub fn deploys(&self) -> bool {
        matches!(
            self,
            Action::Deploy { .. } | Action::RenameAside { .. } | Action::Drop { .. }
        )
    }
}

/// One package's step on one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub package: String,
    pub version: String,
    pub schema: String,
    #[serde(flatten)]
    pub action: Action,
}

impl Step {
    /// One line for the operator.
    pub fn describe(&self) -> String {
        let schema = &self.schema;
        match &self.action {
            Action::UpToDate => "up to date".into(),
            Action::Deploy { stale: false } => format!("deploy into new schema `{schema}`"),
            Action::Deploy { stale: true } => {
                format!("deploy into `{schema}` (recorded as deployed, but the schema is gone)")
            }
            Action::Refuse { occupant } => format!(
                "REFUSED: `{schema}` holds {}",
                occupant.describe(&self.version)
            ),
            Action::RenameAside { occupant, to } => format!(
                "rename `{schema}` aside to `{to}` (it holds {}), then deploy",
                occupant.brief(&self.version)
            ),
            Action::Drop { occupant } => format!(
                "DROP SCHEMA `{schema}` CASCADE (it holds {}), then deploy",
                occupant.brief(&self.version)
            ),
        }
    }
}

/// Plans `wanted` (in deploy order) on a node in `state` under `mode`.
pub fn plan_node(wanted: &[Wanted], state: &NodeState, mode: Mode) -> Vec<Step> {
    let mut taken: BTreeSet<String> = state.schemas.clone();
    wanted
        .iter()
        .map(|w| {
            let action = action(w, state, mode, &mut taken);
            Step {
                package: w.name.clone(),
                version: w.version.clone(),
                schema: w.schema.clone(),
                action,
            }
        })
        .collect()
}

fn action(w: &Wanted, state: &NodeState, mode: Mode, taken: &mut BTreeSet<String>) -> Action {
    let record = state.live.get(&w.schema);
    let exists = state.schemas.contains(&w.schema);
    if !exists {
        return Action::Deploy {
            stale: record.is_some(),
        };
    }
    let occupant = match record {
        Some(r) if r.name == w.name && r.version == w.version && r.checksum == w.checksum => {
            return Action::UpToDate
        }
        Some(r) => Occupant::Package {
            version: r.version.clone(),
            checksum: r.checksum.clone(),
        },
        None => Occupant::Unrecorded,
    };
    match mode {
        Mode::Safe => Action::Refuse { occupant },
        Mode::Unsafe => Action::Drop { occupant },
        Mode::Moderate => {
            let to = aside_name(&w.schema, taken);
            taken.insert(to.clone());
            Action::RenameAside { occupant, to }
        }
    }
}

/// `SCHEMA_N` with the smallest N ≥ 1 that no schema has.
pub fn aside_name(schema: &str, taken: &BTreeSet<String>) -> String {
    (1u32..)
        .map(|n| format!("{schema}_{n}"))
        .find(|name| !taken.contains(name))
        .expect("some suffix is free")
}

/// What each mode would do with a step that meets an occupied schema (for
/// the dry run), or `None` when the schema is free or up to date.
pub fn alternatives(step: &Step, state: &NodeState) -> Option<Vec<(Mode, String)>> {
    let occupant = match &step.action {
        Action::Refuse { occupant }
        | Action::RenameAside { occupant, .. }
        | Action::Drop { occupant } => occupant.clone(),
        Action::UpToDate | Action::Deploy { .. } => return None,
    };
    let to = match &step.action {
        Action::RenameAside { to, .. } => to.clone(),
        _ => aside_name(&step.schema, &state.schemas),
    };
    Some(
        [
            Action::Refuse {
                occupant: occupant.clone(),
            },
            Action::RenameAside {
                occupant: occupant.clone(),
                to,
            },
            Action::Drop { occupant },
        ]
        .into_iter()
        .zip(Mode::ALL)
        .map(|(action, m)| {
            let s = Step {
                action,
                ..step.clone()
            };
            (m, s.describe())
        })
        .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(name: &str, version: &str, checksum: &str) -> Wanted {
        let schema = format!("{name}_{}", version.replace('.', "_"));
        Wanted {
            name: name.into(),
            version: version.into(),
            schema,
            checksum: checksum.into(),
        }
    }

    fn state(live: &[(&str, &str, &str)], other_schemas: &[&str]) -> NodeState {
        let mut s = NodeState::default();
        for (name, version, checksum) in live {
            let w = wanted(name, version, checksum);
            s.schemas.insert(w.schema.clone());
            s.live.insert(
                w.schema.clone(),
                Deployed {
                    name: w.name,
                    version: w.version,
                    schema: w.schema,
                    checksum: w.checksum,
                },
            );
        }
        s.schemas
            .extend(other_schemas.iter().map(|s| s.to_string()));
        s
    }

    fn one(w: Wanted, s: &NodeState, mode: Mode) -> Action {
        plan_node(&[w], s, mode).remove(0).action
    }

    #[test]
    fn table() {
        let pkg = wanted("billing", "1.9.0", "aaa");
        let other_content = Occupant::Package {
            version: "1.9.0".into(),
            checksum: "bbb".into(),
        };
        let cases: Vec<(&str, NodeState, Mode, Action)> = vec![
            (
                "fresh node",
                state(&[], &[]),
                Mode::Safe,
                Action::Deploy { stale: false },
            ),
            (
                "same version, same files",
                state(&[("billing", "1.9.0", "aaa")], &[]),
                Mode::Safe,
                Action::UpToDate,
            ),
            (
                "same version, same files, any mode",
                state(&[("billing", "1.9.0", "aaa")], &[]),
                Mode::Unsafe,
                Action::UpToDate,
            ),
            (
                "older version beside",
                state(&[("billing", "1.8.0", "zzz")], &[]),
                Mode::Safe,
                Action::Deploy { stale: false },
            ),
            (
                "changed files, safe",
                state(&[("billing", "1.9.0", "bbb")], &[]),
                Mode::Safe,
                Action::Refuse {
                    occupant: other_content.clone(),
                },
            ),
            (
                "changed files, moderate",
                state(&[("billing", "1.9.0", "bbb")], &[]),
                Mode::Moderate,
                Action::RenameAside {
                    occupant: other_content.clone(),
                    to: "billing_1_9_0_1".into(),
                },
            ),
            (
                "moderate skips taken names",
                state(
                    &[("billing", "1.9.0", "bbb")],
                    &["billing_1_9_0_1", "billing_1_9_0_2"],
                ),
                Mode::Moderate,
                Action::RenameAside {
                    occupant: other_content.clone(),
                    to: "billing_1_9_0_3".into(),
                },
            ),
            (
                "changed files, unsafe",
                state(&[("billing", "1.9.0", "bbb")], &[]),
                Mode::Unsafe,
                Action::Drop {
                    occupant: other_content,
                },
            ),
            (
                "hand-made schema, safe",
                state(&[], &["billing_1_9_0"]),
                Mode::Safe,
                Action::Refuse {
                    occupant: Occupant::Unrecorded,
                },
            ),
            (
                "hand-made schema, unsafe",
                state(&[], &["billing_1_9_0"]),
                Mode::Unsafe,
                Action::Drop {
                    occupant: Occupant::Unrecorded,
                },
            ),
        ];
        for (what, s, mode, expected) in cases {
            assert_eq!(one(pkg.clone(), &s, mode), expected, "{what}");
        }
    }

    #[test]
    fn record_without_schema_redeploys() {
        let mut s = state(&[("billing", "1.9.0", "aaa")], &[]);
        s.schemas.clear();
        assert_eq!(
            one(wanted("billing", "1.9.0", "aaa"), &s, Mode::Safe),
            Action::Deploy { stale: true }
        );
    }

    #[test]
    fn basic_package_new_version_meets_old_one() {
        let basic = |version: &str, checksum: &str| Wanted {
            name: "util".into(),
            version: version.into(),
            schema: "util".into(),
            checksum: checksum.into(),
        };
        let mut s = NodeState::default();
        s.schemas.insert("util".into());
        s.live.insert(
            "util".into(),
            Deployed {
                name: "util".into(),
                version: "1.0.0".into(),
                schema: "util".into(),
                checksum: "c1".into(),
            },
        );
        assert_eq!(one(basic("1.0.0", "c1"), &s, Mode::Safe), Action::UpToDate);
        assert!(matches!(
            one(basic("1.1.0", "c2"), &s, Mode::Safe),
            Action::Refuse {
                occupant: Occupant::Package { .. }
            }
        ));
        assert!(matches!(
            one(basic("1.1.0", "c2"), &s, Mode::Moderate),
            Action::RenameAside { to, .. } if to == "util_1"
        ));
    }

    #[test]
    fn two_renames_in_one_plan_get_two_names() {
        // Two packages cannot share a schema, but the reserved names must not collide either.
        let mut taken = BTreeSet::new();
        taken.insert("a_1".to_string());
        assert_eq!(aside_name("a", &taken), "a_2");
    }

    #[test]
    fn alternatives_describe_every_mode() {
        let s = state(&[("billing", "1.9.0", "bbb")], &[]);
        let step = plan_node(&[wanted("billing", "1.9.0", "aaa")], &s, Mode::Safe).remove(0);
        let alt = alternatives(&step, &s).unwrap();
        assert_eq!(alt.len(), 3);
        assert!(alt[0].1.starts_with("REFUSED"));
        assert!(alt[1].1.contains("billing_1_9_0_1"));
        assert!(alt[2].1.contains("CASCADE"));
        let fresh = plan_node(&[wanted("billing", "2.0.0", "aaa")], &s, Mode::Safe).remove(0);
        assert!(alternatives(&fresh, &s).is_none());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("moderate".parse(), Ok(Mode::Moderate));
        assert!("careful".parse::<Mode>().is_err());
    }
}
