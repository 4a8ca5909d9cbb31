//! Nodes whose database predates the ledger: user tables but no pgconvoy ledger, and the
//! first pending patch creates one of them. A run would fail there (`42P07 … already
//! exists`); the dry run says so and suggests `stamp`, with the version up to which the
//! patches' relations are all in place.

use futures::stream::{self, StreamExt};

use super::findings::{finding, Finding, FindingKind, Level};
use crate::config::Replication;
use crate::db::cluster::Cluster;
use crate::db::probe::NodeProbe;
use crate::lifecycle::schema;
use crate::patches::created::created_relations;
use crate::patches::patch::Patch;
use crate::upgrade::plan;

/// The suggestion for one node, read off what its database holds.
pub(super) async fn stamp_suggestions(
    cluster: &Cluster,
    probes: &[NodeProbe],
    pending: &[&Patch],
    replication: Replication,
) -> Vec<Finding> {
    let looks = stream::iter(cluster.nodes.iter().zip(probes))
        .map(|(node, probe)| async move {
            if !probe.reachable() || probe.ledger.exists || probe.in_recovery == Some(true) {
                return None;
            }
            let needed: Vec<(&Patch, Vec<String>)> = pending
                .iter()
                .filter(|p| plan::needs_body(p, node.role(), replication, &probe.ledger))
                .map(|p| (*p, created_relations(p)))
                .collect();
            let first = needed.first()?;
            if first.1.is_empty() {
                return None;
            }
            let names: Vec<String> = needed.iter().flat_map(|(_, n)| n.clone()).collect();
            let session = node.session().await.ok()?;
            let look = schema::look(session.client(), &names).await.ok()?;
            let exists = |n: &String| look.existing.contains(n);
            let clash: Vec<&String> = first.1.iter().filter(|n| exists(n)).collect();
            if look.user_relations == 0 || clash.is_empty() {
                return None;
            }
            // The patches whose relations are all there already, from the first on.
            let upto = needed
                .iter()
                .take_while(|(_, created)| !created.is_empty() && created.iter().all(exists))
                .last()
                .map(|(p, _)| p.version);
            let stamp = match upto {
                Some(v) => format!("`pgconvoy stamp {v}`"),
                None => "`pgconvoy stamp VERSION` (the last patch whose schema is in place)".into(),
            };
            Some(finding(
                Level::Warning,
                FindingKind::ExistingSchema,
                Some(node.name().as_str()),
                Some(&first.0.version.to_string()),
                format!(
                    "node `{}` has {} user relation(s) but no pgconvoy ledger, and patch `{}` creates `{}`, which exists there: if the schema is already in place, record it with {stamp}, then upgrade",
                    node.name(),
                    look.user_relations,
                    first.0.version,
                    clash[0]
                ),
            ))
        })
        .buffered(cluster.jobs)
        .collect::<Vec<_>>()
        .await;
    looks.into_iter().flatten().collect()
}
