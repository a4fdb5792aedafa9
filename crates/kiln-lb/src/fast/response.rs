//! The instance's side of the `fast` path: its response's framing (RFC
//! 9112 6.3), the client's response head made from it, and the body
//! relayed as it arrives, chunked bodies as they were sent.

use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MAX_RESPONSE_HEAD, READ_CHUNK, Upstream, trim};
use crate::checked::Checked;
use crate::client::Client;

/// Header lines in a response head, as many as hyper's client takes.
const MAX_RESPONSE_HEADERS: usize = 100;

/// How the response's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyLen {
    Fixed(u64),
    Chunked,
    UntilClose,
}

pub(super) struct Framing {
    pub(super) status: u16,
    pub(super) head_len: usize,
    pub(super) body: BodyLen,
    pub(super) keep_upstream: bool,
}

/// Sends the request and reads the response head (skipping interim 1xx
/// responses, which this path never asks for), writing the client's
/// response head into `out` as [`parse_response`] does.
pub(super) async fn exchange(
    up: &mut Upstream,
    request: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> std::io::Result<Framing> {
    up.io.write_all(request).await?;
    loop {
        if let Some(framing) = parse_response(&up.buf, head_request, out)? {
            if (100..200).contains(&framing.status) {
                up.buf.advance(framing.head_len);
                continue;
            }
            return Ok(framing);
        }
        if up.buf.len() > MAX_RESPONSE_HEAD {
            return Err(bad("response head too large"));
        }
        up.buf.reserve(READ_CHUNK);
        if up.io.read_buf(&mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn bad(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// The framing of the response head at the start of `buf`, once it is
/// complete; the client's head made from it is then in `out`.
pub(super) fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> std::io::Result<Option<Framing>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(bad("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err(bad("switched protocols unasked"));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut keep_upstream = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| bad("malformed content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value
                .split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(b"close"))
        {
            keep_upstream = false;
        }
    }
    if encoded && length.is_some() {
        return Err(bad("both content-length and transfer-encoding"));
    }
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        BodyLen::Fixed(0)
    } else if encoded && chunked {
        BodyLen::Chunked
    } else if let Some(n) = length.filter(|_| !encoded) {
        BodyLen::Fixed(n)
    } else {
        keep_upstream = false;
        BodyLen::UntilClose
    };
    rewrite_head(out, &resp, status);
    Ok(Some(Framing {
        status,
        head_len,
        body,
        keep_upstream,
    }))
}

/// The client's response head from the instance's, parsed: hop-by-hop
/// headers dropped, Via and (when missing) Date added. Leaves the caller
/// to add `Connection: close`, cookies and the final CRLF.
fn rewrite_head(out: &mut Vec<u8>, resp: &httparse::Response<'_, '_>, status: u16) {
    out.clear();
    let _ = std::io::Write::write_fmt(
        out,
        format_args!(
            "HTTP/1.1 {} {}\r\n",
            status,
            resp.reason.unwrap_or_default()
        ),
    );
    // Headers the instance's Connection header names are hop-by-hop too
    // (RFC 9110 7.6.1); "close" and "keep-alive" name none worth a list.
    let named: Vec<&[u8]> = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(trim)
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .collect();
    let mut dated = false;
    for h in resp.headers.iter() {
        let eq = |n: &str| h.name.eq_ignore_ascii_case(n);
        // Transfer-Encoding stays: a chunked body is relayed as it came.
        if (crate::proxy::hop_by_hop(h.name) && !eq("transfer-encoding"))
            || eq("upgrade")
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        dated |= eq("date");
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"via: 1.1 kiln\r\n");
    if !dated {
        // As hyper's server adds it to every response without one.
        date_header(out);
    }
}

/// `date: <now>` (RFC 9110 6.6.1), formatted once a second per thread.
fn date_header(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Why a response was not relayed to its end.
#[derive(Debug)]
pub(super) enum Cut {
    /// The client went away: no fault of the instance's.
    Client(std::io::Error),
    /// The instance's connection failed or its body was malformed.
    Instance(std::io::Error),
}

/// Writes the head in `out` with the body's first bytes, then the rest of
/// the body as it arrives. Returns the body bytes relayed and whether the
/// upstream connection ended cleanly after the response. `on_head` runs
/// just before the head goes out: when it has not run, an error left the
/// client with nothing sent, free to be given another answer.
pub(super) async fn relay_body(
    io: &mut Checked<Client>,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    body: BodyLen,
    idle: Duration,
    on_head: impl FnOnce(),
) -> Result<(u64, bool), Cut> {
    let mut relayed = 0u64;
    match body {
        BodyLen::Fixed(mut left) => {
            let now = (up.buf.len() as u64).min(left) as usize;
            out.extend_from_slice(&up.buf[..now]);
            up.buf.advance(now);
            left -= now as u64;
            relayed += now as u64;
            on_head();
            io.write_all(out).await.map_err(Cut::Client)?;
            while left > 0 {
                if read_more(up, idle).await? == 0 {
                    return Err(Cut::Instance(std::io::ErrorKind::UnexpectedEof.into()));
                }
                let take = (up.buf.len() as u64).min(left) as usize;
                io.write_all(&up.buf[..take]).await.map_err(Cut::Client)?;
                up.buf.advance(take);
                left -= take as u64;
                relayed += take as u64;
            }
            Ok((relayed, up.buf.is_empty()))
        }
        BodyLen::Chunked => {
            let mut scan = ChunkScan::default();
            let mut on_head = Some(on_head);
            loop {
                let end = scan
                    .feed(&up.buf)
                    .map_err(|()| Cut::Instance(bad("malformed chunked body")))?;
                let take = end.unwrap_or(up.buf.len());
                if let Some(on_head) = on_head.take() {
                    out.extend_from_slice(&up.buf[..take]);
                    on_head();
                    io.write_all(out).await.map_err(Cut::Client)?;
                } else if take > 0 {
                    io.write_all(&up.buf[..take]).await.map_err(Cut::Client)?;
                }
                up.buf.advance(take);
                relayed += take as u64;
                if end.is_some() {
                    return Ok((relayed, up.buf.is_empty()));
                }
                if read_more(up, idle).await? == 0 {
                    return Err(Cut::Instance(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
        BodyLen::UntilClose => {
            out.extend_from_slice(&up.buf);
            relayed += up.buf.len() as u64;
            up.buf.clear();
            on_head();
            io.write_all(out).await.map_err(Cut::Client)?;
            loop {
                if read_more(up, idle).await? == 0 {
                    return Ok((relayed, false));
                }
                io.write_all(&up.buf).await.map_err(Cut::Client)?;
                relayed += up.buf.len() as u64;
                up.buf.clear();
            }
        }
    }
}

/// Reads more of the instance's response body, failing once the instance
/// has sent nothing for `idle` (ALB's idle timeout).
async fn read_more(up: &mut Upstream, idle: Duration) -> Result<usize, Cut> {
    up.buf.reserve(READ_CHUNK);
    match tokio::time::timeout(idle, up.io.read_buf(&mut up.buf)).await {
        Ok(read) => read.map_err(Cut::Instance),
        Err(_) => Err(Cut::Instance(crate::body::instance_stalled(idle))),
    }
}

/// Finds the end of a chunked body (RFC 9112 7.1) in the bytes as they
/// pass, so that they can be relayed as they are.
#[derive(Default)]
struct ChunkScan {
    state: Chunk,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf {
        empty: bool,
    },
}

impl ChunkScan {
    /// How many bytes of `bytes` complete the body, once it is complete.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == Chunk::Data {
                let n = self.size.min((bytes.len() - i) as u64);
                i += n as usize;
                self.size -= n;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let c = bytes[i];
            i += 1;
            self.state = match (self.state, c) {
                (Chunk::Size, c) if c.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        return Err(());
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((c as char).to_digit(16).unwrap_or(0));
                    Chunk::Size
                }
                (Chunk::Size, b';' | b' ' | b'\t') if self.digits > 0 => Chunk::Extension,
                (Chunk::Size, b'\r') if self.digits > 0 => Chunk::SizeLf,
                (Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Extension, b'\n') => return Err(()),
                (Chunk::Extension, _) => Chunk::Extension,
                (Chunk::SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::TrailerStart, b'\r') => Chunk::TrailerLf { empty: true },
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf { empty: false },
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => return Err(()),
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::TrailerLf { empty: true }, b'\n') => return Ok(Some(i)),
                (Chunk::TrailerLf { empty: false }, b'\n') => Chunk::TrailerStart,
                _ => return Err(()),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn the_end_of_a_chunked_body_is_found_in_any_split() {
        for split in 0..=BODY.len() {
            let mut scan = ChunkScan::default();
            let first = scan.feed(&BODY[..split]).unwrap();
            let end = match first {
                Some(n) => n,
                None => split + scan.feed(&BODY[split..]).unwrap().expect("the end"),
            };
            assert_eq!(end, BODY.len(), "split at {split}");
        }
        // Bytes after the body are not part of it.
        let mut more = BODY.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(ChunkScan::default().feed(&more), Ok(Some(BODY.len())));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"\r\n",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX-Trailer: t\n",
        ] {
            assert_eq!(ChunkScan::default().feed(bad), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |head: &str, head_request: bool| {
            parse_response(head.as_bytes(), head_request, &mut Vec::new())
                .map(|f| f.map(|f| (f.status, f.body, f.keep_upstream)))
        };
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok(Some((200, BodyLen::Fixed(5), true)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Some((200, BodyLen::Fixed(0), true)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Some((204, BodyLen::Fixed(0), true)))
        ));
        assert!(matches!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok(Some((200, BodyLen::Chunked, true)))
        ));
        assert!(matches!(
            framing(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok(Some((200, BodyLen::Fixed(1), false)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some((200, BodyLen::UntilClose, false)))
        ));
        assert!(matches!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok(Some((200, BodyLen::Fixed(1), false)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        ));
        for ambiguous in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(framing(ambiguous, false).is_err(), "{ambiguous}");
        }
    }
}
