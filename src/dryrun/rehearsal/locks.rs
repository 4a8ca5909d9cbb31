//! What a rehearsed patch locked and rewrote: the relation locks its backend holds
//! (new ones, and those an earlier patch took that this one used too), resolved against
//! the committed catalog, described in plain words, strongest first.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{HeldLock, LockTaken, Rehearsal, Relation, Usage, FIRST_NORMAL_OID};
use crate::db::pgerror::PgFailure;
use crate::patches::lockmode::LockMode;

impl Rehearsal<'_> {
    /// The locks the patch just took (beyond those already held) and the tables it rewrote.
    pub(super) async fn locks_taken(
        &mut self,
        before: &HashMap<i64, Usage>,
    ) -> Result<(Vec<LockTaken>, Vec<String>), PgFailure> {
        let held = self.held_now().await?;
        self.resolve(held.iter().map(|h| h.oid)).await?;

        // Strongest new mode per relation.
        let mut new: BTreeMap<i64, LockMode> = BTreeMap::new();
        for h in &held {
            if !self.held.contains(&(h.oid, h.mode)) {
                let m = new.entry(h.oid).or_insert(h.mode);
                *m = (*m).max(h.mode);
            }
        }
        let reused = self.reused(before, &new).await?;
        for h in &held {
            self.held.insert((h.oid, h.mode));
        }
        let all = new
            .into_iter()
            .map(|(o, m)| (o, m, false))
            .chain(reused.into_iter().map(|(o, m)| (o, m, true)));
        let locks = self.describe(&held, all);
        let rewrites = self.rewrites(&held);
        Ok((locks, rewrites))
    }

    /// The relation locks the rehearsing backend holds now.
    async fn held_now(&self) -> Result<Vec<HeldLock>, PgFailure> {
        let rows = self
            .work
            .client()
            .query(&held_locks_sql(), &[&FIRST_NORMAL_OID])
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let mode = LockMode::from_pg(&r.get::<_, String>(1))?;
                let inside = r.get::<_, Option<String>>(2).map(|name| Relation {
                    name,
                    kind: r.get(3),
                    system: r.get(4),
                    relfilenode: r.get(5),
                });
                Some(HeldLock {
                    oid: r.get(0),
                    mode,
                    inside,
                })
            })
            .collect())
    }

    /// Relations an earlier patch already locked that this one used too (one transaction
    /// holds them all), with the mode inferred from what the patch did to them.
    async fn reused(
        &self,
        before: &HashMap<i64, Usage>,
        new: &BTreeMap<i64, LockMode>,
    ) -> Result<BTreeMap<i64, LockMode>, PgFailure> {
        let mut reused: BTreeMap<i64, LockMode> = BTreeMap::new();
        if before.is_empty() {
            return Ok(reused);
        }
        let oids: Vec<i64> = before.keys().copied().collect();
        let after = self.usage(&oids).await?;
        for (oid, was) in before {
            if new.contains_key(oid) {
                continue;
            }
            let strongest = self
                .held
                .iter()
                .filter(|(o, _)| o == oid)
                .map(|(_, m)| *m)
                .max();
            let mode = match after.get(oid) {
                None => strongest,
                Some(now) if now.catalog != was.catalog => strongest,
                Some(now) if now.writes != was.writes => Some(LockMode::RowExclusive),
                Some(now) if now.scans != was.scans => Some(LockMode::AccessShare),
                Some(_) => None,
            };
            if let Some(m) = mode {
                reused.insert(*oid, m);
            }
        }
        Ok(reused)
    }

    /// Each lock in words, strongest first: relations the rehearsal created block nobody,
    /// system relations are left out.
    fn describe(
        &self,
        held: &[HeldLock],
        locks: impl Iterator<Item = (i64, LockMode, bool)>,
    ) -> Vec<LockTaken> {
        let mut out: Vec<(LockMode, LockTaken)> = Vec::new();
        for (oid, mode, inferred) in locks {
            let inside = held
                .iter()
                .find(|h| h.oid == oid)
                .and_then(|h| h.inside.clone());
            let before = self.committed.get(&oid).cloned().flatten();
            let (rel, created) = match (before, inside) {
                (Some(b), _) => (b, false),
                (None, Some(i)) => (i, true),
                // Created and dropped within the rehearsal: nobody ever saw it.
                (None, None) => continue,
            };
            if rel.system {
                continue;
            }
            let blocks = if created {
                format!(
                    "`{}` is created by the rehearsal itself: nobody else can see it before commit, so this blocks nobody",
                    rel.name
                )
            } else {
                mode.blocks(&rel.name)
            };
            out.push((
                mode,
                LockTaken {
                    relation: rel.name.clone(),
                    kind: rel.kind.clone(),
                    mode: mode.as_pg().to_string(),
                    created,
                    inferred,
                    blocks,
                },
            ));
        }
        // Strongest first: that is what the DBA plans the window around.
        out.sort_by(|(ma, a), (mb, b)| mb.cmp(ma).then_with(|| a.relation.cmp(&b.relation)));
        out.into_iter().map(|(_, l)| l).collect()
    }

    /// Existing tables whose storage changed since the rehearsal last looked (a rewrite).
    fn rewrites(&mut self, held: &[HeldLock]) -> Vec<String> {
        let mut rewrites = Vec::new();
        for h in held {
            let (Some(inside), Some(Some(before))) = (&h.inside, self.committed.get(&h.oid)) else {
                continue;
            };
            if inside.relfilenode == 0 || before.system {
                continue;
            }
            let last = *self.storage.entry(h.oid).or_insert(before.relfilenode);
            if last != inside.relfilenode {
                self.storage.insert(h.oid, inside.relfilenode);
                if matches!(before.kind.as_str(), "table" | "materialized view")
                    && !rewrites.contains(&before.name)
                {
                    rewrites.push(before.name.clone());
                }
            }
        }
        rewrites
    }

    /// For tables among `oids` (inside the rehearsal): their catalog rows' versions and this
    /// transaction's reads and writes of them, to tell whether a patch used them.
    pub(super) async fn usage(&self, oids: &[i64]) -> Result<HashMap<i64, Usage>, PgFailure> {
        if oids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self.work.client().query(USAGE, &[&oids]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Usage {
                        catalog: r.get(1),
                        writes: r.get(2),
                        scans: r.get(3),
                    },
                )
            })
            .collect())
    }

    /// Looks up, in the committed catalog (the watch session), relations not seen before.
    async fn resolve(&mut self, oids: impl Iterator<Item = i64>) -> Result<(), PgFailure> {
        let unknown: Vec<i64> = oids
            .filter(|o| !self.committed.contains_key(o))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let rows = self
            .watch
            .query(&committed_relations_sql(), &[&unknown])
            .await?;
        for oid in &unknown {
            self.committed.insert(*oid, None);
        }
        for r in rows {
            self.committed.insert(
                r.get(0),
                Some(Relation {
                    name: r.get(1),
                    kind: r.get(2),
                    system: r.get(3),
                    relfilenode: r.get(4),
                }),
            );
        }
        Ok(())
    }
}

