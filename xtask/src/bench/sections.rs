//! The sections results.md has after the same-node table (cross-node, HTTP, load balancing; the control
//! plane's comes last) and how a run of one scenario (`bench cross-node`, `bench http`, …)
//! replaces its own section, rows and raw samples in results.md / results.json and keeps the
//! rest.

use serde_json::Value;

pub struct Section {
    /// The markdown heading the section starts with (also its note in results.json).
    pub heading: &'static str,
    /// Every row of the section in results.json starts with this.
    pub row_prefix: &'static str,
    /// Its raw samples in results.json: `raw.<raw_key>`.
    pub raw_key: &'static str,
}

pub const CROSS_NODE: Section = Section {
    heading: "## Cross-node: two agents, one control plane",
    row_prefix: "cross-node",
    raw_key: "cross_node",
};

pub const HTTP: Section = Section {
    heading: "## HTTP: the L7 path against direct and nginx",
    row_prefix: "HTTP",
    raw_key: "http",
};

pub const BALANCE: Section = Section {
    heading: "## Load balancing: policies and failure recovery",
    row_prefix: "balance",
    raw_key: "balance",
};

/// In results.md order.
pub const ALL: [&Section; 3] = [&CROSS_NODE, &HTTP, &BALANCE];

/// What ends the sections: the control plane's, from its own run.
const LAST: &str = "## Control plane";

/// Whether a results.json row belongs to one of the sections (a same-node run keeps them).
pub fn is_section_row(what: &str) -> bool {
    ALL.iter().any(|s| what.starts_with(s.row_prefix))
}

/// Whether a results.json note is a section of its own (a same-node run keeps them).
pub fn is_section_note(note: &str) -> bool {
    note.trim_start().starts_with("## ")
}

impl Section {
    /// Headings that come after this one in results.md.
    fn later(&self) -> Vec<&'static str> {
        let at = ALL
            .iter()
            .position(|s| s.heading == self.heading)
            .unwrap_or(ALL.len());
        ALL[at + 1..]
            .iter()
            .map(|s| s.heading)
            .chain([LAST])
            .collect()
    }

    /// results.md with `text` (starting with "\n## …") in place of this section, or before
    /// the first section that comes after it, or at the end.
    pub fn splice_markdown(&self, old: &str, text: &str) -> String {
        let heading = format!("\n{}", self.heading);
        if let Some(start) = old.find(&heading) {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i);
            return format!("{}{}\n{}", &old[..start], text.trim_end(), &old[end..]);
        }
        let next = self
            .later()
            .iter()
            .filter_map(|h| old.find(&format!("\n{h}")))
            .min();
        match next {
            Some(at) => format!("{}{}\n{}", &old[..at], text.trim_end(), &old[at..]),
            None => format!("{}\n{}\n", old.trim_end(), text.trim_end()),
        }
    }

    /// results.json with this section's rows, note and raw samples replaced.
    pub fn splice_json(&self, old: &mut Value, rows: Vec<Value>, text: &str, raw: Value) {
        if let Some(list) = old["rows"].as_array_mut() {
            list.retain(|r| {
                !r["what"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(self.row_prefix)
            });
            list.extend(rows);
        } else {
            old["rows"] = Value::Array(rows);
        }
        let note = Value::String(text.to_string());
        if let Some(notes) = old["notes"].as_array_mut() {
            let starts = |n: &Value, h: &str| n.as_str().unwrap_or("").trim_start().starts_with(h);
            notes.retain(|n| !starts(n, self.heading));
            let later = self.later();
            let at = notes
                .iter()
                .position(|n| later.iter().any(|h| starts(n, h)))
                .unwrap_or(notes.len());
            notes.insert(at, note);
        } else {
            old["notes"] = Value::Array(vec![note]);
        }
        if !old["raw"].is_object() {
            old["raw"] = Value::Object(Default::default());
        }
        old["raw"][self.raw_key] = raw;
    }
}

/// The start of a section of results.md: its heading, then either the measurement (and, for
/// a `--quick` run, the warning not to compare it) or the line saying why there is none,
/// which ends the section.
pub fn begin<'r, T>(
    heading: &str,
    result: &'r anyhow::Result<T>,
    quick: bool,
) -> (String, Option<&'r T>) {
    use std::fmt::Write;
    let mut out = format!("\n{heading}\n\n");
    match result {
        Ok(measured) => {
            if quick {
                out.push_str("**`--quick` smoke run: do not compare these numbers.**\n\n");
            }
            (out, Some(measured))
        }
        Err(e) => {
            let _ = writeln!(out, "not measured: {e:#}");
            (out, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replaces_inserts_or_appends_a_section() {
        let h = CROSS_NODE.heading;
        let new = format!("\n{h}\n\nnew\n");
        let with_cp = "# r\n\n| t |\n\n## Control plane at scale\n\ncp\n";
        let once = CROSS_NODE.splice_markdown(with_cp, &new);
        assert_eq!(
            once,
            format!("# r\n\n| t |\n\n{h}\n\nnew\n\n## Control plane at scale\n\ncp\n")
        );
        let again = CROSS_NODE.splice_markdown(&once, &format!("\n{h}\n\nnewer\n"));
        assert_eq!(again, once.replace("\nnew\n", "\nnewer\n"));
        let at_end = CROSS_NODE.splice_markdown("# r\n", &new);
        assert_eq!(at_end, format!("# r\n\n{h}\n\nnew\n"));
        assert_eq!(CROSS_NODE.splice_markdown(&at_end, &new), at_end);
    }

    #[test]
    fn sections_keep_their_order() {
        let (c, h) = (CROSS_NODE.heading, HTTP.heading);
        let md = "# r\n\n## Control plane at scale\n\ncp\n";
        let md = HTTP.splice_markdown(md, &format!("\n{h}\n\nhttp\n"));
        // The cross-node section goes before the HTTP one, whichever ran first.
        let md = CROSS_NODE.splice_markdown(&md, &format!("\n{c}\n\ncross\n"));
        assert_eq!(
            md,
            format!("# r\n\n{c}\n\ncross\n\n{h}\n\nhttp\n\n## Control plane at scale\n\ncp\n")
        );
        let mut js = json!({
            "rows": [{"what": "1 KiB"}, {"what": "HTTP old"}, {"what": "cross-node x"}],
            "notes": ["a", format!("\n{c}\n\ncross"), "\n## Control plane at scale"],
            "raw": {"cross_node": 1, "http": 1},
        });
        HTTP.splice_json(
            &mut js,
            vec![json!({"what": "HTTP new"})],
            &format!("\n{h}"),
            json!(2),
        );
        let whats: Vec<&str> = js["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["what"].as_str().unwrap())
            .collect();
        assert_eq!(whats, ["1 KiB", "cross-node x", "HTTP new"]);
        assert!(js["notes"][2].as_str().unwrap().contains(h));
        assert!(js["notes"][3].as_str().unwrap().contains("Control plane"));
        assert_eq!(js["raw"], json!({"cross_node": 1, "http": 2}));
        assert!(is_section_row("HTTP new") && is_section_row("cross-node x"));
        assert!(!is_section_row("1 KiB request/response, p50"));
    }
}
