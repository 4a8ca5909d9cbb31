//! What a rehearsed patch locked and rewrote: the relation locks its backend holds (new
//! ones, and those an earlier patch took that this one used too), told apart from the
//! relations that existed before the rehearsal (read once from the committed catalog),
//! described in plain words, strongest first; and the catalog queries behind them.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{bare_name, HeldLock, LockTaken, Rehearsal, Relation, Usage, FIRST_NORMAL_OID};
use crate::db::pgerror::PgFailure;
use crate::patches::lockmode::LockMode;

impl Rehearsal<'_> {
    /// The locks the patch just took (beyond those already held) on relations that existed
    /// before the run or that it created itself, and the tables it rewrote. `rows`: every
    /// relation lock the rehearsal holds now; `before`/`after`: the tables it already held
    /// that the patch names, around the patch.
    pub(super) fn locks_taken(
        &mut self,
        rows: &[tokio_postgres::Row],
        before: &HashMap<i64, Usage>,
        after: &HashMap<i64, Usage>,
        words: &HashSet<String>,
    ) -> (Vec<LockTaken>, Vec<String>) {
        let held: Vec<HeldLock> = rows
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
            .collect();

        // Strongest new mode per relation.
        let mut new: BTreeMap<i64, LockMode> = BTreeMap::new();
        for h in &held {
            if !self.held.contains(&(h.oid, h.mode)) {
                let m = new.entry(h.oid).or_insert(h.mode);
                *m = (*m).max(h.mode);
            }
        }
        // Relations an earlier patch already locked that this one used too.
        let mut reused: BTreeMap<i64, LockMode> = BTreeMap::new();
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
        for h in &held {
            self.held.insert((h.oid, h.mode));
        }
        let mut locks: Vec<(LockMode, LockTaken)> = Vec::new();
        let all = new
            .into_iter()
            .map(|(o, m)| (o, m, false))
            .chain(reused.into_iter().map(|(o, m)| (o, m, true)));
        for (oid, mode, inferred) in all {
            let inside = held
                .iter()
                .find(|h| h.oid == oid)
                .and_then(|h| h.inside.clone());
            let before = self.existing.relations.get(&oid).cloned();
            let (rel, created) = match (before, inside) {
                (Some(b), _) => (b, false),
                (None, Some(i)) => (i, true),
                // Created and dropped within the rehearsal: nobody ever saw it.
                (None, None) => continue,
            };
            // Relations created by earlier patches that took no probe show up late: only
            // the patch that names them reports them.
            if rel.system || (created && !words.contains(&bare_name(&rel.name))) {
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
            locks.push((
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
        locks.sort_by(|(ma, a), (mb, b)| mb.cmp(ma).then_with(|| a.relation.cmp(&b.relation)));
        let locks = locks.into_iter().map(|(_, l)| l).collect();
        let mut rewrites = Vec::new();
        let storage_now = held
            .iter()
            .filter_map(|h| h.inside.as_ref().map(|i| (h.oid, i.relfilenode)))
            .chain(after.iter().map(|(oid, u)| (*oid, u.relfilenode)));
        for (oid, relfilenode) in storage_now {
            let Some(before) = self.existing.relations.get(&oid) else {
                continue;
            };
            if relfilenode == 0 || before.system {
                continue;
            }
            let last = *self.storage.entry(oid).or_insert(before.relfilenode);
            if last != relfilenode {
                self.storage.insert(oid, relfilenode);
                if matches!(before.kind.as_str(), "table" | "materialized view")
                    && !rewrites.contains(&before.name)
                {
                    rewrites.push(before.name.clone());
                }
            }
        }
        (locks, rewrites)
    }
}

/// The user relations and routines that existed before the rehearsal, read once from the
/// committed catalog.
pub(super) struct Existing {
    /// By oid.
    pub(super) relations: HashMap<i64, Relation>,
    /// Oids of those relations by bare name (lower case) and the bare names of user
    /// routines: a patch that names none of them cannot lock anything that existed before
    /// the run, except through triggers and routines it calls by other names, which are
    /// rare in migrations.
    pub(super) by_name: HashMap<String, Vec<i64>>,
    pub(super) routines: HashSet<String>,
}

impl Existing {
    pub(super) async fn read(client: &tokio_postgres::Client) -> Result<Existing, PgFailure> {
        let rows = client
            .query(&existing_relations_sql(), &[&FIRST_NORMAL_OID])
            .await?;
        let mut relations = HashMap::with_capacity(rows.len());
        let mut by_name: HashMap<String, Vec<i64>> = HashMap::with_capacity(rows.len());
        for r in rows {
            let bare: String = r.get(5);
            by_name
                .entry(bare.to_lowercase())
                .or_default()
                .push(r.get(0));
            relations.insert(
                r.get(0),
                Relation {
                    name: r.get(1),
                    kind: r.get(2),
                    system: r.get(3),
                    relfilenode: r.get(4),
                },
            );
        }
        let routines = client
            .query(EXISTING_ROUTINES, &[])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0).to_lowercase())
            .collect();
        Ok(Existing {
            relations,
            by_name,
            routines,
        })
    }
}

pub(super) fn usage_row(r: &tokio_postgres::Row) -> (i64, Usage) {
    (
        r.get(0),
        Usage {
            catalog: r.get(1),
            writes: r.get(2),
            scans: r.get(3),
            relfilenode: r.get(4),
        },
    )
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
pub(super) fn held_locks_sql() -> String {
    format!(
        "SELECT l.relation::int8, l.mode,
                CASE WHEN c.oid IS NOT NULL THEN c.oid::regclass::text END,
                {RELKIND}, coalesce({SYSTEM_SCHEMA}, false), coalesce(c.relfilenode::int8, 0)
           FROM (SELECT relation, mode FROM pg_locks
                  WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND relation::int8 >= $1) l
           LEFT JOIN pg_class c ON c.oid = l.relation
           LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    )
}

/// User relations as the committed catalog knows them: oid, name, kind, system-ness,
/// storage, bare name.
fn existing_relations_sql() -> String {
    format!(
        "SELECT c.oid::int8, c.oid::regclass::text, {RELKIND}, {SYSTEM_SCHEMA}, c.relfilenode::int8, c.relname::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid::int8 >= $1"
    )
}

/// Names of user routines (extensions' included).
const EXISTING_ROUTINES: &str = "
    SELECT DISTINCT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Catalog row versions and this transaction's activity for the tables among `$1`. The
/// activity comes from the statistics functions themselves: `pg_stat_xact_all_tables`
/// would compute them for every relation of the database first.
pub(super) const USAGE: &str = "
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
           (pg_stat_get_xact_tuples_inserted(c.oid) + pg_stat_get_xact_tuples_updated(c.oid)
              + pg_stat_get_xact_tuples_deleted(c.oid))::int8,
           (pg_stat_get_xact_numscans(c.oid)
              + coalesce((SELECT sum(pg_stat_get_xact_numscans(i.indexrelid))
                            FROM pg_index i WHERE i.indrelid = c.oid), 0))::int8,
           c.relfilenode::int8
      FROM pg_class c
     WHERE c.oid = ANY($1::int8[]::oid[]) AND c.relkind IN ('r', 'p', 'm')";
