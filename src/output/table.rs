//! Rows rendered as an aligned plain-text table or a Markdown table.

use std::io::{self, Write};

/// Renders rows as an aligned plain-text table.
pub fn text_table(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Renders rows as a Markdown table (pipes in cells escaped).
pub fn markdown_table(
    header: &[&str],
    rows: &[Vec<String>],
    out: &mut dyn Write,
) -> io::Result<()> {
    let esc = |c: &str| c.replace('|', "\\|").replace('\n', " ");
    writeln!(out, "| {} |", header.join(" | "))?;
    writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    )?;
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| esc(c)).collect();
        writeln!(out, "| {} |", cells.join(" | "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        let mut out = Vec::new();
        text_table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a    bb\nxxx  y\n");
        let mut out = Vec::new();
        markdown_table(&["a"], &[vec!["x|y".into()]], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "| a |\n|---|\n| x\\|y |\n");
    }
}
