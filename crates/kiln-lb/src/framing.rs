//! A byte-level check of the requests on a client connection, before hyper
//! parses them: hyper is lenient where an HTTP parser in front of or behind
//! the balancer may read the same bytes differently (it drops a
//! Content-Length that comes with Transfer-Encoding, accepts lines ending
//! in a bare LF), and such a difference is how requests are smuggled.
//!
//! The scanner follows the framing of every request on the connection
//! (pipelined ones included) and refuses, as ALB's strictest desync
//! mitigation mode does: both Content-Length and Transfer-Encoding; more
//! than one Content-Length (equal or not, in one line or several) or one
//! that is not a plain number; Transfer-Encoding other than one lone
//! `chunked`, or in HTTP/1.0; obsolete line folding; anything but a token
//! before a header's colon (a space, a control character); control
//! characters in values; lines not ended by CRLF (a bare CR or LF); a
//! malformed request line; malformed chunk framing. It keeps no copy of
//! the bytes: a few fields of state per connection.
//!
//! After a request that asks to switch protocols (an `Upgrade` header, or
//! CONNECT) the bytes that follow may belong to another protocol, so the
//! scanner stops checking; the server then closes the connection after any
//! answer that does not switch (see `listen`).

/// Why a request was refused, written in its 400 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Offset of the offending byte in the slice given to [`Scanner::scan`].
    pub(crate) at: usize,
    /// Where the refused request's head began in that slice, if it did.
    pub(crate) head_start: Option<usize>,
    /// Whether the offending byte is in a head (else in a chunked body).
    pub(crate) in_head: bool,
    pub(crate) why: &'static str,
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
const UPGRADE: &[u8] = b"upgrade";
/// The longest header name the scanner needs to recognise.
const NAME_MAX: usize = TRANSFER_ENCODING.len();
/// Longer Content-Length or Transfer-Encoding values are refused: a valid
/// one (19 digits, `chunked`) fits with room for surrounding spaces.
const VALUE_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line (the request line or a field).
    Start,
    Request,
    RequestLf,
    Name,
    Value,
    ValueLf,
    /// After the CR of the empty line that ends the head (or of an empty
    /// line before the request line).
    EmptyLf,
}

#[derive(Debug, Clone, Copy)]
struct Head {
    line: Line,
    /// A field line ended; it is noted once the next line shows it is not
    /// folded onto the following one.
    pending: bool,
    /// Whether the request line has been read (empty lines before it are
    /// allowed, as RFC 9112 section 2.2 lets a server ignore them).
    started: bool,
    /// Bytes of this head scanned so far.
    seen: usize,
    /// Spaces in the request line, and the method/version bytes kept.
    spaces: u8,
    method: [u8; 8],
    method_len: u8,
    version: [u8; 8],
    version_len: u8,
    name: [u8; NAME_MAX],
    /// `NAME_MAX + 1` once the name is longer than any of interest.
    name_len: usize,
    value: [u8; VALUE_MAX],
    value_len: usize,
    /// Whether the field being read bears on framing (its value is kept).
    capture: bool,
    content_length: Option<u64>,
    content_lengths: u8,
    chunked: bool,
    transfer_encodings: u8,
    upgrade: bool,
}

