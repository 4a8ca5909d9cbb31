//! PostgreSQL's table-level lock modes: their strength, which pairs conflict, and a
//! plain-words note of what holding one blocks, for the dry-run report.

use std::fmt;

/// A table-level lock mode as `pg_locks.mode` names it, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
}

impl LockMode {
    pub const ALL: [LockMode; 8] = [
        LockMode::AccessShare,
        LockMode::RowShare,
        LockMode::RowExclusive,
        LockMode::ShareUpdateExclusive,
        LockMode::Share,
        LockMode::ShareRowExclusive,
        LockMode::Exclusive,
        LockMode::AccessExclusive,
    ];

    /// Parses `pg_locks.mode` (`AccessExclusiveLock`, …); `None` for row-level and other modes.
    pub fn from_pg(mode: &str) -> Option<LockMode> {
        LockMode::ALL.into_iter().find(|m| m.as_pg() == mode)
    }

    /// The name `pg_locks.mode` uses.
    pub fn as_pg(self) -> &'static str {
        match self {
            LockMode::AccessShare => "AccessShareLock",
            LockMode::RowShare => "RowShareLock",
            LockMode::RowExclusive => "RowExclusiveLock",
            LockMode::ShareUpdateExclusive => "ShareUpdateExclusiveLock",
            LockMode::Share => "ShareLock",
            LockMode::ShareRowExclusive => "ShareRowExclusiveLock",
            LockMode::Exclusive => "ExclusiveLock",
            LockMode::AccessExclusive => "AccessExclusiveLock",
        }
    }

    /// The conflict table of the PostgreSQL manual ("Conflicting Lock Modes").
    pub fn conflicts_with(self, other: LockMode) -> bool {
        let rank = |m: LockMode| m as u8;
        // Row i lists the modes that conflict with mode i, by rank.
        const TABLE: [&[u8]; 8] = [
            &[7],                   // AccessShare
            &[6, 7],                // RowShare
            &[4, 5, 6, 7],          // RowExclusive
            &[3, 4, 5, 6, 7],       // ShareUpdateExclusive
            &[2, 3, 5, 6, 7],       // Share
            &[2, 3, 4, 5, 6, 7],    // ShareRowExclusive
            &[1, 2, 3, 4, 5, 6, 7], // Exclusive
            &[0, 1, 2, 3, 4, 5, 6, 7],
        ];
        TABLE[rank(self) as usize].contains(&rank(other))
    }

    /// What holding this lock on `relation` does to everybody else, in plain words.
    pub fn blocks(self, relation: &str) -> String {
        match self {
            LockMode::AccessShare => format!(
                "reads and writes of `{relation}` go on; blocks only ALTER, DROP, TRUNCATE, VACUUM FULL and other ACCESS EXCLUSIVE lockers of `{relation}`"
            ),
            LockMode::RowShare => format!(
                "reads and writes of `{relation}` go on; blocks EXCLUSIVE and ACCESS EXCLUSIVE lockers (most ALTER TABLE, DROP, TRUNCATE, REFRESH MATERIALIZED VIEW CONCURRENTLY)"
            ),
            LockMode::RowExclusive => format!(
                "reads and writes of `{relation}` go on; blocks CREATE INDEX (without CONCURRENTLY), most ALTER TABLE, DROP, TRUNCATE and explicit SHARE locks on `{relation}`"
            ),
            LockMode::ShareUpdateExclusive => format!(
                "reads and writes of `{relation}` go on; blocks schema changes, VACUUM, ANALYZE and CREATE INDEX CONCURRENTLY on `{relation}`"
            ),
            LockMode::Share => format!(
                "blocks all writes (INSERT, UPDATE, DELETE) to `{relation}` while the patch runs; reads go on"
            ),
            LockMode::ShareRowExclusive => format!(
                "blocks all writes (INSERT, UPDATE, DELETE) to `{relation}` while the patch runs; reads go on"
            ),
            LockMode::Exclusive => format!(
                "blocks all writes to `{relation}` and SELECT … FOR UPDATE/SHARE on it while the patch runs; plain reads go on"
            ),
            LockMode::AccessExclusive => {
                format!("blocks all reads and writes of `{relation}` while the patch runs")
            }
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_pg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_by_strength() {
        for m in LockMode::ALL {
            assert_eq!(LockMode::from_pg(m.as_pg()), Some(m));
        }
        assert_eq!(
            LockMode::from_pg("ExclusiveLock"),
            Some(LockMode::Exclusive)
        );
        assert_eq!(LockMode::from_pg("SIReadLock"), None);
        assert!(LockMode::AccessExclusive > LockMode::Share);
    }

    #[test]
    fn conflict_table_is_symmetric_and_matches_the_manual() {
        use LockMode::*;
        for a in LockMode::ALL {
            for b in LockMode::ALL {
                assert_eq!(a.conflicts_with(b), b.conflicts_with(a), "{a} vs {b}");
            }
            assert!(a.conflicts_with(AccessExclusive));
        }
        assert!(!AccessShare.conflicts_with(RowExclusive));
        assert!(RowExclusive.conflicts_with(Share));
        assert!(!RowExclusive.conflicts_with(RowExclusive));
        assert!(ShareUpdateExclusive.conflicts_with(ShareUpdateExclusive));
        assert!(!Share.conflicts_with(Share));
        assert!(ShareRowExclusive.conflicts_with(ShareRowExclusive));
        assert!(!RowShare.conflicts_with(Share));
    }

    #[test]
    fn plain_words() {
        assert_eq!(
            LockMode::AccessExclusive.blocks("orders"),
            "blocks all reads and writes of `orders` while the patch runs"
        );
        assert!(LockMode::Share.blocks("t").contains("writes"));
    }
}
