//! A realistic generated patch history for tests and benches: `n` patches of mixed DDL
//! and data — tables with keys, indexes, comments and seed rows, added columns with
//! backfills, functions and triggers, views, check and foreign-key constraints, enum types,
//! log tables with identities and grants — each patch building on earlier ones, about
//! four statements each (the migration histories of real projects look like this).

use std::path::Path;

/// The body of patch `k` of the corpus (patches `0..k` come before it).
pub fn body(k: usize) -> String {
    // Every fifth patch creates a table; the others change one created earlier.
    let tables: Vec<usize> = (0..=k).filter(|j| j % 5 == 0).collect();
    let mut s: Vec<String> = vec![format!("-- patch {k}")];
    if k % 5 == 0 {
        let t = format!("item_{k}");
        s.push(format!(
            "CREATE TABLE {t} (\n    id bigserial PRIMARY KEY,\n    name text NOT NULL,\n    status text NOT NULL DEFAULT 'new',\n    amount numeric(12,2),\n    created_at timestamptz NOT NULL DEFAULT now()\n);"
        ));
        s.push(format!("CREATE INDEX {t}_name_idx ON {t} (name);"));
        s.push(format!("COMMENT ON TABLE {t} IS 'items of batch {k}';"));
        s.push(format!(
            "INSERT INTO {t} (name, amount) SELECT 'n' || g, g * 1.5 FROM generate_series(1, 200) g;"
        ));
        if tables.len() > 1 {
            let p = tables[tables.len() - 2];
            s.push(format!(
                "ALTER TABLE {t} ADD COLUMN parent_id bigint REFERENCES item_{p} (id);"
            ));
        }
    }
    let t = format!("item_{}", tables[(k * 7) % tables.len()]);
    match k % 6 {
        0 => {
            s.push(format!(
                "ALTER TABLE {t} ADD COLUMN c_{k} integer NOT NULL DEFAULT 0;"
            ));
            s.push(format!("UPDATE {t} SET c_{k} = id % 10;"));
            s.push(format!("CREATE INDEX {t}_c_{k}_idx ON {t} (c_{k});"));
        }
        1 => {
            s.push(format!(
                "CREATE OR REPLACE FUNCTION touch_{k}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n    NEW.created_at := now();\n    RETURN NEW;\nEND;\n$$;"
            ));
            s.push(format!(
                "CREATE TRIGGER {t}_touch_{k} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION touch_{k}();"
            ));
        }
        2 => {
            s.push(format!(
                "CREATE VIEW v_{k} AS SELECT id, name, amount FROM {t} WHERE status = 'new';"
            ));
            s.push(format!("COMMENT ON VIEW v_{k} IS 'open items';"));
        }
        3 => {
            s.push(format!("ALTER TABLE {t} ADD COLUMN note_{k} text;"));
            s.push(format!(
                "ALTER TABLE {t} ADD CONSTRAINT {t}_amount_{k} CHECK (amount >= 0);"
            ));
            s.push(format!(
                "INSERT INTO {t} (name, amount) VALUES ('seed {k}', {k});"
            ));
        }
        4 => {
            s.push(format!("CREATE TYPE kind_{k} AS ENUM ('a', 'b', 'c');"));
            s.push(format!(
                "ALTER TABLE {t} ADD COLUMN kind_{k} kind_{k} NOT NULL DEFAULT 'a';"
            ));
            s.push(format!(
                "CREATE INDEX {t}_kind_{k}_idx ON {t} (kind_{k}) WHERE kind_{k} <> 'a';"
            ));
        }
        _ => {
            s.push(format!(
                "CREATE TABLE log_{k} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item_id bigint NOT NULL REFERENCES {t} (id) ON DELETE CASCADE, at timestamptz NOT NULL DEFAULT now(), payload jsonb);"
            ));
            s.push(format!(
                "CREATE INDEX log_{k}_item_idx ON log_{k} (item_id);"
            ));
            s.push(format!("GRANT SELECT ON log_{k} TO PUBLIC;"));
        }
    }
    s.join("\n\n") + "\n"
}

/// Writes patches `from..to` of the corpus into `dir` as `patch-1-K-0-KIND.sql`.
pub fn write(dir: &Path, from: usize, to: usize, kind: &str) {
    std::fs::create_dir_all(dir).expect("create the patch directory");
    for k in from..to {
        let path = dir.join(format!("patch-1-{k}-0-{kind}.sql"));
        std::fs::write(&path, body(k)).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}