impl Head {
    fn new() -> Head {
        Head {
            line: Line::Start,
            pending: false,
            started: false,
            seen: 0,
            spaces: 0,
            method: [0; 8],
            method_len: 0,
            version: [0; 8],
            version_len: 0,
            name: [0; NAME_MAX],
            name_len: 0,
            value: [0; VALUE_MAX],
            value_len: 0,
            capture: false,
            content_length: None,
            content_lengths: 0,
            chunked: false,
            transfer_encodings: 0,
            upgrade: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Head(Head),
    /// Content-Length bytes still to come.
    Body(u64),
    ChunkSize {
        size: u64,
        digits: u8,
    },
    ChunkExt {
        size: u64,
    },
    ChunkSizeLf {
        size: u64,
    },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Trailer fields after the last chunk, checked as header fields.
    Trailer(Head),
    /// After a request that switches protocols: nothing more is checked.
    Passthrough,
    Refused,
}

pub(crate) struct Scanner {
    state: State,
    /// Request heads completed and found well-formed.
    heads: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head(Head::new()),
            heads: 0,
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a field value may hold: visible characters, spaces, tabs and
/// obs-text; no other control character.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

impl Scanner {
    /// Request heads found well-formed so far (the index the next one gets).
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether the connection switched protocols: nothing is checked.
    pub(crate) fn passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Checks the next bytes from the client. After a violation the
    /// scanner refuses everything.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let mut head_start = match &self.state {
            State::Head(h) if h.seen == 0 => Some(0),
            _ => None,
        };
        let mut i = 0;
        while i < bytes.len() {
            let in_head = matches!(self.state, State::Head(_));
            let fail = |why| Violation {
                at: i,
                head_start,
                in_head,
                why,
            };
            match &mut self.state {
                State::Passthrough => return Ok(()),
                State::Refused => return Err(fail("bad request: refused earlier\n")),
                State::Body(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::Head(Head::new());
                        head_start = Some(i);
                    }
                    continue;
                }
                State::ChunkData(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = State::ChunkDataCr;
                    }
                    continue;
                }
                State::Head(head) => {
                    // Most of a head is the request target and field values
                    // that need no look: skip over them in one go.
                    let skip = match head.line {
                        Line::Value if !head.capture => bytes[i..]
                            .iter()
                            .position(|&b| !is_value_byte(b))
                            .unwrap_or(bytes.len() - i),
                        Line::Request if head.spaces == 1 => bytes[i..]
                            .iter()
                            .position(|&b| !(0x21..=0x7e).contains(&b))
                            .unwrap_or(bytes.len() - i),
                        _ => 0,
                    };
                    if skip > 0 {
                        head.seen += skip;
                        i += skip;
                        continue;
                    }
                    let b = bytes[i];
                    head.seen += 1;
                    match line_byte(head, b, false) {
                        Err(why) => return self.refuse(fail(why)),
                        Ok(false) => {}
                        Ok(true) => match framing(head) {
                            Err(why) => return self.refuse(fail(why)),
                            Ok(next) => {
                                self.heads += 1;
                                self.state = next;
                                if matches!(self.state, State::Head(_)) {
                                    head_start = Some(i + 1);
                                }
                            }
                        },
                    }
                }
                State::Trailer(head) => match line_byte(head, bytes[i], true) {
                    Err(why) => return self.refuse(fail(why)),
                    Ok(false) => {}
                    Ok(true) => {
                        self.state = State::Head(Head::new());
                        head_start = Some(i + 1);
                    }
                },
                State::ChunkSize { size, digits } => {
                    let b = bytes[i];
                    if let Some(d) = (b as char).to_digit(16) {
                        if *digits >= 15 {
                            return self.refuse(fail("bad request: chunk size too large\n"));
                        }
                        *size = *size * 16 + u64::from(d);
                        *digits += 1;
                    } else if *digits == 0 {
                        return self.refuse(fail("bad request: malformed chunk size\n"));
                    } else {
                        let size = *size;
                        self.state = match b {
                            b';' => State::ChunkExt { size },
                            b'\r' => State::ChunkSizeLf { size },
                            _ => return self.refuse(fail("bad request: malformed chunk size\n")),
                        };
                    }
                }
                State::ChunkExt { size } => {
                    let b = bytes[i];
                    if b == b'\r' {
                        self.state = State::ChunkSizeLf { size: *size };
                    } else if !is_value_byte(b) {
                        return self.refuse(fail("bad request: malformed chunk extension\n"));
                    }
                }
                State::ChunkSizeLf { size } => {
                    if bytes[i] != b'\n' {
                        return self.refuse(fail("bad request: bare CR in chunk framing\n"));
                    }
                    self.state = match *size {
                        0 => State::Trailer(Head {
                            started: true,
                            ..Head::new()
                        }),
                        size => State::ChunkData(size),
                    };
                }
                State::ChunkDataCr | State::ChunkDataLf => {
                    let (want, next) = match self.state {
                        State::ChunkDataCr => (b'\r', State::ChunkDataLf),
                        _ => (b'\n', State::ChunkSize { size: 0, digits: 0 }),
                    };
                    if bytes[i] != want {
                        return self.refuse(fail("bad request: chunk data longer than its size\n"));
                    }
                    self.state = next;
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn refuse(&mut self, v: Violation) -> Result<(), Violation> {
        self.state = State::Refused;
        Err(v)
    }
}

/// Advances a head (or trailer section) by one byte; true when the empty
/// line that ends it is complete.
fn line_byte(head: &mut Head, b: u8, trailer: bool) -> Result<bool, &'static str> {
    if head.pending && !matches!(b, b' ' | b'\t') {
        head.pending = false;
        if !trailer {
            field(head)?;
        }
    }
    match head.line {
        Line::Start => match b {
            b'\r' => head.line = Line::EmptyLf,
            b'\n' => return Err("bad request: line ended by a bare LF\n"),
            b' ' | b'\t' if head.started => {
                return Err("bad request: obsolete line folding\n");
            }
            _ if !head.started => {
                head.started = true;
                head.line = Line::Request;
                return request_line_byte(head, b).map(|()| false);
            }
            _ if is_tchar(b) => {
                head.line = Line::Name;
                head.name_len = 0;
                head.value_len = 0;
                push_name(head, b);
            }
            _ => return Err("bad request: invalid character in a header name\n"),
        },
        Line::Request => match b {
            b'\r' => head.line = Line::RequestLf,
            _ => request_line_byte(head, b)?,
        },
        Line::RequestLf => {
            if b != b'\n' {
                return Err("bad request: bare CR in the request line\n");
            }
            let version = &head.version[..head.version_len as usize];
            if head.spaces != 2 || (version != b"HTTP/1.1" && version != b"HTTP/1.0") {
                return Err("bad request: malformed request line\n");
            }
            head.line = Line::Start;
        }
        Line::Name => match b {
            b':' => {
                head.line = Line::Value;
                let name = &head.name[..head.name_len.min(NAME_MAX)];
                head.capture = !trailer
                    && head.name_len <= NAME_MAX
                    && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == UPGRADE);
            }
            _ if is_tchar(b) => push_name(head, b),
            b' ' | b'\t' => return Err("bad request: whitespace before a header's colon\n"),
            _ => return Err("bad request: invalid character in a header name\n"),
        },
        Line::Value => match b {
            b'\r' => head.line = Line::ValueLf,
            b'\n' => return Err("bad request: line ended by a bare LF\n"),
            _ if is_value_byte(b) => {
                if !head.capture {
                    return Ok(false);
                }
                if head.value_len < VALUE_MAX {
                    head.value[head.value_len] = b;
                }
                head.value_len += 1;
            }
            _ => return Err("bad request: control character in a header value\n"),
        },
        Line::ValueLf => {
            if b != b'\n' {
                return Err("bad request: bare CR in a header line\n");
            }
            head.line = Line::Start;
            head.pending = true;
        }
        Line::EmptyLf => {
            if b != b'\n' {
                return Err("bad request: bare CR in a header line\n");
            }
            head.line = Line::Start;
            // Empty lines before the request line are skipped.
            return Ok(head.started);
        }
    }
    Ok(false)
}

fn request_line_byte(head: &mut Head, b: u8) -> Result<(), &'static str> {
    match b {
        b' ' => head.spaces += 1,
        b'\n' => return Err("bad request: line ended by a bare LF\n"),
        0x21..=0x7e => match head.spaces {
            0 => {
                if let Some(slot) = head.method.get_mut(head.method_len as usize) {
                    *slot = b;
                }
                head.method_len = head.method_len.saturating_add(1);
            }
            2 => {
                if let Some(slot) = head.version.get_mut(head.version_len as usize) {
                    *slot = b;
                }
                head.version_len = head.version_len.saturating_add(1);
            }
            _ => {}
        },
        _ => return Err("bad request: malformed request line\n"),
    }
    if head.spaces > 2 || head.version_len > 8 {
        return Err("bad request: malformed request line\n");
    }
    Ok(())
}

