//! slonik scripts as text (pure): the preamble, `EXECUTE SCRIPT` of a `std` patch whose SQL
//! records itself in every node's ledger, and the SQL names that recording uses.
//!
//! The SQL a `std` patch runs through EXECUTE SCRIPT is the patch body between two
//! `DO` blocks of pgconvoy's. slonik runs it in one transaction on the origin, and every
//! subscriber replays it, statement by statement, in the transaction that applies the SYNC
//! carrying it. Each block asks `getLocalNodeId` where it runs:
//!
//! * on the origin, the first block inserts the patch's row into the master's local book
//!   (a plain INSERT: a second script of the same patch, from a coordinator that started
//!   while an earlier one's slonik was still committing, waits for that row and then fails
//!   before its body runs) and notes which relations exist; the last block records the
//!   tables and sequences the body created (they must join the replication set) and stamps
//!   the row;
//! * on a subscriber, the blocks insert and stamp the patch's row in its own ledger.
//!
//! So the body and its record commit together on every node, and the claim on the master
//! only confirms what the script did.

use crate::config::SlonyClusterName;
use crate::db::ledger::{Book, Ledger};
use crate::db::quote::quote_ident;
use crate::patches::patch::{Patch, PatchVersion};

/// A slonik string literal: single quotes, a quote doubled; slonik keeps backslashes as
/// they are (unlike libpq).
pub fn slonik_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// An SQL string literal that means the same whatever `standard_conforming_strings` says.
pub fn sql_literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// One node as slonik addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlonikNode {
    pub id: u32,
    /// The node's DSN without its password (passwords go through a passfile).
    pub conninfo: String,
}

/// `cluster name = …;` and `node N admin conninfo = …;` for every node.
pub fn preamble(cluster: &SlonyClusterName, nodes: &[SlonikNode]) -> String {
    let mut s = format!("cluster name = {cluster};\n");
    for n in nodes {
        s.push_str(&format!(
            "node {} admin conninfo = {};\n",
            n.id,
            slonik_string(&n.conninfo)
        ));
    }
    s
}

/// `execute script` of `sql` with `origin` as the event node.
pub fn execute_script(origin: u32, sql: &str) -> String {
    format!(
        "execute script (event node = {origin}, sql = {});\n",
        slonik_string(sql)
    )
}

/// What a DBA running the script by hand adds after `execute script`: the script rides the
/// next SYNC, so create one and wait until every node confirmed it. (A run does the same over
/// its own session, polling each node, instead of slonik's one-second polls.)
pub fn sync_and_wait(origin: u32, timeout_secs: u64) -> String {
    format!(
        "sync (id = {origin});\nwait for event (origin = {origin}, confirmed = all, wait on = {origin}, timeout = {timeout_secs});\n"
    )
}

/// The tables of pgconvoy's own in the ledger's schema that a Slony run uses besides the two
/// books: `TABLE_joining` lists, on the origin, relations `std` patches created that have
/// not joined the replication set yet.
pub fn joining_table(ledger: &Ledger) -> String {
    let t = ledger.table();
    format!(
        "{}.{}",
        quote_ident(&t.schema),
        quote_ident(&format!("{}_joining", t.table))
    )
}

/// Creates the joining table unless it exists (on the origin, before the first script).
pub fn joining_table_ddl(ledger: &Ledger) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
             major      integer NOT NULL,
             minor      integer NOT NULL,
             patch      integer NOT NULL,
             schema_name text NOT NULL,
             relation   text NOT NULL,
             relkind    \"char\" NOT NULL,
             PRIMARY KEY (schema_name, relation)
         );
         COMMENT ON TABLE {} IS 'pgconvoy on slony: tables and sequences std patches created on the origin that have not joined the replication set yet'",
        joining_table(ledger),
        joining_table(ledger),
    )
}

/// The temp table the first block fills with the relations that exist before the body.
const BEFORE: &str = "pg_temp.pgconvoy_relations_before";

/// What the script needs to record a patch.
pub struct ScriptContext<'a> {
    pub cluster: &'a SlonyClusterName,
    /// The origin's Slony node id (the master's).
    pub origin: u32,
    pub ledger: &'a Ledger,
    pub applied_by: &'a str,
    /// The name the origin's slonik session takes for the body (pgconvoy's own).
    pub application_name: &'a str,
}

