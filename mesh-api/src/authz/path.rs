//! The request path as `paths` / `notPaths` see it. Servers read `/a/../admin`, `//admin` and
//! `/%61dmin` as `/admin`; a policy compared against the raw text would let such spellings
//! past a DENY on `/admin*`. Untrusted input: must take any string without panicking.

use std::borrow::Cow;

/// The normalised form of a request path (without the query): percent-escapes of unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) decoded, other escapes' hex digits uppercased, a `%`
/// that starts no escape written as `%25`, runs
/// of `/` merged, and `.` and `..` segments removed (RFC 3986, section 5.2.4; `..` above
/// the root stays at the root). A trailing `/` is kept. Escaped slashes (`%2F`) stay escaped:
/// they are not segment boundaries. Text not starting with `/` (`*`, an absolute URI) is
/// returned as is.
pub fn normalize_path(raw: &str) -> Cow<'_, str> {
    if !raw.starts_with('/') || !needs_work(raw) {
        return Cow::Borrowed(raw);
    }
    let decoded = decode_unreserved(raw);
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
        trailing_slash = i == last && matches!(*segment, "" | "." | "..");
    }
    let mut out = String::with_capacity(raw.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    if out == raw {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(out)
    }
}

/// Whether anything could change: an escape, an empty segment, or a segment starting with
/// a dot.
fn needs_work(raw: &str) -> bool {
    raw.contains('%') || raw.contains("//") || raw.contains("/.")
}

fn decode_unreserved(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h << 4 | l, [h, l])),
            _ => None,
        };
        match escape {
            Some((c, _)) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(c);
                i += 3;
            }
            Some((_, digits)) => {
                out.push(b'%');
                out.extend(digits.map(|d| b"0123456789ABCDEF"[usize::from(d)]));
                i += 3;
            }
            // A `%` that starts no escape is written as one (`%25`), so decoding never
            // makes a new escape out of it and what follows (`%%61` is `%25a`, not `%a`).
            None if b == b'%' => {
                out.extend(b"%25");
                i += 1;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII escapes were replaced, by ASCII: still UTF-8, but never unwrap network input.
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_path_normalise_alike() {
        for (raw, want) in [
            ("/admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin/", "/admin/"),
            ("/./admin/.", "/admin/"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a//", "/a/"),
            ("/", "/"),
            ("/..", "/"),
            ("//", "/"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/%zz/%4", "/%25zz/%254"),
            // Decoding never makes a new escape: normalising twice changes nothing.
            ("/%%61d", "/%25ad"),
            ("/%2%61", "/%252a"),
            ("/%c3%a9", "/%C3%A9"),
            ("/é/./x", "/é/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("*", "*"),
            ("", ""),
            ("http://a/../b", "http://a/../b"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
        assert!(matches!(normalize_path("/api/v1"), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/.well-known/x"), Cow::Borrowed(_)));
        for raw in ["/%%61d", "/%2%61", "/%%%32%35", "/a/%2e%2E/%2e/b"] {
            let once = normalize_path(raw);
            assert_eq!(normalize_path(&once), once, "{raw}");
        }
    }
}