fn push_name(head: &mut Head, b: u8) {
    if head.name_len < NAME_MAX {
        head.name[head.name_len] = b.to_ascii_lowercase();
    }
    head.name_len = (head.name_len + 1).min(NAME_MAX + 1);
}

/// Notes a complete header field that bears on framing.
fn field(head: &mut Head) -> Result<(), &'static str> {
    if !head.capture {
        return Ok(());
    }
    head.capture = false;
    let name = &head.name[..head.name_len.min(NAME_MAX)];
    let long = head.value_len > VALUE_MAX;
    let value = trim(&head.value[..head.value_len.min(VALUE_MAX)]);
    if name == CONTENT_LENGTH {
        head.content_lengths += 1;
        if head.content_lengths > 1 {
            return Err("bad request: more than one Content-Length\n");
        }
        if long || value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return Err("bad request: Content-Length is not one number\n");
        }
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        head.content_length = Some(n);
    } else if name == TRANSFER_ENCODING {
        head.transfer_encodings += 1;
        if head.transfer_encodings > 1 || long || !value.eq_ignore_ascii_case(b"chunked") {
            return Err("bad request: Transfer-Encoding other than chunked\n");
        }
        head.chunked = true;
    } else if name == UPGRADE {
        head.upgrade = true;
    }
    Ok(())
}

/// The state after a complete, well-formed head.
fn framing(head: &Head) -> Result<State, &'static str> {
    if head.chunked && head.content_lengths > 0 {
        return Err("bad request: both Content-Length and Transfer-Encoding\n");
    }
    if head.chunked && &head.version[..] == b"HTTP/1.0" {
        return Err("bad request: Transfer-Encoding in HTTP/1.0\n");
    }
    if head.upgrade || &head.method[..head.method_len.min(8) as usize] == b"CONNECT" {
        return Ok(State::Passthrough);
    }
    Ok(if head.chunked {
        State::ChunkSize { size: 0, digits: 0 }
    } else {
        match head.content_length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head(Head::new()),
        }
    })
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