/// The SQL EXECUTE SCRIPT runs for a `std` patch: pgconvoy's first block, the body as
/// written, pgconvoy's last block.
pub fn patch_sql(cx: &ScriptContext<'_>, patch: &Patch) -> String {
    let v = patch.version;
    let key = format!("{}, {}, {}", v.major, v.minor, v.point);
    let row = format!(
        "{key}, 'std', {}, now(), NULL, {}",
        sql_literal(&patch.checksum),
        sql_literal(cx.applied_by)
    );
    let columns = "major, minor, patch, patch_type, checksum, start_time, end_time, applied_by";
    let schema = quote_ident(&cx.cluster.schema());
    let is_origin = format!(
        "{schema}.getLocalNodeId({}) = {}",
        sql_literal(&cx.cluster.schema()),
        cx.origin
    );
    let local = cx.ledger.qualified(Book::Local);
    let main = cx.ledger.qualified(Book::Main);
    let ledger_schema = cx.ledger.table().schema.clone();

    // slonik names its sessions itself (`SET application_name TO 'slonik'` after connecting,
    // over PGAPPNAME): the origin's session takes pgconvoy's name back for the body, so that
    // DBAs (and an orphaned slonik's watchers) see whose it is. Subscribers replay this block
    // in slon's session, which keeps its own name.
    let first = format!(
        "IF {is_origin} THEN
    PERFORM pg_catalog.set_config('application_name', {app}, false);
    INSERT INTO {local} ({columns}) VALUES ({row});
    CREATE TEMP TABLE {BEFORE} AS SELECT oid FROM pg_catalog.pg_class;
  ELSE
    INSERT INTO {main} AS r ({columns}) VALUES ({row})
      ON CONFLICT (major, minor, patch) DO UPDATE
         SET patch_type = EXCLUDED.patch_type, checksum = EXCLUDED.checksum,
             start_time = EXCLUDED.start_time, end_time = NULL, applied_by = EXCLUDED.applied_by;
  END IF;",
        app = sql_literal(cx.application_name),
    );
    let last = format!(
        "IF {is_origin} THEN
    INSERT INTO {joining} (major, minor, patch, schema_name, relation, relkind)
    SELECT {key}, n.nspname, c.relname, c.relkind
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'S') AND c.relpersistence = 'p' AND NOT c.relispartition
       AND n.nspname NOT IN ({}, {})
       AND c.oid NOT IN (SELECT oid FROM {BEFORE})
    ON CONFLICT (schema_name, relation) DO NOTHING;
    DROP TABLE {BEFORE};
    UPDATE {local} SET end_time = clock_timestamp() WHERE (major, minor, patch) = ({key});
  ELSE
    UPDATE {main} SET end_time = clock_timestamp() WHERE (major, minor, patch) = ({key});
  END IF;",
        sql_literal(&ledger_schema),
        sql_literal(&cx.cluster.schema()),
        joining = joining_table(cx.ledger),
    );

    let body = patch.body.trim_end();
    let tag = dollar_tag(&[&first, &last]);
    format!(
        "-- pgconvoy: patch {v} ({file}) through slonik EXECUTE SCRIPT; each node records it in its own ledger with the body\n\
         DO {tag}\nBEGIN\n  {first}\nEND\n{tag};\n\
         {body}\n\
         -- pgconvoy: end of patch {v}\n\
         DO {tag}\nBEGIN\n  {last}\nEND\n{tag};\n",
        file = patch.file_name(),
    )
}

/// A dollar-quote tag that occurs in none of `texts`.
fn dollar_tag(texts: &[&str]) -> String {
    let mut n = 0;
    loop {
        let tag = if n == 0 {
            "$pgconvoy$".to_string()
        } else {
            format!("$pgconvoy{n}$")
        };
        if !texts.iter().any(|t| t.contains(&tag)) {
            return tag;
        }
        n += 1;
    }
}

/// Which statement of a patch a failing statement slonik reports (`PGRES_FATAL_ERROR [stmt]`)
/// is: the index into `patch.statements`, or `None` when it is one of pgconvoy's own.
pub fn body_statement(patch: &Patch, failed: &str) -> Option<usize> {
    let failed = failed.trim();
    // slonik splits at the same semicolons, but may keep comments and blank lines with the
    // statement that follows them: the longest body statement contained in it is the one.
    patch
        .statement_texts()
        .enumerate()
        .filter(|(_, (text, _))| {
            let t = text.trim();
            !t.is_empty() && failed.contains(t.trim_end_matches(';').trim())
        })
        .max_by_key(|(_, (text, _))| text.trim().len())
        .map(|(i, _)| i)
}

