//! `upgrade --sql`: the SQL a run would send to each node, as one psql script per node,
//! for a DBA to review or run by hand in a change window. Only the ledgers are read
//! (nothing is written); the plan is the run's own ([`super::plan`]), and so are the
//! statements: the claim and ledger statements of [`crate::db::ledger`] with their
//! parameters as literals, patch bodies as their files hold them, `concurrent` patches
//! statement by statement outside any transaction.
//!
//! Where one psql session cannot do what a run does with several, the script keeps the
//! end state and says so: the master's own part of a `concurrent` or master-first patch
//! commits before the claim row is written (a run holds the claim open meanwhile, in a
//! second session; the script holds the cluster lock instead, for the whole session).
//! Lock-timeout retries, `--atomic`'s two-phase commit, waiting for replication and adding
//! new tables to a publication are not scripted.

use std::fmt::Write as _;

use crate::config::{Config, NodeConfig, NodeName, Replication, Role};
use crate::db::cluster::Cluster;
use crate::db::ledger::{BaselineRows, Book, Ledger, NodeLedger, RowParams};
use crate::db::libpq::params::{ConnParams, HostName, TargetSessionAttrs};
use crate::db::pipeline::SAVEPOINT;
use crate::db::quote::{bind, quote_ident, quote_literal};
use crate::error::Error;
use crate::identity::Identity;
use crate::lifecycle::baseline;
use crate::output::timestamp::rfc3339;
use crate::patches::discover::PatchSet;
use crate::patches::patch::{Patch, PatchOrder, PatchType};
use crate::patches::sql;

use super::plan::{self, Selection};

/// One node's script.
#[derive(Debug, Clone)]
pub struct NodeScript {
    pub node: NodeName,
    /// The psql script, header included.
    pub sql: String,
    /// Whether the script changes anything on the node.
    pub has_work: bool,
}

/// The scripts of the nodes at `nodes` (indexes, master = 0), in order: what `upgrade`
/// with `selection` would send to each, given the ledgers as they are now. Refuses what
/// a run would refuse (drift, a topology that contradicts the config, `--patch-type`).
pub async fn scripts(
    config: &Config,
    patches: &PatchSet,
    selection: &Selection,
    nodes: &[usize],
) -> Result<Vec<NodeScript>, Error> {
    let cluster = Cluster::new(config);
    let ledger = Ledger::new(config.ledger.clone());
    let mut ledgers = super::refuse_or_read(config, &cluster, patches, &ledger).await?;
    // New nodes get the newest baseline first, as in a run; the rest is planned on the
    // ledger it leaves.
    let mut new = Vec::new();
    if let Some(file) = patches.newest_baseline() {
        let role = |i: usize| cluster.nodes[i].role();
        let candidates: Vec<usize> = nodes
            .iter()
            .copied()
            .filter(|&i| baseline::may_be_new(role(i), config.replication, &ledgers[i]))
            .collect();
        if !candidates.is_empty() {
            new = baseline::new_nodes(&cluster, &candidates).await?;
        }
        for &i in &new {
            ledgers[i] = baseline::ledger_after(patches, file, role(i), config.replication);
        }
    }
    let pending = plan::pending(patches, &ledgers[0]);
    let schedule = plan::schedule(plan::groups(&pending), selection).map_err(Error::Refused)?;
    let scheduled: Vec<&Patch> = schedule
        .groups
        .iter()
        .flat_map(|g| g.patches.iter().copied())
        .collect();
    let writer = Writer {
        config,
        patches,
        master: &ledgers[0],
        ledger: &ledger,
        applied_by: Identity::current().applied_by("upgrade --sql script"),
        generated: rfc3339(std::time::SystemTime::now()),
    };
    Ok(nodes
        .iter()
        .map(|&i| {
            writer.node_script(
                i,
                &cluster.nodes[i].config,
                &ledgers[i],
                &scheduled,
                nodes.len() > 1,
                patches.newest_baseline().filter(|_| new.contains(&i)),
            )
        })
        .collect())
}

