//! Query strings as Route `queryParams` conditions see them. Reachable from the network (the
//! agent feeds it every routed request's query), so it must take any input without
//! panicking: it only walks bytes it has checked are there.

use std::collections::BTreeMap;

/// The parameters of a raw query string (without the '?'), e.g. `a=1&b=x%20y`: names and
/// values percent-decoded, `+` read as a space. The first occurrence of a name wins; a
/// parameter without `=` has the empty value; empty pieces (`a=1&&b`) and empty names are
/// skipped. A malformed escape (`%zz`, a lone `%`) stays as written, and bytes that do not
/// decode to UTF-8 become U+FFFD, so such a value can never equal a configured one by accident.
pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for piece in query.split('&') {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = decode(name);
        if !name.is_empty() {
            params.entry(name).or_insert_with(|| decode(value));
        }
    }
    params
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i).and_then(hex), bytes.get(i + 1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        parse_query(query).into_iter().collect()
    }

    fn p(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn names_and_values_are_decoded() {
        assert_eq!(
            pairs("a=1&b=x%20y&c=p+q&d%5B%5D=%2b"),
            [p("a", "1"), p("b", "x y"), p("c", "p q"), p("d[]", "+")]
        );
        assert_eq!(pairs("caf%C3%A9=%E2%9C%93"), [p("café", "✓")]);
    }

    #[test]
    fn first_occurrence_wins_and_bare_names_are_empty() {
        assert_eq!(
            pairs("debug&debug=1&x=1&x=2"),
            [p("debug", ""), p("x", "1")]
        );
        assert_eq!(pairs("a=b=c"), [p("a", "b=c")]);
    }

    #[test]
    fn odd_input_is_kept_or_skipped_never_a_panic() {
        assert_eq!(pairs(""), []);
        assert_eq!(pairs("&&=x&"), []);
        assert_eq!(
            pairs("a=%&b=%4&c=%zz&d=%%41"),
            [p("a", "%"), p("b", "%4"), p("c", "%zz"), p("d", "%A")]
        );
        assert_eq!(pairs("a=%ff%fe"), [p("a", "\u{fffd}\u{fffd}")]);
        assert_eq!(pairs("%e9=1"), [p("\u{fffd}", "1")]);
        assert_eq!(pairs("é=ü"), [p("é", "ü")]);
    }
}
