//! New tables joining the replication set (pure): Slony-I cannot add a table to a set that
//! has subscribers, so the tables and sequences `std` patches created go into a temporary set
//! that every receiver of the target set subscribes to (from the same provider), which is
//! then merged into the target set.
//!
//! What to join comes from the origin's joining table (filled by each patch's script with
//! its body), so a run that died half-way leaves a record, and the next run finishes it:
//! temporary sets of pgconvoy's that are still there are subscribed where missing and merged
//! before anything new is added.

use std::collections::BTreeSet;
use std::fmt;

use super::script::slonik_string;
use crate::db::quote::quote_ident;
use crate::patches::patch::PatchVersion;

/// The comment that marks a temporary set as pgconvoy's (for set `target`).
pub fn temp_set_comment(target: u32) -> String {
    format!("pgconvoy: new tables joining set {target}")
}

/// Table or sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelKind {
    Table,
    Sequence,
}

impl RelKind {
    /// From `pg_class.relkind`.
    pub fn from_relkind(c: i8) -> Option<RelKind> {
        match c as u8 {
            b'r' => Some(RelKind::Table),
            b'S' => Some(RelKind::Sequence),
            _ => None,
        }
    }
}

/// A relation a `std` patch created, as the origin sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: PatchVersion,
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    /// Whether it still exists.
    pub exists: bool,
    /// The set it is in already, if any.
    pub in_set: Option<u32>,
    /// Tables only: whether it has a primary key.
    pub has_primary_key: bool,
}

impl Candidate {
    /// `"schema"."name"`, as Slony's `fully qualified name` takes it.
    pub fn fqname(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One subscription as Slony records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subscription {
    pub set: u32,
    pub provider: u32,
    pub receiver: u32,
    pub forward: bool,
    pub active: bool,
}

/// What the origin's catalog says about sets (read from `sl_set`, `sl_subscribe`,
/// `sl_table`, `sl_sequence`).
#[derive(Debug, Clone, Default)]
pub struct SetCatalog {
    /// `(set id, origin, comment)` of every set.
    pub sets: Vec<(u32, u32, String)>,
    pub subscriptions: Vec<Subscription>,
    pub max_table_id: u32,
    pub max_sequence_id: u32,
}

/// A set that Slony will not let a relation join, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A table without a primary key: Slony-I cannot replicate it.
    NoPrimaryKey,
    /// Dropped again (by a later patch).
    Gone,
    /// Already in a set (the operator added it, or an earlier run did).
    InSet(u32),
}

/// A temporary set to fill (when new), subscribe where still missing, and merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempSet {
    pub id: u32,
    /// Whether pgconvoy creates it in this run (else it is left from an earlier one).
    pub create: bool,
    /// `(table id, candidate)` added to it in this run.
    pub tables: Vec<(u32, Candidate)>,
    /// `(sequence id, candidate)` added to it in this run.
    pub sequences: Vec<(u32, Candidate)>,
    /// Subscriptions still to make, providers before their receivers.
    pub subscribe: Vec<Subscription>,
}

/// Everything a join does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinPlan {
    pub target: u32,
    pub origin: u32,
    /// Temporary sets, leftovers first.
    pub sets: Vec<TempSet>,
    pub skipped: Vec<(Candidate, Skip)>,
    /// Rows of the joining table done with once every set merged.
    pub done: Vec<Candidate>,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefusal {
    /// The target set does not exist.
    NoSet(u32),
    /// The target set's origin is not the master.
    WrongOrigin { set: u32, origin: u32, master: u32 },
}

impl fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinRefusal::NoSet(s) => write!(f, "replication set {s} (key `slony.set`) does not exist"),
            JoinRefusal::WrongOrigin { set, origin, master } => write!(
                f,
                "replication set {set} has origin node {origin}, but the master is slony node {master}: std patches must run on the set's origin"
            ),
        }
    }
}

/// Subscriptions of `template` (the target set's) for set `set`, minus those `existing`
/// already has, ordered so every provider is subscribed before its receivers.
fn mirror(
    template: &[Subscription],
    existing: &[Subscription],
    set: u32,
    origin: u32,
) -> Vec<Subscription> {
    let mut have: BTreeSet<u32> = existing.iter().map(|s| s.receiver).collect();
    let mut todo: Vec<Subscription> = template
        .iter()
        .filter(|t| !have.contains(&t.receiver))
        .map(|t| Subscription {
            set,
            active: false,
            ..*t
        })
        .collect();
    todo.sort();
    let mut out = Vec::new();
    while !todo.is_empty() {
        let ready = todo
            .iter()
            .position(|s| s.provider == origin || have.contains(&s.provider));
        // A provider that never becomes ready (a cycle, or a provider not subscribed itself)
        // would make Slony refuse anyway; keep the rest in order and let slonik say why.
        let s = todo.remove(ready.unwrap_or(0));
        have.insert(s.receiver);
        out.push(s);
    }
    out
}