struct Writer<'a> {
    config: &'a Config,
    patches: &'a PatchSet,
    /// The master's ledger: what the cluster has finished (for catch-up).
    master: &'a NodeLedger,
    ledger: &'a Ledger,
    applied_by: String,
    generated: String,
}

/// What one node does for one patch.
enum Part<'p> {
    /// The master's claim, with the body inside it (`std`; `direct` under a savepoint).
    Claim {
        patch: &'p Patch,
        body: Option<Body>,
    },
    /// The master's own part outside the claim (local book), then the claim row.
    OwnThenClaim { patch: &'p Patch, own: bool },
    /// A replica's own part (main book); `catch_up`: the cluster finished the patch before.
    Own { patch: &'p Patch, catch_up: bool },
}

#[derive(Clone, Copy)]
enum Body {
    Plain,
    UnderSavepoint,
}

impl Writer<'_> {
    fn node_script(
        &self,
        i: usize,
        node: &NodeConfig,
        l: &NodeLedger,
        scheduled: &[&Patch],
        several: bool,
        baseline: Option<&Patch>,
    ) -> NodeScript {
        let role = node.role;
        // A run catches a node up with what the cluster finished before anything new.
        let view = plan::NodeView { role, ledger: l };
        let parts: Vec<Part> =
            plan::catch_up(self.patches, self.config.replication, self.master, view)
                .into_iter()
                .map(|patch| Part::Own {
                    patch,
                    catch_up: true,
                })
                .chain(scheduled.iter().filter_map(|p| self.part(role, p, l)))
                .collect();
        let mut s = String::new();
        self.header(&mut s, node, &parts, scheduled);
        if let Some(b) = baseline {
            let _ = writeln!(
                s,
                "-- this node is new (no ledger, no user relations): it gets {} first",
                b.file_name()
            );
        }
        if several {
            let _ = writeln!(s, "\\connect {}", quote_literal(&conninfo(&node.conn)));
        }
        if parts.is_empty() && baseline.is_none() {
            s.push_str(
                if role == Role::Replica && self.config.replication == Replication::Physical {
                    "-- hot standby: it replays the master's WAL; nothing is sent to it.\n"
                } else {
                    "-- nothing to do on this node.\n"
                },
            );
            return NodeScript {
                node: node.name.clone(),
                sql: s,
                has_work: false,
            };
        }
        s.push_str("\\set ON_ERROR_STOP on\n");
        s.push_str("SET application_name = 'pgconvoy';\n");
        self.session_settings(&mut s);
        if i == 0 {
            let _ = writeln!(
                s,
                "-- the cluster lock, held for the whole session: another coordinator is refused\n\
                 DO $pgconvoy$ BEGIN\n  IF NOT pg_try_advisory_lock({key}) THEN\n    \
                 RAISE EXCEPTION 'another coordinator holds the cluster (advisory lock {key})';\n  \
                 END IF;\nEND $pgconvoy$;",
                key = self.ledger.advisory_key()
            );
        }
        s.push('\n');
        let books: &[Book] = if i == 0 {
            &[Book::Main, Book::Local]
        } else {
            &[Book::Main]
        };
        if let Some(b) = baseline {
            self.baseline(&mut s, b, node.role, books);
        }
        for book in books {
            s.push_str(&self.ledger.ensure_script(*book));
        }
        for part in &parts {
            s.push('\n');
            self.part_sql(&mut s, part, l);
        }
        if i == 0 {
            let _ = writeln!(
                s,
                "\nSELECT pg_advisory_unlock({});",
                self.ledger.advisory_key()
            );
        }
        NodeScript {
            node: node.name.clone(),
            sql: s,
            has_work: true,
        }
    }

    /// What the node does for `patch` in a run, as [`super::apply`] decides it.
    fn part<'p>(&self, role: Role, patch: &'p Patch, l: &NodeLedger) -> Option<Part<'p>> {
        let needs = plan::needs_body(patch, role, self.config.replication, l);
        match role {
            Role::Master => Some(match (patch.kind, patch.order) {
                (PatchType::Std, _) => Part::Claim {
                    patch,
                    body: Some(Body::Plain),
                },
                (PatchType::Direct, PatchOrder::ReplicasFirst) => Part::Claim {
                    patch,
                    body: Some(Body::UnderSavepoint),
                },
                (PatchType::Direct, PatchOrder::MasterFirst) | (PatchType::Concurrent, _) => {
                    Part::OwnThenClaim { patch, own: needs }
                }
            }),
            Role::Replica => needs.then_some(Part::Own {
                patch,
                catch_up: false,
            }),
        }
    }

    fn header(&self, s: &mut String, node: &NodeConfig, parts: &[Part], scheduled: &[&Patch]) {
        let role = match node.role {
            Role::Master => "master",
            Role::Replica => "replica",
        };
        let _ = writeln!(
            s,
            "-- pgconvoy {} upgrade --sql: what a run sends to node `{}` ({role})",
            env!("CARGO_PKG_VERSION"),
            node.name
        );
        let _ = writeln!(s, "-- dsn: {}   (password removed)", conninfo(&node.conn));
        let _ = writeln!(
            s,
            "-- generated {} by {}@{} from the ledgers as they were then; patches in {}",
            self.generated,
            Identity::current().os_user,
            Identity::current().host,
            self.config.patches.display()
        );
        let versions: Vec<String> = parts
            .iter()
            .map(|p| {
                let patch = match p {
                    Part::Claim { patch, .. }
                    | Part::OwnThenClaim { patch, .. }
                    | Part::Own { patch, .. } => patch,
                };
                format!("{} ({})", patch.version, patch.kind)
            })
            .collect();
        if !versions.is_empty() {
            let _ = writeln!(s, "-- patches: {}", versions.join(", "));
        } else if !scheduled.is_empty() {
            let _ = writeln!(
                s,
                "-- the run applies {} on the cluster; none of it runs on this node",
                scheduled
                    .iter()
                    .map(|p| p.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            s,
            "-- run it with: psql -X -v ON_ERROR_STOP=1 -f THIS_FILE '{}'",
            conninfo(&node.conn).replace('\'', "'\\''")
        );
        s.push_str(
            "-- one session: the master's own part of a concurrent or master-first patch commits before its\n\
             -- claim row is written (a run holds the claim open meanwhile in a second session). Not scripted:\n\
             -- lock-timeout retries, --atomic's two-phase commit, waiting for replication, publishing new tables.\n",
        );
        if self.config.replication == Replication::Logical {
            s.push_str(
                "-- logical replication: run the replicas' scripts before the master's for additive patches,\n\
                 -- the master's first for master-first ones, as a run does.\n",
            );
        }
    }

    fn part_sql(&self, s: &mut String, part: &Part, l: &NodeLedger) {
        match part {
            Part::Claim { patch, body } => {
                self.title(s, patch, "the claim, the body inside it, the stamp");
                let p = RowParams::new(patch, &self.applied_by);
                s.push_str("BEGIN;\n");
                self.own_stmt(s, &bind(&self.ledger.claim_sql(), &p.row_literals()));
                match body {
                    Some(Body::Plain) => self.body(s, patch),
                    Some(Body::UnderSavepoint) => {
                        let _ = writeln!(s, "SAVEPOINT {SAVEPOINT};");
                        self.body(s, patch);
                        let _ = writeln!(s, "RELEASE SAVEPOINT {SAVEPOINT};");
                    }
                    None => {}
                }
                self.stmt(
                    s,
                    &bind(&self.ledger.stamp_own_sql(Book::Main), &p.key_literals()),
                );
                s.push_str("COMMIT;\n");
            }
            Part::OwnThenClaim { patch, own } => {
                if *own {
                    self.title(
                        s,
                        patch,
                        "the master's own part (its local book), then the claim",
                    );
                    self.own(s, patch, Book::Local, l);
                } else {
                    self.title(
                        s,
                        patch,
                        "the master's own part is done already (its local book); the claim",
                    );
                }
                let p = RowParams::new(patch, &self.applied_by);
                s.push_str("BEGIN;\n");
                self.own_stmt(s, &bind(&self.ledger.claim_sql(), &p.row_literals()));
                self.stmt(
                    s,
                    &bind(&self.ledger.stamp_own_sql(Book::Main), &p.key_literals()),
                );
                s.push_str("COMMIT;\n");
            }
            Part::Own { patch, catch_up } => {
                let what = if *catch_up {
                    "catch-up (the cluster finished it before this node had it): this node's own part, in its ledger"
                } else {
                    "this node's own part, in its ledger"
                };
                self.title(s, patch, what);
                self.own(s, patch, Book::Main, l);
            }
        }
    }

    fn session_settings(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "SET lock_timeout = '{}ms';",
            self.config.lock_timeout.as_millis().max(1)
        );
        if let Some(t) = self.config.statement_timeout {
            let _ = writeln!(s, "SET statement_timeout = '{}ms';", t.as_millis().max(1));
        }
    }

    /// A new node's baseline as a run gives it ([`super::baseline`]): one transaction with
    /// the ledger created, the body, the rows of the patches it stands for; then the
    /// session's settings back (a baseline from `pg_dump` changes them; a run closes
    /// that session).
    fn baseline(&self, s: &mut String, file: &Patch, role: Role, books: &[Book]) {
        let _ = writeln!(
            s,
            "-- baseline {} (the schema as of {}): the ledger, the body, the rows of the patches it stands for, in one transaction",
            file.file_name(),
            file.version
        );
        s.push_str("BEGIN;\n");
        for book in books {
            self.own_stmt(s, &self.ledger.ddl(*book));
        }
        self.body(s, file);
        let rows = baseline::rows(self.patches, file, role, self.config.replication);
        let applied_by = Identity::current().applied_by(&format!(
            "baseline {} (upgrade --sql script)",
            file.file_name()
        ));
        for book in books {
            let r = BaselineRows::new(
                rows.iter().filter(|(b, _)| b == book).map(|(_, p)| *p),
                &applied_by,
            );
            if !r.is_empty() {
                self.own_stmt(
                    s,
                    &bind(&self.ledger.record_baseline_sql(*book), &r.literals()),
                );
            }
        }
        s.push_str("COMMIT;\nRESET ALL;\nSET application_name = 'pgconvoy';\n");
        self.session_settings(s);
        s.push('\n');
    }

    fn title(&self, s: &mut String, patch: &Patch, what: &str) {
        let _ = writeln!(
            s,
            "-- patch {} ({}, {}): {what}",
            patch.version,
            patch.kind,
            patch.file_name()
        );
    }

    /// A node's own part outside any claim: a `direct` patch in a transaction of its own,
    /// a `concurrent` one statement by statement between its ledger row and the stamp.
    fn own(&self, s: &mut String, patch: &Patch, book: Book, l: &NodeLedger) {
        let p = RowParams::new(patch, &self.applied_by);
        let start = bind(&self.ledger.record_start_sql(book), &p.row_literals());
        if patch.kind == PatchType::Concurrent {
            let stamp = bind(&self.ledger.stamp_sql(book), &p.key_literals());
            let earlier = match book {
                Book::Main => l.main.get(&patch.version),
                Book::Local => l.local.get(&patch.version),
            };
            let resuming = earlier.is_some_and(|r| !r.is_done());
            self.own_stmt(s, &start);
            for (text, _) in patch.statement_texts() {
                match sql::create_index_concurrently_name(text) {
                    Some(name) => self.index_build(s, text, &name, resuming),
                    None => self.stmt(s, text),
                }
            }
            self.own_stmt(s, &stamp);
        } else {
            // The stamp changes the row only in the transaction that wrote it.
            let stamp = bind(&self.ledger.stamp_own_sql(book), &p.key_literals());
            s.push_str("BEGIN;\n");
            self.own_stmt(s, &start);
            self.body(s, patch);
            self.own_stmt(s, &stamp);
            s.push_str("COMMIT;\n");
        }
    }

    /// `CREATE INDEX CONCURRENTLY` as a run makes it safe to retry: an invalid index of
    /// that name (a failed build) is dropped first; resuming, a valid one counts as built.
    fn index_build(&self, s: &mut String, text: &str, name: &str, resuming: bool) {
        let qualified: String = name
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        let reg = quote_literal(&qualified);
        if resuming {
            let _ = writeln!(
                s,
                "SELECT coalesce((SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass({reg})), false) AS pgconvoy_built \\gset\n\
                 \\if :pgconvoy_built\n\
                 \\echo 'index {name} already exists and is valid (an earlier attempt built it); statement treated as done'\n\
                 \\else"
            );
        }
        let _ = writeln!(
            s,
            "SELECT coalesce((SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass({reg})), false) AS pgconvoy_invalid \\gset\n\
             \\if :pgconvoy_invalid\n\
             DROP INDEX CONCURRENTLY IF EXISTS {qualified};\n\
             \\endif"
        );
        self.stmt(s, text);
        if resuming {
            s.push_str("\\endif\n");
        }
    }

    /// A patch body as its file holds it (psql sends it statement by statement, as a run
    /// does; `COPY … FROM stdin` data is read from the script).
    fn body(&self, s: &mut String, patch: &Patch) {
        s.push_str(&patch.body);
        if !patch.body.ends_with('\n') {
            s.push('\n');
        }
    }

    /// One of pgconvoy's own statements, its lines flush left after the first (they are
    /// written indented in the source).
    fn own_stmt(&self, s: &mut String, sql: &str) {
        let lines: Vec<&str> = sql.lines().map(str::trim).collect();
        self.stmt(s, &lines.join("\n    "));
    }

    fn stmt(&self, s: &mut String, sql: &str) {
        s.push_str(sql.trim_end());
        if !sql.trim_end().ends_with(';') {
            s.push(';');
        }
        s.push('\n');
    }
}

