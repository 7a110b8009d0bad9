//! A request as the proxy receives it, checked before anything routes on it:
//! the framing of its head ([`check_framing`]), its host ([`parse_authority`])
//! and its path ([`normalize_path`]). Each refusal names the problem and maps
//! to one HTTP status; what passes is what is authorized *and* forwarded, so
//! the two can never disagree.
//!
//! These are pure functions over untrusted bytes: fuzzed (`regions/fuzz/`) and fed the
//! fixture tables (`tests/fixtures/*.yaml`).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name accepted (RFC 1035), before the port.
const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Why a request is refused before routing. Every variant is a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request framing: {0}")]
    Framing(&'static str),
    #[error("invalid Host: {0}")]
    Host(&'static str),
    #[error("invalid request path: {0}")]
    Path(&'static str),
}

impl RequestError {
    pub fn status(&self) -> u16 {
        400
    }
}

/// Checks the raw head (request line and header fields, as received) for
/// what lets two parsers disagree on where a request ends: bare LF line
/// endings, NUL bytes, both `Content-Length` and `Transfer-Encoding`, more
/// than one `Content-Length` or one that is not plain digits, and any
/// `Transfer-Encoding` other than a single `chunked`.
pub fn check_framing(head: &[u8]) -> Result<(), RequestError> {
    let bad = |why| Err(RequestError::Framing(why));
    if memchr::memchr(0, head).is_some() {
        return bad("NUL byte in the request head");
    }
    // Every CR must start a CRLF, and every LF end one (vectorized scans:
    // this runs on every request).
    for i in memchr::memchr2_iter(b'\r', b'\n', head) {
        if head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return bad("bare LF line ending");
        }
        if head[i] == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return bad("bare CR in the request head");
        }
    }
    let (mut content_length, mut transfer_encoding) = (0, 0);
    // Skip the request line; stop at the blank line.
    let mut start = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    while start < head.len() {
        let end = memchr::memchr(b'\n', &head[start..]).map_or(head.len(), |i| start + i);
        let line = &head[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return bad("folded header line");
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return bad("header line without a colon");
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return bad("Content-Length is not a plain number");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return bad("Transfer-Encoding other than a single `chunked`");
            }
        }
    }
    match (content_length, transfer_encoding) {
        (0, 0) | (1, 0) | (0, 1) => Ok(()),
        (_, 0) => bad("more than one Content-Length"),
        (0, _) => bad("more than one Transfer-Encoding"),
        _ => bad("both Content-Length and Transfer-Encoding"),
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

/// A request's authority, normalized: lower case, no trailing dot, the port
/// only if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// A DNS name (ASCII, punycode for IDNs), an IPv4 address, or `[IPv6]`.
    pub host: String,
    pub port: Option<u16>,
}

impl Authority {
    /// `host[:port]`, as routing matches it.
    pub fn to_host_port(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Parses a `Host` header (or HTTP/2 `:authority`): `host[:port]`, where host
/// is a DNS name of letters, digits, `-` and `_` labels (any case; one
/// trailing dot allowed; `xn--` labels must be valid punycode), an IPv4
/// address, or a bracketed IPv6 address. Userinfo, paths, empty or
/// out-of-range ports and raw non-ASCII are refused.
pub fn parse_authority(raw: &str) -> Result<Authority, RequestError> {
    let bad = |why| Err(RequestError::Host(why));
    if raw.is_empty() {
        return bad("empty");
    }
    if !raw.is_ascii() {
        return bad("raw non-ASCII characters; international names must be punycode (xn--)");
    }
    if raw.contains('@') {
        return bad("userinfo (`user@`) is not allowed");
    }
    if raw.contains(['/', '\\', '?', '#']) {
        return bad("a host may not hold a path, query or fragment");
    }
    if raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return bad("control characters or spaces");
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("unclosed IPv6 bracket");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in brackets");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(RequestError::Host("junk after the IPv6 address"))?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        (parse_name(name)?, port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return bad("the port must be a number from 1 to 65535");
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port must be a number from 1 to 65535"),
            }
        }
    };
    Ok(Authority { host, port })
}

/// A DNS name or IPv4 address, lower-cased, without its trailing dot.
fn parse_name(name: &str) -> Result<String, RequestError> {
    let bad = |why| Err(RequestError::Host(why));
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return bad("empty host name");
    }
    if name.len() > MAX_HOST_LEN {
        return bad("host name longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        // Numeric last label: only a whole dotted-quad IPv4 address is a host.
        return match name.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(ip.to_string()),
            Err(_) => bad("not an IPv4 address"),
        };
    }
    for label in labels {
        if label.is_empty() {
            return bad("empty label (`..`)");
        }
        if label.len() > MAX_LABEL_LEN {
            return bad("label longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return bad("labels hold only letters, digits, `-` and `_`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with `-`");
        }
        if label.starts_with("xn--") {
            let (_, decoded) = idna::domain_to_unicode(label);
            if decoded.is_err() {
                return bad("invalid punycode label");
            }
        }
    }
    Ok(name)
}

