use super::*;

/// Scans `text` in pieces of `step` bytes; the heads accepted, or why not.
fn scan(text: &str, step: usize) -> Result<u64, &'static str> {
    let mut s = Scanner::default();
    for piece in text.as_bytes().chunks(step) {
        s.scan(piece).map_err(|v| v.why)?;
    }
    Ok(s.heads())
}

fn every_split(text: &str) -> Result<u64, &'static str> {
    let whole = scan(text, text.len().max(1));
    for step in 1..8 {
        assert_eq!(scan(text, step), whole, "split by {step}: {text:?}");
    }
    whole
}

#[test]
fn well_formed_requests_pass_in_any_split() {
    let text = concat!(
        "\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Odd: caf\u{e9} \t v\r\n\r\n",
        "POST /a?b=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n",
        "5;name=value\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(every_split(text), Ok(4));
}

#[test]
fn ambiguous_framing_is_refused() {
    for (text, why) in [
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "more than one Content-Length",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            "not one number",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "not one number",
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "not one number",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "other than chunked",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "other than chunked",
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "in HTTP/1.0",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "obsolete line folding",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "whitespace before a header's colon",
        ),
        ("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\n\r\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\r\n\n", "bare LF"),
        ("GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", "bare CR"),
        (
            "GET / HTTP/1.1\r\nHo\"st: x\r\n\r\n",
            "invalid character in a header name",
        ),
        (
            "GET / HTTP/1.1\r\n: x\r\n\r\n",
            "invalid character in a header name",
        ),
        ("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "control character"),
        ("GET  / HTTP/1.1\r\n\r\n", "malformed request line"),
        ("GET / HTTP/1.2\r\n\r\n", "malformed request line"),
        ("GET /\x01 HTTP/1.1\r\n\r\n", "malformed request line"),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            "malformed chunk size",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            "longer than its size",
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            "too large",
        ),
    ] {
        let refused = every_split(text);
        assert!(
            refused.is_err_and(|r| r.contains(why)),
            "{text:?}: {refused:?}"
        );
    }
}

#[test]
fn a_refusal_says_where_the_refused_head_began() {
    let good = "GET / HTTP/1.1\r\n\r\n";
    let bad = "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    let mut s = Scanner::default();
    let v = s.scan(format!("{good}{bad}").as_bytes()).unwrap_err();
    assert_eq!(v.head_start, Some(good.len()));
    assert!(v.in_head);
    assert_eq!(s.heads(), 1);
    // Begun in an earlier read: not in this slice.
    let mut s = Scanner::default();
    s.scan(&bad.as_bytes()[..20]).unwrap();
    let v = s.scan(&bad.as_bytes()[20..]).unwrap_err();
    assert_eq!(v.head_start, None);
    // Everything after a refusal is refused too.
    assert!(s.scan(good.as_bytes()).is_err());
}

#[test]
fn the_body_is_skipped_and_not_read_as_a_request() {
    // A body that looks like a malformed request is just a body.
    let text =
        "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\nGET\n/ \x00\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    assert_eq!(every_split(text), Ok(2));
}

#[test]
fn after_an_upgrade_request_nothing_is_checked() {
    let text =
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x85\n\n\x00";
    let mut s = Scanner::default();
    s.scan(text).unwrap();
    assert!(s.passthrough());
    assert_eq!(s.heads(), 1);
    let connect = "CONNECT x:443 HTTP/1.1\r\n\r\n\x16\x03\x01\n";
    assert_eq!(every_split(connect), Ok(1));
}
