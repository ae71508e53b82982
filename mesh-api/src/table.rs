//! Plain-text tables, as `meshctl` and `mesh-agent status` print resources: one place, so both
//! tools look the same.

/// Left-aligned columns separated by two spaces, header first; `(none)` when there are no rows.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let rows = vec![vec!["web".to_string(), "10.96.0.1".to_string()]];
        assert_eq!(
            super::render(&["SERVICE", "VIP"], &rows),
            "SERVICE  VIP\nweb      10.96.0.1\n"
        );
        assert_eq!(super::render(&["A"], &[]), "A\n(none)\n");
    }
}