/// Plans the join of `candidates` into set `target` whose origin must be `origin`.
pub fn plan(
    target: u32,
    origin: u32,
    catalog: &SetCatalog,
    candidates: &[Candidate],
) -> Result<JoinPlan, JoinRefusal> {
    let Some((_, set_origin, _)) = catalog.sets.iter().find(|(id, _, _)| *id == target) else {
        return Err(JoinRefusal::NoSet(target));
    };
    if *set_origin != origin {
        return Err(JoinRefusal::WrongOrigin {
            set: target,
            origin: *set_origin,
            master: origin,
        });
    }
    let template: Vec<Subscription> = catalog
        .subscriptions
        .iter()
        .filter(|s| s.set == target)
        .copied()
        .collect();
    let marker = temp_set_comment(target);
    let mut plan = JoinPlan {
        target,
        origin,
        ..JoinPlan::default()
    };
    let leftovers: Vec<u32> = catalog
        .sets
        .iter()
        .filter(|(id, o, comment)| *id != target && *o == origin && *comment == marker)
        .map(|(id, _, _)| *id)
        .collect();
    for id in &leftovers {
        let existing: Vec<Subscription> = catalog
            .subscriptions
            .iter()
            .filter(|s| s.set == *id)
            .copied()
            .collect();
        plan.sets.push(TempSet {
            id: *id,
            create: false,
            tables: Vec::new(),
            sequences: Vec::new(),
            subscribe: mirror(&template, &existing, *id, origin),
        });
    }

    let mut joining = Vec::new();
    for c in candidates {
        let skip = if !c.exists {
            Some(Skip::Gone)
        } else if let Some(s) = c.in_set {
            // In a leftover temporary set: it joins when that set merges.
            (!leftovers.contains(&s)).then_some(Skip::InSet(s))
        } else if c.kind == RelKind::Table && !c.has_primary_key {
            Some(Skip::NoPrimaryKey)
        } else {
            None
        };
        match skip {
            Some(reason) => plan.skipped.push((c.clone(), reason)),
            None if c.in_set.is_none() => joining.push(c.clone()),
            None => {}
        }
        plan.done.push(c.clone());
    }
    if !joining.is_empty() {
        let id = catalog.sets.iter().map(|(id, _, _)| *id).max().unwrap_or(0) + 1;
        let mut next_table = catalog.max_table_id;
        let mut next_sequence = catalog.max_sequence_id;
        let mut set = TempSet {
            id,
            create: true,
            tables: Vec::new(),
            sequences: Vec::new(),
            subscribe: mirror(&template, &[], id, origin),
        };
        for c in joining {
            match c.kind {
                RelKind::Table => {
                    next_table += 1;
                    set.tables.push((next_table, c));
                }
                RelKind::Sequence => {
                    next_sequence += 1;
                    set.sequences.push((next_sequence, c));
                }
            }
        }
        plan.sets.push(set);
    }
    Ok(plan)
}

impl JoinPlan {
    /// Whether there is anything to do in Slony (skipped rows aside).
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The slonik commands that create the new sets, add their relations and subscribe every
    /// receiver (after the preamble).
    pub fn subscribe_script(&self) -> String {
        let origin = self.origin;
        let mut s = String::new();
        for set in &self.sets {
            if set.create {
                s.push_str(&format!(
                    "create set (id = {}, origin = {origin}, comment = {});\n",
                    set.id,
                    slonik_string(&temp_set_comment(self.target))
                ));
            }
            for (id, c) in &set.tables {
                s.push_str(&format!(
                    "set add table (set id = {}, origin = {origin}, id = {id}, fully qualified name = {}, comment = {});\n",
                    set.id,
                    slonik_string(&c.fqname()),
                    slonik_string(&format!("pgconvoy: created by patch {}", c.version))
                ));
            }
            for (id, c) in &set.sequences {
                s.push_str(&format!(
                    "set add sequence (set id = {}, origin = {origin}, id = {id}, fully qualified name = {}, comment = {});\n",
                    set.id,
                    slonik_string(&c.fqname()),
                    slonik_string(&format!("pgconvoy: created by patch {}", c.version))
                ));
            }
            for sub in &set.subscribe {
                s.push_str(&format!(
                    "subscribe set (id = {}, provider = {}, receiver = {}, forward = {});\n",
                    set.id,
                    sub.provider,
                    sub.receiver,
                    if sub.forward { "yes" } else { "no" }
                ));
            }
        }
        s
    }

    /// The slonik commands that merge every temporary set into the target set.
    pub fn merge_script(&self) -> String {
        self.sets
            .iter()
            .map(|set| {
                format!(
                    "merge set (id = {}, add id = {}, origin = {});\n",
                    self.target, set.id, self.origin
                )
            })
            .collect()
    }

