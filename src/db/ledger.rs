//! The per-node ledger: its DDL, reading it, and the claim / record / stamp statements.
//!
//! Every node has `schema.table` (default `pgconvoy.revision`). On the master it
//! lists every patch applied to the cluster, one row per claim, committed only
//! with the claim. On a replica it lists the `direct` and `concurrent` patches
//! applied there. The master also has `schema.table_local`: the master's own
//! part of `concurrent` patches, recorded outside the claim, so that a run whose
//! claim rolled back does not repeat the body on the master, while the claim's
//! row still does not show the patch as done.

use std::collections::BTreeMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use crate::config::LedgerTable;
use crate::db::named::{Named, Prepares};
use crate::db::pgerror::{fail_when, LedgerUnreadable, PgFailure, GUARD};
use crate::db::quote::{bind, quote_ident, quote_literal};
use crate::patches::patch::{Patch, PatchVersion};

/// Which of a node's two ledger tables a statement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Book {
    /// `schema.table`: the claim rows on the master, the node's own rows on replicas.
    Main,
    /// `schema.table_local`: the master's own part of `concurrent` patches.
    Local,
}

/// The SQL names of a ledger.
#[derive(Debug, Clone)]
pub struct Ledger {
    table: LedgerTable,
}

/// One row of a ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerRow {
    pub version: String,
    pub patch_type: String,
    pub checksum: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub applied_by: String,
}

impl LedgerRow {
    pub fn is_done(&self) -> bool {
        self.end_time.is_some()
    }
}

/// One ledger row as `history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    #[serde(serialize_with = "crate::db::ledger::as_string")]
    pub version: PatchVersion,
    pub book: Book,
    pub patch_type: String,
    pub checksum: String,
    /// RFC 3339 UTC, milliseconds: the start of the last attempt.
    pub start_time: String,
    /// `None`: started and not finished.
    pub end_time: Option<String>,
    /// The first attempt's start, when a retry took the row over.
    pub first_start_time: Option<String>,
    /// Attempts on this node (1 for rows older than the count).
    pub attempts: i32,
    pub duration_ms: Option<i64>,
    /// Microseconds since the epoch of `start_time`, for ordering rows of several nodes.
    #[serde(skip)]
    pub start_us: i64,
    pub applied_by: String,
}

/// Serializes with `Display` (versions are written `M-m-p` everywhere).
pub fn as_string<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// What one node's ledger holds; empty when the ledger does not exist yet.
#[derive(Debug, Clone, Default)]
pub struct NodeLedger {
    pub exists: bool,
    /// The main book has the current columns (`attempts`, `first_start`); false for a
    /// ledger written by an older pgconvoy (migrated by the next lock holder) or none.
    pub current: bool,
    pub main: BTreeMap<PatchVersion, LedgerRow>,
    pub local: BTreeMap<PatchVersion, LedgerRow>,
}

impl Ledger {
    pub fn new(table: LedgerTable) -> Ledger {
        Ledger { table }
    }

    pub fn name(&self) -> String {
        self.table.to_string()
    }

    /// The ledger's schema and table, as configured.
    pub fn table(&self) -> &LedgerTable {
        &self.table
    }

    /// `"schema"."table"` (or `"schema"."table_local"`), quoted.
    pub fn qualified(&self, book: Book) -> String {
        let table = match book {
            Book::Main => self.table.table.clone(),
            Book::Local => format!("{}_local", self.table.table),
        };
        format!(
            "{}.{}",
            quote_ident(&self.table.schema),
            quote_ident(&table)
        )
    }

    /// Key for the coordinators' session advisory lock on the master: derived
    /// from the ledger's name so that two clusters sharing a master database
    /// with different ledgers do not exclude each other.
    pub fn advisory_key(&self) -> i64 {
        let digest = crate::patches::patch::checksum(format!("pgconvoy:{}", self.table).as_bytes());
        i64::from_str_radix(&digest[..15], 16).unwrap_or(0x5047_434f_4e56)
    }