/// `relkind` in words.
const RELKIND: &str = "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' \
     WHEN 'i' THEN 'index' WHEN 'I' THEN 'partitioned index' WHEN 'S' THEN 'sequence' \
     WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' \
     WHEN 't' THEN 'toast table' WHEN 'c' THEN 'composite type' ELSE c.relkind::text END";

/// Catalog, toast and temporary schemas: locks there are noise.
const SYSTEM_SCHEMA: &str = "(n.nspname IN ('pg_catalog', 'information_schema') \
     OR n.nspname LIKE 'pg\\_toast%' OR n.nspname LIKE 'pg\\_temp%')";

/// Relation locks the rehearsing backend holds, seen from inside its transaction.
fn held_locks_sql() -> String {
    format!(
        "SELECT l.relation::int8, l.mode,
                CASE WHEN c.oid IS NOT NULL THEN c.oid::regclass::text END,
                {RELKIND}, coalesce({SYSTEM_SCHEMA}, false), coalesce(c.relfilenode::int8, 0)
           FROM pg_locks l
           LEFT JOIN pg_class c ON c.oid = l.relation
           LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.relation::int8 >= $1"
    )
}

/// Relations as the committed catalog knows them.
fn committed_relations_sql() -> String {
    format!(
        "SELECT c.oid::int8, c.oid::regclass::text, {RELKIND}, {SYSTEM_SCHEMA}, c.relfilenode::int8
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = ANY($1::int8[]::oid[])"
    )
}

/// Catalog row versions and this transaction's activity for the tables among `$1`.
const USAGE: &str = "
    SELECT c.oid::int8,
           concat_ws('|', c.xmin::text || c.ctid::text,
             (SELECT string_agg(a.xmin::text || a.ctid::text, ',' ORDER BY a.attnum)
                FROM pg_attribute a WHERE a.attrelid = c.oid),
             (SELECT string_agg(k.xmin::text || k.ctid::text, ',' ORDER BY k.oid)
                FROM pg_constraint k WHERE k.conrelid = c.oid),
             (SELECT string_agg(i.xmin::text || i.ctid::text, ',' ORDER BY i.indexrelid)
                FROM pg_index i WHERE i.indrelid = c.oid),
             (SELECT string_agg(t.xmin::text || t.ctid::text, ',' ORDER BY t.oid)
                FROM pg_trigger t WHERE t.tgrelid = c.oid)),
           coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)::int8,
           (coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0))::int8
      FROM pg_class c LEFT JOIN pg_stat_xact_all_tables s ON s.relid = c.oid
     WHERE c.oid = ANY($1::int8[]::oid[]) AND c.relkind IN ('r', 'p', 'm')";
