//! The SQL that deploys one package on one node, in order: make room (rename
//! aside or drop), create the schema for the owner, let the package's roles
//! use its dependencies, create the objects as the owner with the package's
//! `search_path`, pin that path on every routine, and grant to the user roles.
//!
//! # Why routines get `SET search_path`
//!
//! Objects are written without a schema name. Types and views bind what they
//! name when they are created, so the `search_path` of the deploy transaction
//! (the package's schema, then its dependencies' schemas, then `pg_catalog`)
//! is enough for them. A routine body is different: PL/pgSQL and
//! string-bodied SQL functions look names up each time they run, in the
//! *caller's* `search_path`. An old client calling `billing_1_9_0.total()`
//! with `search_path = public` would find no `line_sum()` at all, and one with
//! the new schema first would silently run 2.0.0's helper from 1.9.0's code.
//! So every routine that does not set `search_path` itself gets the package's
//! path pinned (`ALTER FUNCTION … SET search_path`), and each version answers
//! with its own code whoever calls it. `pg_temp` goes last so that no session
//! can shadow a package object with a temporary one. The cost: PostgreSQL does
//! not inline a SQL function that has a `SET` clause.

use super::discover::Package;
use super::plan::{Action, Step};
use crate::db::quote::quote_ident;

/// One unit of work of a package's deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work<'a> {
    /// SQL pgconvoy writes itself (schemas, roles, grants).
    Sql(String),
    /// A statement of one of the package's object files.
    Object {
        file: &'a str,
        line: usize,
        text: &'a str,
    },
    /// `ALTER FUNCTION|PROCEDURE … SET search_path = path` for every routine
    /// of `schema` that does not set its own (found in the catalog, since the
    /// signatures are the server's to spell).
    PinSearchPath { schema: String, path: String },
    /// After `--mode moderate` renamed `from` aside to `to`: the routines kept
    /// there still name `from` in their pinned `search_path`, which now holds
    /// the new deployment; point them at `to`, so the aside copy keeps
    /// answering with its own code.
    RepointSearchPath { from: String, to: String },
}

/// The `search_path` of a package: its schema, its direct dependencies'
/// schemas (in `depends` order), then `pg_catalog` and `pg_temp`.
pub fn search_path(schema: &str, dependency_schemas: &[String]) -> String {
    let mut parts = vec![quote_ident(schema)];
    parts.extend(dependency_schemas.iter().map(|s| quote_ident(s)));
    parts.push("pg_catalog".into());
    parts.push("pg_temp".into());
    parts.join(", ")
}

/// The work that deploys `package` as `step` says (nothing when up to date or
/// refused). `dependencies` are the packages it depends on, as they will be
/// on the node once earlier packages of the run are deployed.
pub fn deploy<'a>(package: &'a Package, step: &Step, dependencies: &[&Package]) -> Vec<Work<'a>> {
    let schema = quote_ident(&step.schema);
    let mut work = Vec::new();
    match &step.action {
        Action::UpToDate | Action::Refuse { .. } => return work,
        Action::Deploy { .. } => {}
        Action::RenameAside { to, .. } => {
            work.push(Work::Sql(format!(
                "ALTER SCHEMA {schema} RENAME TO {}",
                quote_ident(to)
            )));
            work.push(Work::RepointSearchPath {
                from: step.schema.clone(),
                to: to.clone(),
            });
        }
        Action::Drop { .. } => work.push(Work::Sql(format!("DROP SCHEMA {schema} CASCADE"))),
    }
    let m = &package.manifest;
    let owner = quote_ident(m.owner_role.as_str());
    work.push(Work::Sql(format!(
        "CREATE SCHEMA {schema} AUTHORIZATION {owner}"
    )));

    // The owner creates the objects, so it must see its dependencies; the user
    // roles call routines whose bodies use them, so they must too.
    let grantees = grantee_list(
        std::iter::once(m.owner_role.as_str()).chain(m.user_roles.iter().map(|r| r.as_str())),
    );
    let dep_schemas: Vec<String> = dependencies.iter().map(|d| d.schema()).collect();
    for dep in &dep_schemas {
        work.extend(use_grants(dep, &grantees));
    }

    let path = search_path(&step.schema, &dep_schemas);
    work.push(Work::Sql(format!("SET LOCAL search_path = {path}")));
    work.push(Work::Sql(format!("SET LOCAL ROLE {owner}")));
    if package.routine_cycle.is_some() {
        // As pg_dump does: routines that call each other cannot all be checked at creation.
        work.push(Work::Sql("SET LOCAL check_function_bodies = off".into()));
    }
    for object in &package.objects {
        for (text, span) in object.statement_texts() {
            work.push(Work::Object {
                file: &object.rel_path,
                line: span.line,
                text,
            });
        }
    }
    if package.routine_cycle.is_some() {
        work.push(Work::Sql("RESET check_function_bodies".into()));
    }
    work.push(Work::PinSearchPath {
        schema: step.schema.clone(),
        path,
    });
    // New routines are executable by PUBLIC by default; only the listed roles may.
    work.push(Work::Sql(format!(
        "REVOKE ALL ON ALL ROUTINES IN SCHEMA {schema} FROM PUBLIC"
    )));
    if !m.user_roles.is_empty() {
        let users = grantee_list(m.user_roles.iter().map(|r| r.as_str()));
        work.extend(use_grants(&step.schema, &users));
    }
    work.push(Work::Sql("RESET ROLE".into()));
    work
}

