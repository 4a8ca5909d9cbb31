//! What `status` shows about packages: each node's live deployments (read
//! only), and how a node's differ from the master's.

use tokio_postgres::GenericClient;

use super::plan::Deployed;
use super::record::PackageBook;
use crate::db::pgerror::PgFailure;

/// A node's live deployments whose schema is there, by package name then
/// schema; none when the table does not exist. Writes nothing.
pub async fn live(
    client: &impl GenericClient,
    book: &PackageBook,
) -> Result<Vec<Deployed>, PgFailure> {
    let state = book.read_state(client).await?;
    let mut v: Vec<Deployed> = state
        .live
        .into_values()
        // A schema dropped by hand is not deployed, whatever the record says.
        .filter(|d| state.schemas.contains(&d.schema))
        .collect();
    v.sort_by(|a, b| (&a.name, &a.schema).cmp(&(&b.name, &b.schema)));
    Ok(v)
}

/// How `node`'s live deployments differ from `master`'s, one sentence each.
pub fn differences(master: &[Deployed], node: &[Deployed]) -> Vec<String> {
    let short = |c: &str| c[..c.len().min(12)].to_string();
    let mut out = Vec::new();
    for m in master {
        match node.iter().find(|n| n.schema == m.schema) {
            None => out.push(format!(
                "lacks package `{}` {} (schema `{}`)",
                m.name, m.version, m.schema
            )),
            Some(n) if n.name != m.name || n.version != m.version || n.checksum != m.checksum => {
                out.push(format!(
                    "schema `{}` holds `{}` {} (checksum {}), the master `{}` {} (checksum {})",
                    m.schema,
                    n.name,
                    n.version,
                    short(&n.checksum),
                    m.name,
                    m.version,
                    short(&m.checksum)
                ))
            }
            Some(_) => {}
        }
    }
    for n in node {
        if !master.iter().any(|m| m.schema == n.schema) {
            out.push(format!(
                "has package `{}` {} (schema `{}`), which the master does not",
                n.name, n.version, n.schema
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, version: &str, checksum: &str) -> Deployed {
        Deployed {
            name: name.into(),
            version: version.into(),
            schema: format!("{name}_{}", version.replace('.', "_")),
            checksum: checksum.into(),
        }
    }

    #[test]
    fn same_is_no_difference() {
        let m = vec![d("billing", "1.9.0", "aaa"), d("billing", "2.0.0", "bbb")];
        assert!(differences(&m, &m.clone()).is_empty());
    }

    #[test]
    fn every_kind_of_difference() {
        let m = vec![d("billing", "1.9.0", "aaa"), d("money", "1.0.0", "ccc")];
        let n = vec![d("billing", "1.9.0", "zzz"), d("geo", "1.0.0", "ggg")];
        let diff = differences(&m, &n);
        assert_eq!(diff.len(), 3, "{diff:?}");
        assert!(diff.iter().any(|s| s.contains("lacks package `money`")));
        assert!(diff
            .iter()
            .any(|s| s.contains("`billing_1_9_0`") && s.contains("zzz")));
        assert!(diff.iter().any(|s| s.contains("has package `geo`")));
    }
}