/// A node's connection as a libpq key/value string without its password: hosts, ports,
/// user, database and the TLS mode, as resolved (DSN, service file, environment).
pub fn conninfo(c: &ConnParams) -> String {
    let value = |v: &str| {
        if !v.is_empty()
            && v.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-/:,".contains(ch))
        {
            v.to_string()
        } else {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
    };
    let hosts: Vec<String> = c
        .hosts
        .iter()
        .map(|h| match &h.name {
            HostName::Tcp(name) => name.clone(),
            HostName::Socket(dir) => dir.display().to_string(),
            HostName::AddressOnly => String::new(),
        })
        .collect();
    let mut parts = Vec::new();
    if hosts.iter().any(|h| !h.is_empty()) {
        parts.push(format!("host={}", value(&hosts.join(","))));
    }
    if c.hosts.iter().any(|h| h.hostaddr.is_some()) {
        let addrs: Vec<String> = c
            .hosts
            .iter()
            .map(|h| h.hostaddr.map(|a| a.to_string()).unwrap_or_default())
            .collect();
        parts.push(format!("hostaddr={}", value(&addrs.join(","))));
    }
    let ports: Vec<String> = c.hosts.iter().map(|h| h.port.to_string()).collect();
    parts.push(format!("port={}", value(&ports.join(","))));
    parts.push(format!("user={}", value(&c.user)));
    parts.push(format!("dbname={}", value(&c.dbname)));
    parts.push(format!("sslmode={}", c.ssl.mode.as_str()));
    if c.target_session_attrs != TargetSessionAttrs::Any {
        parts.push(format!(
            "target_session_attrs={}",
            c.target_session_attrs.as_str()
        ));
    }
    parts.join(" ")
}