/// The key columns of a version, for SQL text.
pub fn version_key(v: PatchVersion) -> String {
    format!("{}, {}, {}", v.major, v.minor, v.point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LedgerTable;
    use crate::patches::patch::{PatchOrder, PatchType, StatementSpan};

    fn patch(body: &str) -> Patch {
        let statements = crate::patches::sql::split(body)
            .unwrap()
            .iter()
            .map(|s| StatementSpan {
                offset: s.offset,
                len: s.text.len(),
                line: s.line,
            })
            .collect();
        Patch {
            version: PatchVersion::new(1, 2, 0),
            kind: PatchType::Std,
            path: "patches/patch-1-2-0-std.sql".into(),
            body: std::sync::Arc::new(body.to_string()),
            checksum: "ab12".into(),
            statements,
            copies: Vec::new(),
            order: PatchOrder::ReplicasFirst,
        }
    }

    fn cx<'a>(cluster: &'a SlonyClusterName, ledger: &'a Ledger) -> ScriptContext<'a> {
        ScriptContext {
            cluster,
            origin: 1,
            ledger,
            applied_by: "pgconvoy 0.1.0 on host pid 7",
            application_name: "pgconvoy",
        }
    }

    #[test]
    fn literals() {
        assert_eq!(slonik_string("it's"), "'it''s'");
        assert_eq!(slonik_string(r"a\b"), r"'a\b'");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\b'"), r"E'a\\b'''");
    }

    #[test]
    fn preamble_names_every_node_without_passwords() {
        let c = SlonyClusterName::parse("convoy").unwrap();
        let p = preamble(
            &c,
            &[
                SlonikNode {
                    id: 1,
                    conninfo: "host=db0 dbname=app user=migrator".into(),
                },
                SlonikNode {
                    id: 2,
                    conninfo: "host=db1 dbname='my app'".into(),
                },
            ],
        );
        assert_eq!(
            p,
            "cluster name = convoy;\n\
             node 1 admin conninfo = 'host=db0 dbname=app user=migrator';\n\
             node 2 admin conninfo = 'host=db1 dbname=''my app''';\n"
        );
    }

    #[test]
    fn patch_sql_records_itself_on_every_node() {
        let c = SlonyClusterName::parse("convoy").unwrap();
        let l = Ledger::new(LedgerTable::parse("pgconvoy.revision").unwrap());
        let p = patch("CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t VALUES (1);\n");
        let sql = patch_sql(&cx(&c, &l), &p);
        // The body, as written, between pgconvoy's blocks.
        let body_at = sql.find("CREATE TABLE t").unwrap();
        let first = sql
            .find("INSERT INTO \"pgconvoy\".\"revision_local\"")
            .unwrap();
        let last = sql.find("UPDATE \"pgconvoy\".\"revision_local\"").unwrap();
        assert!(first < body_at && body_at < last, "{sql}");
        assert!(sql.contains("\"_convoy\".getLocalNodeId('_convoy') = 1"));
        // On the origin a plain insert (the guard); elsewhere an upsert.
        let origin_insert = &sql[first..sql[first..].find(';').unwrap() + first];
        assert!(!origin_insert.contains("ON CONFLICT"), "{origin_insert}");
        assert!(sql.contains("INSERT INTO \"pgconvoy\".\"revision\" AS r"));
        // The origin's slonik session runs the body under pgconvoy's name.
        let named = sql
            .find("set_config('application_name', 'pgconvoy', false)")
            .expect("the origin takes pgconvoy's name");
        assert!(named < first, "{sql}");
        assert!(sql.contains("1, 2, 0, 'std', 'ab12', now(), NULL, 'pgconvoy 0.1.0 on host pid 7'"));
        assert!(sql.contains("\"pgconvoy\".\"revision_joining\""));
        assert!(sql.contains("NOT IN ('pgconvoy', '_convoy')"));
        // Every statement slonik sees ends with a semicolon, so it splits where we do.
        assert_eq!(crate::patches::sql::split(&sql).unwrap().len(), 4);
    }

    #[test]
    fn dollar_tag_avoids_the_text() {
        assert_eq!(dollar_tag(&["x"]), "$pgconvoy$");
        assert_eq!(dollar_tag(&["a $pgconvoy$ b"]), "$pgconvoy1$");
    }

    #[test]
    fn failing_statement_maps_to_the_body() {
        let p = patch("CREATE TABLE t (id int);\n-- the second\nINSERT INTO nope VALUES (1);\n");
        assert_eq!(
            body_statement(&p, "\n-- the second\nINSERT INTO nope VALUES (1);"),
            Some(1)
        );
        assert_eq!(body_statement(&p, "CREATE TABLE t (id int);"), Some(0));
        assert_eq!(
            body_statement(&p, "DO $pgconvoy$ BEGIN END $pgconvoy$;"),
            None
        );
    }

    #[test]
    fn execute_script_quotes_the_sql() {
        assert_eq!(
            execute_script(1, "SELECT 'a';"),
            "execute script (event node = 1, sql = 'SELECT ''a'';');\n"
        );
        assert!(sync_and_wait(3, 60).contains("wait for event (origin = 3, confirmed = all"));
    }
}