/// USAGE on the schema, EXECUTE on its routines, SELECT on its views.
fn use_grants<'a>(schema: &str, grantees: &str) -> Vec<Work<'a>> {
    let schema = quote_ident(schema);
    vec![
        Work::Sql(format!("GRANT USAGE ON SCHEMA {schema} TO {grantees}")),
        Work::Sql(format!(
            "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {schema} TO {grantees}"
        )),
        Work::Sql(format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {grantees}"
        )),
    ]
}

fn grantee_list<'r>(roles: impl Iterator<Item = &'r str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for r in roles {
        if !seen.contains(&r) {
            seen.push(r);
        }
    }
    seen.iter()
        .map(|r| quote_ident(r))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalog query behind [`Work::PinSearchPath`]: the routines of schema
/// `$1` without a `search_path` of their own, as `kind, signature`. Only
/// plain functions and procedures the current role (the package's owner)
/// owns: aggregates take no `SET`, and the constructors PostgreSQL makes for a
/// range type are its own (owned by the bootstrap superuser, written in C).
pub const ROUTINES_WITHOUT_SEARCH_PATH: &str = "
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure::text
  FROM pg_proc p
 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
   AND p.prokind IN ('f', 'p')
   AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
   AND p.prolang NOT IN (SELECT oid FROM pg_language WHERE lanname IN ('internal', 'c'))
   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%')
 ORDER BY p.oid";

/// The catalog query behind [`Work::RepointSearchPath`]: the routines of
/// schema `$1` that set a `search_path`, as `kind, signature, path`.
pub const ROUTINE_SEARCH_PATHS: &str = "
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure::text,
       substr(c, length('search_path=') + 1)
  FROM pg_proc p, unnest(p.proconfig) c
 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
   AND c LIKE 'search\\_path=%'
 ORDER BY p.oid";

/// `path` (a `search_path` as the catalog keeps it) with schema `from`
/// replaced by `to`; `None` when it does not name `from`.
pub fn repoint(path: &str, from: &str, to: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = path
        .split(',')
        .map(|part| {
            let p = part.trim();
            let unquoted = p
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .map(|q| q.replace("\"\"", "\""))
                .unwrap_or_else(|| p.to_string());
            if unquoted == from {
                changed = true;
                quote_ident(to)
            } else {
                p.to_string()
            }
        })
        .collect();
    changed.then(|| parts.join(", "))
}