    /// One line per relation joining, for notes and the dry run.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for set in &self.sets {
            let names: Vec<String> = set
                .tables
                .iter()
                .chain(set.sequences.iter())
                .map(|(_, c)| format!("{c} ({})", c.version))
                .collect();
            if set.create {
                out.push(format!(
                    "{} into set {} through temporary set {}",
                    names.join(", "),
                    self.target,
                    set.id
                ));
            } else {
                out.push(format!(
                    "temporary set {} left by an earlier run is subscribed where missing and merged into set {}",
                    set.id, self.target
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, kind: RelKind) -> Candidate {
        Candidate {
            version: PatchVersion::new(1, 2, 0),
            schema: "public".into(),
            name: name.into(),
            kind,
            exists: true,
            in_set: None,
            has_primary_key: kind == RelKind::Table,
        }
    }

    fn sub(set: u32, provider: u32, receiver: u32) -> Subscription {
        Subscription {
            set,
            provider,
            receiver,
            forward: true,
            active: true,
        }
    }

    fn catalog() -> SetCatalog {
        SetCatalog {
            sets: vec![(1, 1, "app".into())],
            subscriptions: vec![sub(1, 1, 2), sub(1, 1, 3)],
            max_table_id: 4,
            max_sequence_id: 0,
        }
    }

    #[test]
    fn new_tables_go_through_a_temporary_set() {
        let p = plan(
            1,
            1,
            &catalog(),
            &[
                cand("u", RelKind::Table),
                cand("u_id_seq", RelKind::Sequence),
            ],
        )
        .unwrap();
        assert_eq!(p.sets.len(), 1);
        let s = &p.sets[0];
        assert_eq!((s.id, s.create), (2, true));
        assert_eq!(s.tables[0].0, 5);
        assert_eq!(s.sequences[0].0, 1);
        assert_eq!(s.subscribe.len(), 2);
        let script = p.subscribe_script();
        assert_eq!(
            script,
            "create set (id = 2, origin = 1, comment = 'pgconvoy: new tables joining set 1');\n\
             set add table (set id = 2, origin = 1, id = 5, fully qualified name = '\"public\".\"u\"', comment = 'pgconvoy: created by patch 1-2-0');\n\
             set add sequence (set id = 2, origin = 1, id = 1, fully qualified name = '\"public\".\"u_id_seq\"', comment = 'pgconvoy: created by patch 1-2-0');\n\
             subscribe set (id = 2, provider = 1, receiver = 2, forward = yes);\n\
             subscribe set (id = 2, provider = 1, receiver = 3, forward = yes);\n"
        );
        assert_eq!(
            p.merge_script(),
            "merge set (id = 1, add id = 2, origin = 1);\n"
        );
        assert_eq!(p.done.len(), 2);
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn tables_slony_cannot_take_are_skipped_with_a_reason() {
        let mut nopk = cand("loose", RelKind::Table);
        nopk.has_primary_key = false;
        let mut gone = cand("gone", RelKind::Table);
        gone.exists = false;
        let mut there = cand("there", RelKind::Table);
        there.in_set = Some(1);
        let p = plan(1, 1, &catalog(), &[nopk, gone, there]).unwrap();
        assert!(p.is_empty());
        let reasons: Vec<&Skip> = p.skipped.iter().map(|(_, r)| r).collect();
        assert_eq!(reasons, [&Skip::NoPrimaryKey, &Skip::Gone, &Skip::InSet(1)]);
        assert_eq!(p.done.len(), 3);
    }

    #[test]
    fn leftover_temporary_sets_are_finished_first() {
        let mut c = catalog();
        c.sets.push((7, 1, temp_set_comment(1)));
        c.sets.push((8, 1, "someone else's".into()));
        c.subscriptions.push(sub(7, 1, 2));
        let mut in_leftover = cand("half", RelKind::Table);
        in_leftover.in_set = Some(7);
        let p = plan(1, 1, &c, &[in_leftover, cand("new", RelKind::Table)]).unwrap();
        assert_eq!(p.sets.len(), 2);
        assert_eq!((p.sets[0].id, p.sets[0].create), (7, false));
        assert_eq!(
            p.sets[0].subscribe,
            vec![Subscription {
                set: 7,
                active: false,
                ..sub(7, 1, 3)
            }]
        );
        assert_eq!((p.sets[1].id, p.sets[1].create), (9, true));
        assert!(p.skipped.is_empty());
        assert_eq!(
            p.merge_script(),
            "merge set (id = 1, add id = 7, origin = 1);\nmerge set (id = 1, add id = 9, origin = 1);\n"
        );
    }

    #[test]
    fn cascaded_receivers_come_after_their_provider() {
        let mut c = catalog();
        c.subscriptions = vec![sub(1, 3, 4), sub(1, 1, 2), sub(1, 2, 3)];
        let p = plan(1, 1, &c, &[cand("u", RelKind::Table)]).unwrap();
        let order: Vec<(u32, u32)> = p.sets[0]
            .subscribe
            .iter()
            .map(|s| (s.provider, s.receiver))
            .collect();
        assert_eq!(order, [(1, 2), (2, 3), (3, 4)]);
    }

    #[test]
    fn the_set_must_exist_and_start_at_the_master() {
        assert_eq!(
            plan(5, 1, &catalog(), &[]).unwrap_err(),
            JoinRefusal::NoSet(5)
        );
        assert!(matches!(
            plan(1, 2, &catalog(), &[]).unwrap_err(),
            JoinRefusal::WrongOrigin {
                origin: 1,
                master: 2,
                ..
            }
        ));
    }
}
