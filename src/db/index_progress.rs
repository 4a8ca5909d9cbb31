//! How far an index build has got, from `pg_stat_progress_create_index` (PostgreSQL ≥ 12),
//! read on another session than the one building.

use tokio_postgres::Client;

use crate::db::pgerror::PgFailure;

/// One look at a backend's index build.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexBuildProgress {
    /// `building index: scanning table`, `waiting for old snapshots`, …
    pub phase: String,
    /// Of the phase, when it counts something: blocks, else tuples, else lockers waited for.
    pub percent: Option<f64>,
}

const READ: &str = "
    SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total,
           lockers_done, lockers_total
      FROM pg_stat_progress_create_index WHERE pid = $1";

/// The build backend `pid` runs, if it runs one now.
pub async fn read(client: &Client, pid: i32) -> Result<Option<IndexBuildProgress>, PgFailure> {
    let Some(row) = client.query_opt(READ, &[&pid]).await? else {
        return Ok(None);
    };
    let counts: [(i64, i64); 3] = [
        (row.get(1), row.get(2)),
        (row.get(3), row.get(4)),
        (row.get(5), row.get(6)),
    ];
    Ok(Some(IndexBuildProgress {
        phase: row.get(0),
        percent: percent(counts),
    }))
}

/// The first of (done, total) pairs that counts anything, as a percentage.
fn percent(counts: [(i64, i64); 3]) -> Option<f64> {
    counts
        .iter()
        .find(|(_, total)| *total > 0)
        .map(|(done, total)| (*done as f64 * 100.0 / *total as f64).clamp(0.0, 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_come_from_what_the_phase_counts() {
        assert_eq!(percent([(25, 100), (0, 0), (0, 0)]), Some(25.0));
        assert_eq!(percent([(0, 0), (3, 4), (0, 0)]), Some(75.0));
        assert_eq!(percent([(0, 0), (0, 0), (1, 2)]), Some(50.0));
        assert_eq!(percent([(0, 0), (0, 0), (0, 0)]), None);
    }
}
