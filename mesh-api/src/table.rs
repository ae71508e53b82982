//! Plain-text tables, as `meshctl` and `mesh-agent status` print resources: one place, so both
//! tools look the same.
//!
//! A table is for people; `-o json` and `-o yaml` are the complete output. So a cell never
//! grows past [`MAX_CELL_WIDTH`] characters (a Service with 10,000 VIPs once made one line
//! hundreds of kilobytes wide, and width formatting past 65,535 panics), and control
//! characters in a cell (an error message from an agent, say) are shown escaped rather than
//! sent to the terminal.

use std::fmt::Display;

/// The widest a cell is printed, in characters; longer cells end in [`ELLIPSIS`].
pub const MAX_CELL_WIDTH: usize = 120;

/// Marks a cell that was cut.
pub const ELLIPSIS: char = '…';

/// Left-aligned columns separated by two spaces, header first; `(none)` when there are no rows.
/// Cells are cut at [`MAX_CELL_WIDTH`] characters, and a last line says so when any was.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut cut = 0;
    let header: Vec<String> = header.iter().map(|h| cell(h, &mut cut)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| cell(c, &mut cut)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = line(&header, &widths);
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in &rows {
        out.push_str(&line(row, &widths));
    }
    if cut > 0 {
        out.push_str(&format!(
            "({cut} cell(s) cut at {MAX_CELL_WIDTH} characters; -o json or -o yaml shows everything)\n"
        ));
    }
    out
}

/// `items` joined by commas, as many as fit in `budget` characters, then how many more there
/// are: `10.0.0.1,10.0.0.2 (+9998 more, see -o yaml)`. For list-valued cells, so a long list
/// says how long it is instead of being cut mid-item.
pub fn list<T: Display>(items: &[T], budget: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for item in items {
        let item = item.to_string();
        let separator = usize::from(shown > 0);
        if out.chars().count() + separator + item.chars().count() > budget && shown > 0 {
            break;
        }
        if shown > 0 {
            out.push(',');
        }
        out.push_str(&item);
        shown += 1;
    }
    if shown < items.len() {
        out.push_str(&format!(" (+{} more, see -o yaml)", items.len() - shown));
    }
    out
}

/// One cell as printed: control characters escaped, at most [`MAX_CELL_WIDTH`] characters.
/// Counts the cells it had to cut in `cut`.
fn cell(text: &str, cut: &mut usize) -> String {
    let mut shown = text.chars().flat_map(|c| -> Vec<char> {
        if c.is_control() {
            c.escape_default().collect()
        } else {
            vec![c]
        }
    });
    let mut out: String = shown.by_ref().take(MAX_CELL_WIDTH).collect();
    if shown.next().is_some() {
        out.pop();
        out.push(ELLIPSIS);
        *cut += 1;
    }
    out
}

/// Cells padded to `widths` (with spaces pushed one by one: width formatting panics past
/// 65,535), two spaces apart, without trailing blanks.
fn line(cells: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        out.push_str(c);
        out.extend(std::iter::repeat_n(
            ' ',
            w.saturating_sub(c.chars().count()),
        ));
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![vec!["web".to_string(), "10.96.0.1".to_string()]];
        assert_eq!(
            render(&["SERVICE", "VIP"], &rows),
            "SERVICE  VIP\nweb      10.96.0.1\n"
        );
        assert_eq!(render(&["A"], &[]), "A\n(none)\n");
    }

    /// Wider than width formatting allows (65,535): no panic, the cell is cut with an
    /// ellipsis, the next column still lines up, and a last line says where the rest is.
    #[test]
    fn a_huge_cell_is_cut_not_a_panic() {
        let huge = "x".repeat(200_000);
        let rows = vec![
            vec!["a".to_string(), huge, "end".to_string()],
            vec!["b".to_string(), "short".to_string(), "end".to_string()],
        ];
        let out = render(&["K", "V", "Z"], &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        let cut = format!("a  {}{ELLIPSIS}  end", "x".repeat(MAX_CELL_WIDTH - 1));
        assert_eq!(lines[1], cut);
        assert_eq!(
            lines[2],
            format!("b  short{}end", " ".repeat(MAX_CELL_WIDTH - 5 + 2))
        );
        assert_eq!(
            lines[3],
            format!("(1 cell(s) cut at {MAX_CELL_WIDTH} characters; -o json or -o yaml shows everything)")
        );
    }

    /// Exactly the maximum is not cut; widths count characters, not bytes.
    #[test]
    fn widths_are_characters() {
        let full = "é".repeat(MAX_CELL_WIDTH);
        let out = render(&["N", "X"], &[vec![full.clone(), "1".into()]]);
        assert_eq!(out.lines().nth(1).unwrap(), format!("{full}  1"));
        assert!(!out.contains(ELLIPSIS));
        let out = render(&["N", "X"], &[vec!["ü".into(), "1".into()]]);
        assert_eq!(out, "N  X\nü  1\n");
    }

    /// A newline or an escape sequence in a cell (an agent's error message, say) neither
    /// breaks the layout nor reaches the terminal.
    #[test]
    fn control_characters_are_escaped() {
        let rows = vec![vec!["bad\nline\u{1b}[31m".to_string()]];
        assert_eq!(render(&["E"], &rows), "E\nbad\\nline\\u{1b}[31m\n");
    }

    #[test]
    fn a_long_list_says_how_many_more() {
        let ips: Vec<String> = (0..10_000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let shown = list(&ips, 40);
        assert_eq!(
            shown,
            "10.0.0.0,10.0.0.1,10.0.0.2,10.0.0.3 (+9996 more, see -o yaml)"
        );
        assert_eq!(list(&ips[..2], 40), "10.0.0.0,10.0.0.1");
        assert_eq!(list::<String>(&[], 40), "");
        // One item is always shown, even past the budget.
        assert_eq!(
            list(&["a-very-long-item", "b"], 4),
            "a-very-long-item (+1 more, see -o yaml)"
        );
    }
}