/// Normalizes a request path (without its query), once, for both the
/// authorization decision and the request forwarded to the app:
///
/// - `//` runs become `/`; `.` and `..` segments (also as `%2e`) are resolved;
///   `..` above the root is refused;
/// - refused: `%2f` or `%5c` inside a segment (an encoded separator), `\`,
///   `%00` and other encoded control characters, a dot segment with
///   parameters (`..;x`), malformed percent escapes, raw control, space or
///   non-ASCII bytes, and anything not starting with `/`.
///
/// Other escapes are kept as they came, so the app decodes what the client sent.
pub fn normalize_path(path: &str) -> Result<String, RequestError> {
    let bad = |why| Err(RequestError::Path(why));
    if !path.starts_with('/') {
        return bad("must start with `/`");
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return bad("raw control characters, spaces or non-ASCII bytes");
    }
    if path.contains('\\') {
        return bad("backslash");
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let decoded_dots = check_segment(seg)?;
        let (plain, params) = match decoded_dots.split_once(';') {
            Some((p, _)) => (p, true),
            None => (decoded_dots.as_str(), false),
        };
        let dot = matches!(plain, "." | "..");
        if dot && params {
            return bad("dot segment with parameters (`..;`)");
        }
        match plain {
            "" if !params => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return bad("`..` above the root");
                }
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for seg in &out {
        normalized.push('/');
        normalized.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Checks one segment's escapes; returns it with `%2e` decoded to `.` (only
/// dots are decoded, and only to recognize dot segments).
fn check_segment(seg: &str) -> Result<String, RequestError> {
    let bad = |why| Err(RequestError::Path(why));
    let bytes = seg.as_bytes();
    let mut decoded = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return bad("malformed percent escape");
        };
        match value {
            b'/' | b'\\' => return bad("encoded `/` or `\\` inside a segment"),
            v if v.is_ascii_control() => return bad("encoded control character (e.g. %00)"),
            b'.' => decoded.push('.'),
            _ => decoded.push_str(&seg[i..i + 3]),
        }
        i += 3;
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let ok = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
        ];
        for h in ok {
            assert_eq!(check_framing(h.as_bytes()), Ok(()), "{h:?}");
        }
        let refused = [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n\r\n",
        ];
        for h in refused {
            assert!(check_framing(h.as_bytes()).is_err(), "{h:?}");
        }
    }

    #[test]
    fn authorities() {
        let a = |h: &str, p| Ok(Authority { host: h.to_owned(), port: p });
        assert_eq!(
            parse_authority("Code--Main--Dev--Alice.Sydney.LOCALHOST:7081"),
            a("code--main--dev--alice.sydney.localhost", Some(7081))
        );
        assert_eq!(parse_authority("example.com."), a("example.com", None));
        assert_eq!(parse_authority("127.0.0.1:80"), a("127.0.0.1", Some(80)));
        assert_eq!(parse_authority("[::1]:7080"), a("[::1]", Some(7080)));
        assert_eq!(parse_authority("xn--bcher-kva.example"), a("xn--bcher-kva.example", None));
        for bad in [
            "",
            "a@b",
            "user:pw@host",
            "host/path",
            "host:",
            "host:0",
            "host:65536",
            "host:8o",
            "host:-1",
            "exa mple.com",
            "bücher.example",
            "xn--a.example",
            "a..b",
            "example.com..",
            "-a.b",
            "1.2.3",
            "256.1.1.1",
            "[::1",
            "[nope]",
            "[::1]x",
            "h:1:2",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} accepted: {:?}", parse_authority(bad));
        }
    }

    #[test]
    fn paths() {
        let cases = [
            ("/", "/"),
            ("//", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/a/%2e%2E/c", "/c"),
            ("/a/.%2e/c", "/c"),
            ("/a%2eb", "/a%2eb"),
            ("/a;x=1/b", "/a;x=1/b"),
            ("/%41%20b", "/%41%20b"),
            ("/@alice/dev/apps/code/../../../@bob/dev/apps/code/x", "/@alice/@bob/dev/apps/code/x"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "",
            "a",
            "*",
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%0d%0a",
            "/%zz",
            "/%4",
            "/..;/x",
            "/a/.;x",
            "/a b",
            "/é",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad:?} accepted: {:?}", normalize_path(bad));
        }
    }
}