    /// Whether a book's table exists on the node, and whether it has the current shape
    /// (the columns that count retries); reads only.
    async fn shape(
        &self,
        client: &impl GenericClient,
        book: Book,
    ) -> Result<(bool, bool), PgFailure> {
        let row = client
            .query_one(SHAPE_SQL, &[&self.qualified(book)])
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Creates the schema and tables unless they exist. Only ever called by a
    /// coordinator holding the advisory lock, so `IF NOT EXISTS` cannot race.
    pub async fn ensure(&self, client: &impl GenericClient, book: Book) -> Result<(), PgFailure> {
        let (exists, current) = self.shape(client, book).await?;
        if exists {
            if !current {
                client.batch_execute(&self.migration_sql(book)).await?;
            }
            return Ok(());
        }
        client.batch_execute(&self.ddl(book)).await?;
        Ok(())
    }

    /// [`Ledger::ensure`] for a psql script: the same check, then the table created or
    /// migrated as need be, by `\if` on the check's `\gset` variables.
    pub fn ensure_script(&self, book: Book) -> String {
        format!(
            "SELECT NOT s.present AS pgconvoy_create, s.present AND NOT s.fresh AS pgconvoy_migrate
  FROM ({shape}) AS s(present, fresh) \\gset
\\if :pgconvoy_create
{create}
\\elif :pgconvoy_migrate
{migrate}
\\endif
",
            shape = bind(SHAPE_SQL, &[quote_literal(&self.qualified(book))]),
            create = unindent(&self.ddl(book)),
            migrate = unindent(&self.migration_sql(book)),
        )
    }

    /// Brings a ledger written by pgconvoy before retries were counted up to date: the
    /// first attempt's start (unknown for old rows: NULL) and the number of attempts.
    pub fn migration_sql(&self, book: Book) -> String {
        format!(
            "ALTER TABLE {table}
                 ADD COLUMN IF NOT EXISTS first_start timestamptz,
                 ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 1;
             COMMENT ON COLUMN {table}.first_start IS {first_start};
             COMMENT ON COLUMN {table}.attempts IS {attempts};",
            table = self.qualified(book),
            first_start = FIRST_START_COMMENT,
            attempts = ATTEMPTS_COMMENT,
        )
    }

    /// The DDL that creates the ledger's schema and `book`'s table (`IF NOT EXISTS`).
    pub fn ddl(&self, book: Book) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {table} (
                 major      integer NOT NULL,
                 minor      integer NOT NULL,
                 patch      integer NOT NULL,
                 patch_type text NOT NULL CHECK (patch_type IN ('std', 'direct', 'concurrent')),
                 checksum   text NOT NULL,
                 start_time timestamptz NOT NULL,
                 end_time   timestamptz,
                 applied_by text NOT NULL,
                 first_start timestamptz,
                 attempts   integer NOT NULL DEFAULT 1,
                 PRIMARY KEY (major, minor, patch)
             );
             COMMENT ON TABLE {table} IS {comment};
             COMMENT ON COLUMN {table}.first_start IS {first_start};
             COMMENT ON COLUMN {table}.attempts IS {attempts};",
            schema = quote_ident(&self.table.schema),
            table = self.qualified(book),
            comment = match book {
                Book::Main => "'pgconvoy ledger: patches applied (master: to the cluster; replica: on this node). end_time NULL = started, not finished.'",
                Book::Local => "'pgconvoy ledger: the master''s own part of concurrent patches, recorded apart from the claim.'",
            },
            first_start = FIRST_START_COMMENT,
            attempts = ATTEMPTS_COMMENT,
        )
    }

    /// After reading the ledger failed for lack of privilege (SQLSTATE 42501): the grants
    /// this session's role lacks to read it, as `GRANT` statements. Reads only the
    /// catalogs, which need no grant.
    pub async fn missing_read_grants(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<String>, PgFailure> {
        let schema = &self.table.schema;
        let main = &self.table.table;
        let local = format!("{main}_local");
        let row = client
            .query_one(
                "SELECT current_user::text,
                        (SELECT has_schema_privilege(n.oid, 'USAGE')
                           FROM pg_namespace n WHERE n.nspname = $1),
                        (SELECT has_table_privilege(c.oid, 'SELECT')
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = $1 AND c.relname = $2),
                        (SELECT has_table_privilege(c.oid, 'SELECT')
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = $1 AND c.relname = $3)",
                &[schema, main, &local],
            )
            .await?;
        let role = quote_ident(&row.get::<_, String>(0));
        let mut grants = Vec::new();
        if row.get::<_, Option<bool>>(1) == Some(false) {
            grants.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {role}",
                quote_ident(schema)
            ));
        }
        for (book, column) in [(Book::Main, 2), (Book::Local, 3)] {
            if row.get::<_, Option<bool>>(column) == Some(false) {
                grants.push(format!(
                    "GRANT SELECT ON {} TO {role}",
                    self.qualified(book)
                ));
            }
        }
        Ok(grants)
    }

    /// Why reading the ledger failed with `e`, with the missing grants when it was a
    /// privilege (SQLSTATE 42501; read from the catalogs over `client`).
    pub async fn unreadable(&self, e: &PgFailure, client: &impl GenericClient) -> LedgerUnreadable {
        let privilege = e.is(&SqlState::INSUFFICIENT_PRIVILEGE);
        let missing_grants = if privilege {
            self.missing_read_grants(client).await.unwrap_or_default()
        } else {
            Vec::new()
        };
        LedgerUnreadable {
            kind: if privilege { "privilege" } else { "error" },
            sqlstate: e.sqlstate().map(str::to_string),
            message: e.to_string(),
            missing_grants,
        }
    }

    /// Reads a node's ledger without writing anything (safe for read-only roles).
    pub async fn read(&self, client: &impl GenericClient) -> Result<NodeLedger, PgFailure> {
        let mut out = NodeLedger::default();
        for book in [Book::Main, Book::Local] {
            let name = self.qualified(book);
            let (exists, current) = self.shape(client, book).await?;
            if !exists {
                continue;
            }
            if book == Book::Main {
                out.exists = true;
                out.current = current;
            }
            let rows = client
                .query(
                    &format!(
                        "SELECT major, minor, patch, patch_type, checksum,
                                to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                                to_char(end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                                applied_by
                           FROM {name} ORDER BY 1, 2, 3"
                    ),
                    &[],
                )
                .await?;
            let target = match book {
                Book::Main => &mut out.main,
                Book::Local => &mut out.local,
            };
            for row in rows {
                let version = version_of(row.get(0), row.get(1), row.get(2));
                target.insert(
                    version,
                    LedgerRow {
                        version: version.to_string(),
                        patch_type: row.get(3),
                        checksum: row.get(4),
                        start_time: row.get(5),
                        end_time: row.get(6),
                        applied_by: row.get(7),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Every row of both books, with times to the millisecond, for `history`. Reads
    /// ledgers of either shape (before and after retries were counted); writes nothing.
    pub async fn history(&self, client: &impl GenericClient) -> Result<Vec<HistoryRow>, PgFailure> {
        let mut out = Vec::new();
        for book in [Book::Main, Book::Local] {
            let name = self.qualified(book);
            let (exists, current) = self.shape(client, book).await?;
            if !exists {
                continue;
            }
            const MS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";
            let (first, attempts) = if current {
                (
                    format!("to_char(first_start AT TIME ZONE 'UTC', {MS})"),
                    "attempts",
                )
            } else {
                ("NULL::text".to_string(), "1")
            };
            let rows = client
                .query(
                    &format!(
                        "SELECT major, minor, patch, patch_type, checksum,
                                to_char(start_time AT TIME ZONE 'UTC', {MS}),
                                to_char(end_time AT TIME ZONE 'UTC', {MS}),
                                {first}, {attempts},
                                (extract(epoch FROM end_time - start_time) * 1000)::bigint,
                                (extract(epoch FROM start_time) * 1000000)::bigint,
                                applied_by
                           FROM {name} ORDER BY start_time, 1, 2, 3"
                    ),
                    &[],
                )
                .await?;
            for row in rows {
                let version = version_of(row.get(0), row.get(1), row.get(2));
                out.push(HistoryRow {
                    version,
                    book,
                    patch_type: row.get(3),
                    checksum: row.get(4),
                    start_time: row.get(5),
                    end_time: row.get(6),
                    first_start_time: row.get(7),
                    attempts: row.get(8),
                    duration_ms: row.get(9),
                    start_us: row.get(10),
                    applied_by: row.get(11),
                });
            }
        }
        Ok(out)
    }

    /// The claim: inserts the master's row with `end_time` NULL. A second
    /// coordinator inserting the same row blocks on it, then fails.
    /// Parameters: [`RowParams::row`].
    pub fn claim_sql(&self) -> String {
        format!(
            "INSERT INTO {} (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp(), NULL, $6 || ' as ' || session_user)",
            self.qualified(Book::Main)
        )
    }

    /// The claim of a patch that follows another in the same stream of transactions (a
    /// batch of `std` patches): it fails on the server (an invalid cast naming
    /// [`NOT_AFTER_DONE`]) unless the patch before it (`$7`, `$8`, `$9`) is finished in
    /// the master's ledger. So when that one failed or rolled back, this transaction is
    /// aborted before its body and commits nothing, and so is every later one, whatever
    /// was already sent. Parameters: [`RowParams::row`], then the previous patch's
    /// [`RowParams::key`].
    pub fn claim_after_sql(&self) -> String {
        let table = self.qualified(Book::Main);
        format!(
            "INSERT INTO {table} (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by)
             SELECT $1::integer, $2::integer, $3::integer, $4::text, $5::text, clock_timestamp(), NULL, $6::text || ' as ' || session_user
               FROM (SELECT {} AS guard
                       FROM {table}
                      WHERE major = $7 AND minor = $8 AND patch = $9 AND end_time IS NOT NULL) AS previous
              WHERE previous.guard IS NULL",
            fail_when("count(*) = 0", NOT_AFTER_DONE)
        )
    }

    /// Records that a node started the body (replicas; the master's local book):
    /// a row with `end_time` NULL. A retry takes over an earlier unfinished row, keeping
    /// the first attempt's start in `first_start` and counting `attempts`.
    /// Parameters: [`RowParams::row`].
    pub fn record_start_sql(&self, book: Book) -> String {
        format!(
            "INSERT INTO {} AS r (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp(), NULL, $6 || ' as ' || session_user)
             ON CONFLICT (major, minor, patch) DO UPDATE
                SET patch_type = EXCLUDED.patch_type, checksum = EXCLUDED.checksum,
                    start_time = EXCLUDED.start_time, end_time = NULL, applied_by = EXCLUDED.applied_by,
                    first_start = coalesce(r.first_start, r.start_time), attempts = r.attempts + 1",
            self.qualified(book)
        )
    }

    /// Records a patch as done without running it (`stamp`, `stamp --from-lazr`, a
    /// baseline): start and end are `$7`/`$8` (NULL: the transaction's time). An
    /// unfinished row is taken over as a retry would; a finished one is left alone.
    /// Parameters: [`RowParams::row`], then the start and end times.
    pub fn record_done_sql(&self, book: Book) -> String {
        format!(
            "INSERT INTO {} AS r (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by)
             VALUES ($1, $2, $3, $4, $5, coalesce($7, now()), coalesce($8, now()), $6 || ' as ' || session_user)
             ON CONFLICT (major, minor, patch) DO UPDATE
                SET patch_type = EXCLUDED.patch_type, checksum = EXCLUDED.checksum,
                    start_time = EXCLUDED.start_time, end_time = EXCLUDED.end_time,
                    applied_by = EXCLUDED.applied_by,
                    first_start = coalesce(r.first_start, r.start_time), attempts = r.attempts + 1
              WHERE r.end_time IS NULL",
            self.qualified(book)
        )
    }

    /// A baseline's rows, all at once, in the baseline's transaction after its body:
    /// `$1`–`$5` are arrays (major, minor, patch, type, checksum), `$6` `applied_by`.
    /// `start_time` is the transaction's start, `end_time` the moment the body finished.
    pub fn record_baseline_sql(&self, book: Book) -> String {
        format!(
            "INSERT INTO {} (major, minor, patch, patch_type, checksum, start_time, end_time, applied_by)
             SELECT u.major, u.minor, u.patch, u.kind, u.sum, now(), clock_timestamp(), $6 || ' as ' || session_user
               FROM unnest($1::int[], $2::int[], $3::int[], $4::text[], $5::text[]) AS u(major, minor, patch, kind, sum)",
            self.qualified(book)
        )
    }

    /// `repair`: the current checksum of a patch's file, on a row that holds another.
    /// Parameters: [`RowParams::key`], then the checksum. Returns the old checksum.
    pub fn repair_sql(&self, book: Book) -> String {
        format!(
            "UPDATE {table} AS r SET checksum = $4
               FROM {table} AS old
              WHERE (r.major, r.minor, r.patch) = ($1, $2, $3) AND r.checksum <> $4
                AND (old.major, old.minor, old.patch) = ($1, $2, $3)
             RETURNING old.checksum",
            table = self.qualified(book)
        )
    }

    /// Stamps `end_time`: the patch is done in that book. Parameters: [`RowParams::key`].
    pub fn stamp_sql(&self, book: Book) -> String {
        format!(
            "UPDATE {} SET end_time = clock_timestamp() WHERE major = $1 AND minor = $2 AND patch = $3",
            self.qualified(book)
        )
    }

    /// Stamps `end_time` in the transaction that wrote the row (the claim, or a node's
    /// row written before its body), and only then: the row's `xmin` must be this
    /// transaction's id. If the body ended pgconvoy's transaction (a `COMMIT` slipped in),
    /// the statements after it run in other transactions, this changes no row, and the
    /// caller fails the patch instead of recording it ([`TRANSACTION_LOST`]).
    /// Parameters: [`RowParams::key`].
    pub fn stamp_own_sql(&self, book: Book) -> String {
        format!(
            "UPDATE {} SET end_time = clock_timestamp()
              WHERE major = $1 AND minor = $2 AND patch = $3 AND end_time IS NULL
                AND xmin::text::bigint = txid_current_if_assigned() % 4294967296",
            self.qualified(book)
        )
    }

    /// [`Ledger::stamp_own_sql`] as a statement that fails on the server unless it
    /// stamped exactly one row: an invalid cast naming [`TRANSACTION_LOST`], which
    /// [`PgFailure`] reads back as that text ([`crate::db::pgerror::GUARD`]). So when a
    /// patch ended pgconvoy's transaction, nothing sent after the stamp in the same
    /// message runs, its COMMIT included. Parameters: [`RowParams::key`].
    pub fn stamp_own_checked_sql(&self, book: Book) -> String {
        format!(
            "WITH stamped AS ({}
             RETURNING 1)
             SELECT {} FROM stamped",
            self.stamp_own_sql(book),
            fail_when("count(*) <> 1", &format!("{GUARD}{TRANSACTION_LOST}"))
        )
    }

    /// The ledger statements a patch's transaction runs by name inside its message
    /// ([`Named`]): the claim, the claim after another patch, each book's row and stamp.
    pub fn named(&self) -> LedgerStatements {
        let book = |sql: fn(&Ledger, Book) -> String| {
            [Book::Main, Book::Local].map(|b| Named::new(sql(self, b)))
        };
        LedgerStatements {
            claim: Named::new(self.claim_sql()),
            claim_after: Named::new(self.claim_after_sql()),
            start: book(Ledger::record_start_sql),
            stamp: book(Ledger::stamp_own_checked_sql),
        }
    }

    /// Removes this coordinator's unfinished claim: after the transaction guard tripped,
    /// a claim row may have been committed by the patch itself, and would otherwise block
    /// every later run as "claimed by another coordinator".
    /// Parameters: [`RowParams::key`] and `applied_by`.
    pub fn unclaim_sql(&self) -> String {
        format!(
            "DELETE FROM {} WHERE major = $1 AND minor = $2 AND patch = $3 AND end_time IS NULL AND applied_by = $4 || ' as ' || session_user",
            self.qualified(Book::Main)
        )
    }

    pub async fn claim(
        &self,
        client: &impl GenericClient,
        patch: &Patch,
        applied_by: &str,
    ) -> Result<(), PgFailure> {
        let p = RowParams::new(patch, applied_by);
        client.execute(&self.claim_sql(), &p.row()).await?;
        Ok(())
    }

    pub async fn record_start(
        &self,
        client: &impl GenericClient,
        book: Book,
        patch: &Patch,
        applied_by: &str,
    ) -> Result<(), PgFailure> {
        let p = RowParams::new(patch, applied_by);
        client
            .execute(&self.record_start_sql(book), &p.row())
            .await?;
        Ok(())
    }

    /// [`Ledger::stamp_own_sql`]: stamps the row this transaction wrote, or fails with
    /// [`TRANSACTION_LOST`].
    pub async fn stamp_own(
        &self,
        client: &impl GenericClient,
        book: Book,
        version: PatchVersion,
    ) -> Result<(), PgFailure> {
        let (a, b, c) = key(version);
        let n = client
            .execute(&self.stamp_own_sql(book), &[&a, &b, &c])
            .await?;
        if n != 1 {
            return Err(PgFailure::other(TRANSACTION_LOST));
        }
        Ok(())
    }

    /// [`Ledger::record_done_sql`]: whether a row was written (false: it was done already).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_done(
        &self,
        client: &impl GenericClient,
        book: Book,
        patch: &Patch,
        applied_by: &str,
        start: Option<std::time::SystemTime>,
        end: Option<std::time::SystemTime>,
    ) -> Result<bool, PgFailure> {
        let p = RowParams::new(patch, applied_by);
        let row = p.row();
        let params: [&(dyn ToSql + Sync); 8] =
            [row[0], row[1], row[2], row[3], row[4], row[5], &start, &end];
        let n = client.execute(&self.record_done_sql(book), &params).await?;
        Ok(n == 1)
    }

    /// [`Ledger::repair_sql`]: the checksum the row held before, when it changed.
    pub async fn repair(
        &self,
        client: &impl GenericClient,
        book: Book,
        patch: &Patch,
    ) -> Result<Option<String>, PgFailure> {
        let (a, b, c) = key(patch.version);
        let row = client
            .query_opt(&self.repair_sql(book), &[&a, &b, &c, &patch.checksum])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn stamp(
        &self,
        client: &impl GenericClient,
        book: Book,
        version: PatchVersion,
    ) -> Result<(), PgFailure> {
        let (a, b, c) = key(version);
        let n = client.execute(&self.stamp_sql(book), &[&a, &b, &c]).await?;
        if n != 1 {
            return Err(PgFailure::other(format!(
                "ledger row for {version} vanished before it could be stamped"
            )));
        }
        Ok(())
    }
}

/// Why a claim after another patch in the same batch failed ([`Ledger::claim_after_sql`]).
pub const NOT_AFTER_DONE: &str =
    "not claimed: the patch before it in the same batch did not commit";
/// Why a stamp inside the patch's transaction changed no row.
pub const TRANSACTION_LOST: &str = "the patch ended the transaction pgconvoy ran it in (a COMMIT, ROLLBACK or similar took effect inside it), so what ran before that may be committed while the rest ran outside it; not recorded as applied";
/// Whether a book (`$1`, its quoted name) exists, and whether it has the current columns.
const SHAPE_SQL: &str = "SELECT to_regclass($1) IS NOT NULL,
        EXISTS (SELECT 1 FROM pg_attribute
                 WHERE attrelid = to_regclass($1) AND attname = 'attempts' AND NOT attisdropped)";

const FIRST_START_COMMENT: &str = "'start of the first attempt, when a retry took this row over (start_time is the last attempt''s); NULL: start_time is the first known'";
const ATTEMPTS_COMMENT: &str =
    "'attempts at this patch on this node (retries after a failure or an interrupted run count)'";

/// [`Ledger::named`]: the ledger statements of a patch's transaction, each as
/// `EXECUTE name(values)` once prepared on the session ([`Named::ready`]).
pub struct LedgerStatements {
    claim: Named,
    claim_after: Named,
    /// By book: [`Book::Main`], [`Book::Local`].
    start: [Named; 2],
    stamp: [Named; 2],
}

impl LedgerStatements {
    /// Prepares on `session` what a claim's transaction on the master runs: the claims
    /// and the stamp of the main book.
    pub async fn ready_to_claim(&self, session: &impl Prepares) -> Result<(), PgFailure> {
        self.claim.ready(session).await?;
        self.claim_after.ready(session).await?;
        self.stamp[Book::Main as usize].ready(session).await
    }

    /// Prepares on `session` what a node's own transaction in `book` runs: its row and
    /// the stamp.
    pub async fn ready_for_rows(
        &self,
        session: &impl Prepares,
        book: Book,
    ) -> Result<(), PgFailure> {
        self.start[book as usize].ready(session).await?;
        self.stamp[book as usize].ready(session).await
    }

    /// The claim ([`Ledger::claim_sql`]) of `p`'s row.
    pub fn claim(&self, p: &RowParams) -> String {
        self.claim.call(&p.row_literals())
    }

    /// The claim of `p`'s row after `previous` ([`Ledger::claim_after_sql`]).
    pub fn claim_after(&self, p: &RowParams, previous: &RowParams) -> String {
        let mut values = p.row_literals();
        values.extend(previous.key_literals());
        self.claim_after.call(&values)
    }

    /// A node's row before its body ([`Ledger::record_start_sql`]).
    pub fn start(&self, book: Book, p: &RowParams) -> String {
        self.start[book as usize].call(&p.row_literals())
    }

    /// The stamp of the row this transaction wrote ([`Ledger::stamp_own_checked_sql`]).
    pub fn stamp(&self, book: Book, p: &RowParams) -> String {
        self.stamp[book as usize].call(&p.key_literals())
    }
}

/// The parameter values of a patch's ledger row.
pub struct RowParams {
    major: i32,
    minor: i32,
    point: i32,
    kind: &'static str,
    checksum: String,
    applied_by: String,
}

impl RowParams {
    pub fn new(patch: &Patch, applied_by: &str) -> RowParams {
        let (major, minor, point) = key(patch.version);
        RowParams {
            major,
            minor,
            point,
            kind: patch.kind.as_str(),
            checksum: patch.checksum.clone(),
            applied_by: applied_by.to_string(),
        }
    }

    /// For the claim and record-start statements.
    pub fn row(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.major,
            &self.minor,
            &self.point,
            &self.kind,
            &self.checksum,
            &self.applied_by,
        ]
    }

    /// For the stamp statement.
    pub fn key(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.major, &self.minor, &self.point]
    }

    /// [`RowParams::row`] as SQL literals, for scripts ([`crate::db::quote::bind`]).
    pub fn row_literals(&self) -> Vec<String> {
        let mut out = self.key_literals();
        out.extend([
            quote_literal(self.kind),
            quote_literal(&self.checksum),
            quote_literal(&self.applied_by),
        ]);
        out
    }

    /// [`RowParams::key`] as SQL literals.
    pub fn key_literals(&self) -> Vec<String> {
        vec![
            self.major.to_string(),
            self.minor.to_string(),
            self.point.to_string(),
        ]
    }
}

/// SQL written indented in this file, flush left for a script.
fn unindent(sql: &str) -> String {
    sql.lines()
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The parameters of [`Ledger::record_baseline_sql`] for these patches.
pub struct BaselineRows {
    major: Vec<i32>,
    minor: Vec<i32>,
    point: Vec<i32>,
    kinds: Vec<String>,
    checksums: Vec<String>,
    applied_by: String,
}

impl BaselineRows {
    pub fn new<'a>(patches: impl IntoIterator<Item = &'a Patch>, applied_by: &str) -> BaselineRows {
        let mut r = BaselineRows {
            major: Vec::new(),
            minor: Vec::new(),
            point: Vec::new(),
            kinds: Vec::new(),
            checksums: Vec::new(),
            applied_by: applied_by.to_string(),
        };
        for p in patches {
            let (a, b, c) = key(p.version);
            r.major.push(a);
            r.minor.push(b);
            r.point.push(c);
            r.kinds.push(p.kind.as_str().to_string());
            r.checksums.push(p.checksum.clone());
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.major.is_empty()
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.major,
            &self.minor,
            &self.point,
            &self.kinds,
            &self.checksums,
            &self.applied_by,
        ]
    }

    /// The parameters as SQL literals, for scripts.
    pub fn literals(&self) -> Vec<String> {
        let ints = |v: &[i32]| {
            format!(
                "ARRAY[{}]::int[]",
                v.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
            )
        };
        let texts = |v: &[String]| {
            format!(
                "ARRAY[{}]::text[]",
                v.iter()
                    .map(|t| quote_literal(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        vec![
            ints(&self.major),
            ints(&self.minor),
            ints(&self.point),
            texts(&self.kinds),
            texts(&self.checksums),
            quote_literal(&self.applied_by),
        ]
    }
}

/// A version as the ledger stores it (`integer` columns).
pub fn version_of(major: i32, minor: i32, point: i32) -> PatchVersion {
    PatchVersion::new(
        u32::try_from(major).unwrap_or(0),
        u32::try_from(minor).unwrap_or(0),
        u32::try_from(point).unwrap_or(0),
    )
}

fn key(v: PatchVersion) -> (i32, i32, i32) {
    let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    (clamp(v.major), clamp(v.minor), clamp(v.point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_key() {
        let l = Ledger::new(LedgerTable::parse("pgconvoy.revision").unwrap());
        assert_eq!(l.qualified(Book::Main), "\"pgconvoy\".\"revision\"");
        assert_eq!(l.qualified(Book::Local), "\"pgconvoy\".\"revision_local\"");
        let other = Ledger::new(LedgerTable::parse("ops.ledger").unwrap());
        assert_ne!(l.advisory_key(), other.advisory_key());
        assert_eq!(l.advisory_key(), l.advisory_key());
    }
}