/// The statement that pins `path` on one routine found by [`ROUTINES_WITHOUT_SEARCH_PATH`].
pub fn pin_search_path(kind: &str, signature: &str, path: &str) -> String {
    format!("ALTER {kind} {signature} SET search_path = {path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::package::Manifest;
    use crate::packages::object::{self, ObjectKind};
    use crate::packages::plan::Occupant;

    fn package(yaml: &str, objects: &[(ObjectKind, &str)]) -> Package {
        let manifest = Manifest::from_yaml(std::path::Path::new("package.yaml"), yaml).unwrap();
        Package {
            dir: "packages/x".into(),
            manifest,
            objects: objects
                .iter()
                .map(|(k, body)| object::parse(*k, "f.sql", body.to_string()).unwrap())
                .collect(),
            routine_cycle: None,
            checksum: "c".into(),
        }
    }

    fn sql(work: &[Work<'_>]) -> Vec<String> {
        work.iter()
            .map(|w| match w {
                Work::Sql(s) => s.clone(),
                Work::Object { text, .. } => format!("object: {text}"),
                Work::PinSearchPath { schema, path } => format!("pin {schema}: {path}"),
                Work::RepointSearchPath { from, to } => format!("repoint {from} -> {to}"),
            })
            .collect()
    }

    fn step(action: Action) -> Step {
        Step {
            package: "billing".into(),
            version: "1.9.0".into(),
            schema: "billing_1_9_0".into(),
            action,
        }
    }

    #[test]
    fn full_deploy_in_order() {
        let money = package(
            "name: money\nversion: 1.0.0\nowner_role: money_owner\n",
            &[(ObjectKind::Type, "CREATE DOMAIN m AS numeric;")],
        );
        let billing = package(
            "name: billing\nversion: 1.9.0\nowner_role: billing_owner\nuser_roles: [app, billing_owner]\ndepends: [money]\n",
            &[(ObjectKind::Type, "CREATE TYPE t AS (x m);")],
        );
        let w = deploy(&billing, &step(Action::Deploy { stale: false }), &[&money]);
        let path = "\"billing_1_9_0\", \"money_1_0_0\", pg_catalog, pg_temp";
        assert_eq!(
            sql(&w),
            vec![
                "CREATE SCHEMA \"billing_1_9_0\" AUTHORIZATION \"billing_owner\"".to_string(),
                "GRANT USAGE ON SCHEMA \"money_1_0_0\" TO \"billing_owner\", \"app\"".into(),
                "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA \"money_1_0_0\" TO \"billing_owner\", \"app\"".into(),
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"money_1_0_0\" TO \"billing_owner\", \"app\"".into(),
                format!("SET LOCAL search_path = {path}"),
                "SET LOCAL ROLE \"billing_owner\"".into(),
                "object: CREATE TYPE t AS (x m);".into(),
                format!("pin billing_1_9_0: {path}"),
                "REVOKE ALL ON ALL ROUTINES IN SCHEMA \"billing_1_9_0\" FROM PUBLIC".into(),
                "GRANT USAGE ON SCHEMA \"billing_1_9_0\" TO \"app\", \"billing_owner\"".into(),
                "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA \"billing_1_9_0\" TO \"app\", \"billing_owner\"".into(),
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"billing_1_9_0\" TO \"app\", \"billing_owner\"".into(),
                "RESET ROLE".into(),
            ]
        );
    }

    #[test]
    fn make_room_first() {
        let p = package(
            "name: billing\nversion: 1.9.0\nowner_role: o\n",
            &[(ObjectKind::View, "CREATE VIEW v AS SELECT 1;")],
        );
        let occupant = Occupant::Unrecorded;
        let w = sql(&deploy(
            &p,
            &step(Action::RenameAside {
                occupant: occupant.clone(),
                to: "billing_1_9_0_1".into(),
            }),
            &[],
        ));
        assert_eq!(
            w[0],
            "ALTER SCHEMA \"billing_1_9_0\" RENAME TO \"billing_1_9_0_1\""
        );
        assert_eq!(w[1], "repoint billing_1_9_0 -> billing_1_9_0_1");
        assert!(w[2].starts_with("CREATE SCHEMA"));
        let w = sql(&deploy(&p, &step(Action::Drop { occupant }), &[]));
        assert_eq!(w[0], "DROP SCHEMA \"billing_1_9_0\" CASCADE");
        assert!(
            !w.iter().any(|s| s.starts_with("GRANT")),
            "no user roles, no grants: {w:?}"
        );
        assert!(deploy(&p, &step(Action::UpToDate), &[]).is_empty());
    }

    #[test]
    fn routine_cycle_turns_body_checks_off_around_the_objects() {
        let mut p = package(
            "name: billing\nversion: 1.9.0\nowner_role: o\n",
            &[(
                ObjectKind::Function,
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            )],
        );
        p.routine_cycle = Some(vec!["f".into(), "g".into(), "f".into()]);
        let w = sql(&deploy(&p, &step(Action::Deploy { stale: false }), &[]));
        let off = w
            .iter()
            .position(|s| s.contains("check_function_bodies = off"))
            .unwrap();
        let on = w
            .iter()
            .position(|s| s == "RESET check_function_bodies")
            .unwrap();
        let obj = w.iter().position(|s| s.starts_with("object:")).unwrap();
        assert!(off < obj && obj < on, "{w:?}");
    }

    #[test]
    fn repoint_paths() {
        assert_eq!(
            repoint(
                "billing_1_9_0, money_1_0_0, pg_catalog, pg_temp",
                "billing_1_9_0",
                "billing_1_9_0_1"
            )
            .as_deref(),
            Some("\"billing_1_9_0_1\", money_1_0_0, pg_catalog, pg_temp")
        );
        assert_eq!(
            repoint("\"Odd\", pg_catalog", "Odd", "Odd_1").as_deref(),
            Some("\"Odd_1\", pg_catalog")
        );
        assert_eq!(repoint("other, pg_catalog", "billing_1_9_0", "x"), None);
        assert_eq!(
            repoint("billing_1_9_0_2", "billing_1_9_0", "x"),
            None,
            "whole names only"
        );
    }

    #[test]
    fn pin_statement() {
        assert_eq!(
            pin_search_path("FUNCTION", "total(invoice)", "\"b\", pg_catalog, pg_temp"),
            "ALTER FUNCTION total(invoice) SET search_path = \"b\", pg_catalog, pg_temp"
        );
    }
}
