//! The client protocol parser: bytes in, operations out (sans-IO).
//!
//! It owns framing: verbs (case-insensitive), argument splitting on spaces and tabs, `\r\n` or
//! bare `\n` line ends, payload lengths and their trailing CRLF, and the limits that apply while
//! parsing (`max_control_line`, `max_payload`). It reads a whole read's bytes (one shared
//! `Bytes`) from a position and moves the position past each operation: a publish comes out
//! as a [`PubMsg`] that borrows that chunk and names the spans of its parts, so nothing is
//! copied, allocated or reference-counted per message. It must not know about subscriptions,
//! connections or sockets.

use bytes::Bytes;
use std::fmt;

/// One protocol operation from a client, borrowing the chunk it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// `CONNECT <json>`: the raw JSON.
    Connect(&'a [u8]),
    /// `PUB`/`HPUB`.
    Pub(PubMsg<'a>),
    /// `SUB <subject> [queue] <sid>`, borrowing the chunk: a subscription that keeps them
    /// copies them out, since it lives long and must not pin the read buffer.
    Sub {
        subject: &'a [u8],
        queue: Option<&'a [u8]>,
        sid: &'a [u8],
    },
    /// `UNSUB <sid> [max]`.
    Unsub { sid: &'a [u8], max: Option<u64> },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `INFO` or `+OK` sent by a client: accepted and ignored.
    Ignored,
    /// `-ERR` sent by a client: nats-server logs it and closes the connection.
    ClientErr(&'a [u8]),
}

/// Where a message's parts lie inside its frame, in 32-bit offsets: a frame is at most one
/// read and one message (`max_payload` is at most 64 MiB), and at half the size of `usize`
/// ranges the parts cost less to move with every operation the parser returns and every
/// message forwarded to another shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    subject: Pos,
    reply: Option<Pos>,
    /// Size of the header block at the start of the message (0 for none).
    hdr_len: u32,
    msg: Pos,
}

/// A [`Span`] in 32-bit offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    start: u32,
    end: u32,
}

impl Pos {
    fn of(s: Span) -> Pos {
        debug_assert!(u32::try_from(s.end).is_ok(), "a frame over 4 GiB");
        Pos {
            start: s.start as u32,
            end: s.end as u32,
        }
    }

    fn span(self) -> Span {
        self.start as usize..self.end as usize
    }
}

impl Parts {
    /// A message's parts at these places of its frame.
    pub fn new(subject: Span, reply: Option<Span>, hdr_len: usize, msg: Span) -> Parts {
        Parts {
            subject: Pos::of(subject),
            reply: reply.map(Pos::of),
            hdr_len: hdr_len as u32,
            msg: Pos::of(msg),
        }
    }

    fn shifted(self, by: usize) -> Parts {
        let by = by as u32;
        let shift = |s: Pos| Pos {
            start: s.start + by,
            end: s.end + by,
        };
        Parts {
            subject: shift(self.subject),
            reply: self.reply.map(shift),
            msg: shift(self.msg),
            ..self
        }
    }
}

/// A published message: the chunk it lies in, and where its parts are. Reading the parts
/// costs nothing; a forward to another shard takes one refcount on the chunk for all the
/// messages of the chunk it forwards in one batch.
#[derive(Debug, Clone)]
pub struct PubMsg<'a> {
    frame: &'a Bytes,
    parts: Parts,
}

impl<'a> PubMsg<'a> {
    /// Size of the header block at the start of [`PubMsg::msg`] (0 for none).
    pub fn hdr_len(&self) -> usize {
        self.parts.hdr_len as usize
    }
    /// The subject.
    pub fn subject(&self) -> &[u8] {
        &self.frame[self.parts.subject.span()]
    }
    /// The reply subject, if any.
    pub fn reply(&self) -> Option<&[u8]> {
        self.parts.reply.map(|r| &self.frame[r.span()])
    }
    /// The header block followed by the payload.
    pub fn msg(&self) -> &[u8] {
        &self.frame[self.parts.msg.span()]
    }
    /// The reply as shared bytes.
    pub fn reply_bytes(&self) -> Option<Bytes> {
        self.parts.reply.map(|r| self.frame.slice(r.span()))
    }
    /// The message at `parts` in `frame`: a forwarded message, whose frame travels once for
    /// all the messages of one read (see `ShardOp::Frame`).
    pub fn new(frame: &'a Bytes, parts: Parts) -> Self {
        PubMsg { frame, parts }
    }
    /// The chunk the message lies in.
    pub fn frame(&self) -> &'a Bytes {
        self.frame
    }
    /// Where the message's parts lie in [`PubMsg::frame`].
    pub fn parts(&self) -> &Parts {
        &self.parts
    }
}

impl PartialEq for PubMsg<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.subject() == o.subject()
            && self.reply() == o.reply()
            && self.hdr_len() == o.hdr_len()
            && self.msg() == o.msg()
    }
}

impl Eq for PubMsg<'_> {}

/// A message that owns its frame: one a route delivered (its own frame of the read buffer),
/// one forwarded to another shard (its client's read chunk), or one the server makes (a
/// system reply, a mapped import). [`OwnedPub::as_msg`] lends it
/// out as the [`PubMsg`] the delivery path takes.
#[derive(Debug, Clone)]
pub struct OwnedPub {
    frame: Bytes,
    parts: Parts,
}

impl OwnedPub {
    /// A message inside `frame` (a whole protocol frame read off a connection), with its
    /// parts at these places. No copy is made.
    pub fn from_frame(
        frame: Bytes,
        subject: Span,
        reply: Option<Span>,
        hdr_len: usize,
        msg: Span,
    ) -> Self {
        OwnedPub {
            frame,
            parts: Parts::new(subject, reply, hdr_len, msg),
        }
    }

    /// A message built from its parts (copied into one new frame).
    pub fn from_parts(subject: &[u8], reply: Option<&[u8]>, hdr_len: usize, msg: &[u8]) -> Self {
        let mut frame = subject.to_vec();
        let reply_span = reply.map(|r| {
            frame.extend_from_slice(r);
            subject.len()..frame.len()
        });
        let start = frame.len();
        frame.extend_from_slice(msg);
        let msg = start..frame.len();
        OwnedPub::from_frame(frame.into(), 0..subject.len(), reply_span, hdr_len, msg)
    }

    /// The message, borrowed.
    pub fn as_msg(&self) -> PubMsg<'_> {
        PubMsg {
            frame: &self.frame,
            parts: self.parts.clone(),
        }
    }
}

impl PartialEq for OwnedPub {
    fn eq(&self, o: &Self) -> bool {
        self.as_msg() == o.as_msg()
    }
}

impl Eq for OwnedPub {}

/// Why parsing stopped. Each variant says how nats-server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown verb, missing payload CRLF, bad framing: `-ERR 'Unknown Protocol Operation'`, close.
    UnknownOp,
    /// Control line longer than `max_control_line`: `-ERR 'maximum control line exceeded'`, close.
    MaxControlLine,
    /// Payload size above `max_payload`: `-ERR 'Maximum Payload Violation'`, close.
    MaxPayload,
    /// Wrong argument count or an unparsable size: nats-server closes without an `-ERR`.
    BadArgs(&'static str, String),
    /// `HPUB` from a connection that did not announce headers: closed without an `-ERR`.
    HeadersNotEnabled,
}

impl ParseError {
    /// The `-ERR` text to send before closing, if nats-server sends one.
    pub fn err_text(&self) -> Option<&'static str> {
        match self {
            ParseError::UnknownOp => Some("Unknown Protocol Operation"),
            ParseError::MaxControlLine => Some("maximum control line exceeded"),
            ParseError::MaxPayload => Some("Maximum Payload Violation"),
            ParseError::BadArgs(..) | ParseError::HeadersNotEnabled => None,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnknownOp => f.write_str("unknown protocol operation"),
            ParseError::MaxControlLine => f.write_str("maximum control line exceeded"),
            ParseError::MaxPayload => f.write_str("maximum payload exceeded"),
            ParseError::BadArgs(verb, arg) => write!(f, "{verb} parse error: '{arg}'"),
            ParseError::HeadersNotEnabled => f.write_str("HPUB without headers support"),
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Connect,
    Pub,
    HPub,
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
}

const VERBS: &[(&[u8], Verb)] = &[
    (b"CONNECT", Verb::Connect),
    (b"PUB", Verb::Pub),
    (b"HPUB", Verb::HPub),
    (b"SUB", Verb::Sub),
    (b"UNSUB", Verb::Unsub),
    (b"PING", Verb::Ping),
    (b"PONG", Verb::Pong),
    (b"INFO", Verb::Info),
    (b"+OK", Verb::Ok),
    (b"-ERR", Verb::Err),
];

/// A byte range inside the read buffer.
pub type Span = std::ops::Range<usize>;

/// A `PUB`/`HPUB` whose control line has been parsed but whose payload has not fully arrived.
/// Nothing is consumed until the whole frame is there; the spans count from its first byte.
#[derive(Debug)]
struct PendingPub {
    /// Where the payload starts (just after the control line's `\n`), from the frame's start.
    line_end: usize,
    size: usize,
    /// The parts, from the frame's start.
    parts: Parts,
}

/// Parser state for one connection.
#[derive(Debug)]
pub struct Parser {
    max_control_line: usize,
    max_payload: usize,
    headers: bool,
    pending: Option<PendingPub>,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses a decimal size like nats-server: digits only, at most 9 of them (a longer size is
/// a malformed argument, closed without an `-ERR`, not a payload violation).
fn parse_size(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    Some(n)
}

fn verb_of(word: &[u8]) -> Option<Verb> {
    // nats-server stops looking at a PING or PONG line after its fourth byte.
    if word.len() > 4 {
        match &word[..4] {
            w if w.eq_ignore_ascii_case(b"PING") => return Some(Verb::Ping),
            w if w.eq_ignore_ascii_case(b"PONG") => return Some(Verb::Pong),
            _ => {}
        }
    }
    VERBS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(word))
        .map(|&(_, v)| v)
}

/// True if `word` (no line end seen yet) can still become a verb.
fn could_be_verb(word: &[u8]) -> bool {
    verb_of(word).is_some()
        || VERBS.iter().any(|(name, _)| {
            word.len() <= name.len() && name[..word.len()].eq_ignore_ascii_case(word)
        })
}

/// Splits `line` into at most `N` fields on runs of spaces and tabs, as spans offset by
/// `base`; returns the field count (`N + 1` when there are more).
fn split_args<const N: usize>(line: &[u8], base: usize, out: &mut [Span; N]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let start = i;
        while i < line.len() && !is_space(line[i]) {
            i += 1;
        }
        if n == N {
            return N + 1;
        }
        out[n] = base + start..base + i;
        n += 1;
    }
    n
}

impl Parser {
    /// A parser enforcing the given limits.
    pub fn new(max_control_line: usize, max_payload: usize) -> Parser {
        Parser {
            max_control_line,
            max_payload,
            headers: false,
            pending: None,
        }
    }

    /// Changes the limits (a config reload); takes effect from the next operation.
    pub fn set_limits(&mut self, max_control_line: usize, max_payload: usize) {
        self.max_control_line = max_control_line;
        self.max_payload = max_payload;
    }

    /// Whether `HPUB` is allowed (the client's `CONNECT` had `headers: true`).
    pub fn set_headers(&mut self, on: bool) {
        self.headers = on;
    }

    /// How many bytes, counted from the position of the next call, must be there before it
    /// can make progress: a pending message's frame (up to the byte where its CR belongs),
    /// or 1. A reader holding fewer reads on before it parses, so a large message is not
    /// re-examined (or re-buffered) on every read.
    pub fn wants(&self) -> usize {
        self.pending.as_ref().map_or(1, |p| p.line_end + p.size + 1)
    }

    /// Takes the next operation from `buf[*pos..]` and moves `*pos` past it. `Ok(None)` means
    /// more bytes are needed: what is left from `*pos` on must come first in the next chunk (a
    /// message whose control line was parsed is remembered relative to it). After an error
    /// the connection must close.
    #[inline(always)]
    pub fn next<'a>(
        &mut self,
        buf: &'a Bytes,
        pos: &mut usize,
    ) -> Result<Option<Op<'a>>, ParseError> {
        // The common case inline, in the caller's loop: the op is built where it is used.
        if self.pending.is_none() {
            if let Some(op) = self.fast_pub(buf, pos)? {
                return Ok(Some(op));
            }
        }
        self.next_general(buf, pos)
    }

    /// [`Parser::next`] for everything but a `PUB` that [`Parser::fast_pub`] takes.
    #[inline(never)]
    fn next_general<'a>(
        &mut self,
        buf: &'a Bytes,
        pos: &mut usize,
    ) -> Result<Option<Op<'a>>, ParseError> {
        let base = *pos;
        let rest = &buf[base..];
        if let Some(p) = &self.pending {
            let end = p.line_end + p.size;
            if rest.len() < end + 2 {
                // A wrong byte where the CR belongs is an error as soon as it arrives.
                if rest.len() > end && rest[end] != b'\r' {
                    return Err(ParseError::UnknownOp);
                }
                return Ok(None);
            }
            if &rest[end..end + 2] != b"\r\n" {
                return Err(ParseError::UnknownOp);
            }
            let p = self.pending.take().expect("checked above");
            *pos = base + end + 2;
            return Ok(Some(Op::Pub(PubMsg {
                frame: buf,
                parts: p.parts.shifted(base),
            })));
        }
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return self.check_partial(rest).map(|()| None);
        };
        let line_len = if nl > 0 && rest[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let verb_end = rest[..line_len]
            .iter()
            .position(|&b| is_space(b))
            .unwrap_or(line_len);
        let verb = verb_of(&rest[..verb_end]).ok_or(ParseError::UnknownOp)?;
        let args_start = rest[verb_end..line_len]
            .iter()
            .position(|&b| !is_space(b))
            .map_or(line_len, |p| verb_end + p);
        if line_len - args_start > self.max_control_line && !matches!(verb, Verb::Ping | Verb::Pong)
        {
            return Err(ParseError::MaxControlLine);
        }
        let args = args_start..line_len;
        if args.is_empty() && matches!(verb, Verb::Pub | Verb::HPub | Verb::Sub | Verb::Unsub) {
            // A verb that takes arguments but has none is a framing error in nats-server.
            return Err(ParseError::UnknownOp);
        }
        let line = &buf[base..base + nl + 1];
        let op = match verb {
            Verb::Ping => Op::Ping,
            Verb::Pong => Op::Pong,
            Verb::Info | Verb::Ok => Op::Ignored,
            Verb::Connect => Op::Connect(&line[args]),
            Verb::Err => Op::ClientErr(&line[args]),
            Verb::Sub => parse_sub(line, args)?,
            Verb::Unsub => parse_unsub(line, args)?,
            Verb::Pub | Verb::HPub => {
                self.pending = Some(self.parse_pub(rest, args, nl + 1, verb == Verb::HPub)?);
                return self.next(buf, pos);
            }
        };
        *pos = base + nl + 1;
        Ok(Some(op))
    }

    /// The common case in one pass: `PUB <subject> [reply] <size>\r\n` with single spaces
    /// and the whole frame in `buf`. Anything else (other verbs, tabs, repeated spaces, a bad
    /// size, a frame not all there yet) returns `None` for the general path, which gives the
    /// exact nats-server answer.
    #[inline(always)]
    fn fast_pub<'a>(&self, buf: &'a Bytes, pos: &mut usize) -> Result<Option<Op<'a>>, ParseError> {
        let base = *pos;
        let rest = &buf[base..];
        let Some(head) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        // Case-insensitive "PUB " in one compare: OR-ing 0x20 lowercases the three letters.
        if u32::from_le_bytes(*head) | 0x0020_2020 != u32::from_le_bytes(*b"pub ") {
            return Ok(None);
        }
        // One scan over the control line finds the separators and its end: the subject
        // ends at the first space, then either the size or a reply and the size follow.
        let Some((subject, reply, size, nl)) = split_pub_line(rest) else {
            return Ok(None);
        };
        if nl - 5 > self.max_control_line {
            return Ok(None);
        }
        let Some(size) = parse_size(&rest[size]) else {
            return Ok(None);
        };
        if size > self.max_payload as u64 {
            return Err(ParseError::MaxPayload);
        }
        let start = nl + 1;
        let end = start + size as usize;
        if rest.len() < end + 2 || &rest[end..end + 2] != b"\r\n" {
            return Ok(None);
        }
        *pos = base + end + 2;
        Ok(Some(Op::Pub(PubMsg {
            frame: buf,
            parts: Parts::new(
                base + subject.start..base + subject.end,
                reply.map(|r| base + r.start..base + r.end),
                0,
                base + start..base + end,
            ),
        })))
    }

    /// Without a complete line: refuse garbage and overlong lines early.
    fn check_partial(&self, buf: &[u8]) -> Result<(), ParseError> {
        let verb_end = buf.iter().position(|&b| is_space(b));
        let word = &buf[..verb_end.unwrap_or(buf.len())];
        if !could_be_verb(word) || (verb_end.is_some() && verb_of(word).is_none()) {
            return Err(ParseError::UnknownOp);
        }
        if buf.len() > self.max_control_line + 16 {
            return Err(ParseError::MaxControlLine);
        }
        Ok(())
    }

    fn parse_pub(
        &self,
        buf: &[u8],
        args: Span,
        line_end: usize,
        headers: bool,
    ) -> Result<PendingPub, ParseError> {
        if headers && !self.headers {
            return Err(ParseError::HeadersNotEnabled);
        }
        let verb = if headers {
            "processHeaderPub"
        } else {
            "processPub"
        };
        let bad = || bad_args(verb, &buf[args.clone()]);
        let mut f: [Span; 4] = Default::default();
        let n = split_args(&buf[args.clone()], args.start, &mut f);
        let [a, b, c, d] = f;
        let (subject, reply, hdr, total) = match (headers, n) {
            (false, 2) => (a, None, None, b),
            (false, 3) => (a, Some(b), None, c),
            (true, 3) => (a, None, Some(b), c),
            (true, 4) => (a, Some(b), Some(c), d),
            _ => return Err(bad()),
        };
        let size = parse_size(&buf[total]).ok_or_else(bad)?;
        let hdr_len = match hdr {
            Some(h) => parse_size(&buf[h]).ok_or_else(bad)?,
            None => 0,
        };
        if hdr_len > size {
            return Err(bad());
        }
        if size > self.max_payload as u64 {
            return Err(ParseError::MaxPayload);
        }
        let size = size as usize;
        Ok(PendingPub {
            line_end,
            size,
            parts: Parts::new(subject, reply, hdr_len as usize, line_end..line_end + size),
        })
    }
}

/// Bit 7 of each byte of the result is set where that byte of `w` is a space or a control
/// character (at most 0x20).
#[inline(always)]
fn separators(w: u64) -> u64 {
    crate::swar::bytes_below(w, 0x21)
}

/// Splits `PUB <subject> [reply] <size>\r\n` at the start of `rest`, with single spaces
/// and nothing else below 0x21 in the fields: the subject, reply and size spans and where the
/// `\n` is. Anything else returns `None`, for the general path. One pass over the line, a
/// word at a time, taking each separator (space or control byte) in order from the word's
/// mask: up to two spaces, then the CR.
#[inline(always)]
fn split_pub_line(rest: &[u8]) -> Option<(Span, Option<Span>, Span, usize)> {
    let mut spaces = [0usize; 2];
    let mut n = 0;
    // What the separator at `at` does: `Some(Some(cr))` ends the line, `Some(None)` was a
    // space, `None` a byte the fast path does not take (tab, bare LF, a third space).
    let mut take = |at: usize| match rest[at] {
        b'\r' => Some(Some(at)),
        b' ' if n < 2 => {
            spaces[n] = at;
            n += 1;
            Some(None)
        }
        _ => None,
    };
    let mut i = 4;
    let cr = 'scan: loop {
        match rest.get(i..i + 8) {
            Some(word) => {
                let mut m = separators(u64::from_le_bytes(word.try_into().expect("8 bytes")));
                while m != 0 {
                    let at = i + m.trailing_zeros() as usize / 8;
                    m &= m - 1;
                    if let Some(cr) = take(at)? {
                        break 'scan cr;
                    }
                }
                i += 8;
            }
            None => {
                // The last bytes, one at a time.
                while i < rest.len() {
                    if rest[i] <= b' ' {
                        if let Some(cr) = take(i)? {
                            break 'scan cr;
                        }
                    }
                    i += 1;
                }
                return None;
            }
        }
    };
    if rest.get(cr + 1) != Some(&b'\n') {
        return None;
    }
    match (n, spaces) {
        (1, [s1, _]) if s1 > 4 => Some((4..s1, None, s1 + 1..cr, cr + 1)),
        (2, [s1, s2]) if s1 > 4 && s2 > s1 + 1 => {
            Some((4..s1, Some(s1 + 1..s2), s2 + 1..cr, cr + 1))
        }
        _ => None,
    }
}

fn bad_args(verb: &'static str, args: &[u8]) -> ParseError {
    ParseError::BadArgs(verb, String::from_utf8_lossy(args).into_owned())
}

fn parse_sub(buf: &[u8], args: Span) -> Result<Op<'_>, ParseError> {
    let mut f: [Span; 3] = Default::default();
    match split_args(&buf[args.clone()], args.start, &mut f) {
        2 => Ok(Op::Sub {
            subject: &buf[f[0].clone()],
            queue: None,
            sid: &buf[f[1].clone()],
        }),
        3 => Ok(Op::Sub {
            subject: &buf[f[0].clone()],
            queue: Some(&buf[f[1].clone()]),
            sid: &buf[f[2].clone()],
        }),
        _ => Err(bad_args("processSub", &buf[args])),
    }
}

fn parse_unsub(buf: &[u8], args: Span) -> Result<Op<'_>, ParseError> {
    let mut f: [Span; 2] = Default::default();
    let bad = || bad_args("processUnsub", &buf[args.clone()]);
    match split_args(&buf[args.clone()], args.start, &mut f) {
        1 => Ok(Op::Unsub {
            sid: &buf[f[0].clone()],
            max: None,
        }),
        2 => Ok(Op::Unsub {
            sid: &buf[f[0].clone()],
            max: Some(parse_size(&buf[f[1].clone()]).ok_or_else(bad)?),
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk that outlives the test, so the operations that borrow it can be kept.
    fn chunk(input: &[u8]) -> &'static Bytes {
        Box::leak(Box::new(Bytes::copy_from_slice(input)))
    }

    fn parse_all(input: &[u8]) -> (Vec<Op<'static>>, Option<ParseError>) {
        let mut p = Parser::new(4096, 1024 * 1024);
        p.set_headers(true);
        let buf = chunk(input);
        let mut pos = 0;
        let mut ops = Vec::new();
        loop {
            match p.next(buf, &mut pos) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => return (ops, None),
                Err(e) => return (ops, Some(e)),
            }
        }
    }

    /// Feeds `reads` one after another as a connection would: each read's chunk starts with
    /// what the previous one left unparsed.
    fn parse_reads(p: &mut Parser, reads: &[&[u8]]) -> (Vec<Op<'static>>, Option<ParseError>) {
        let mut left = Vec::new();
        let mut ops = Vec::new();
        for r in reads {
            left.extend_from_slice(r);
            if left.len() < p.wants() {
                continue;
            }
            let buf = chunk(&left);
            let mut pos = 0;
            loop {
                match p.next(buf, &mut pos) {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(e) => return (ops, Some(e)),
                }
            }
            left = buf[pos..].to_vec();
        }
        (ops, None)
    }

    /// Every message's operation is moved out of the parser and into the handler: it stays
    /// small (it was about 100 bytes with SUB's fields as `Bytes` and `usize` spans).
    #[test]
    fn an_operation_is_small() {
        assert!(std::mem::size_of::<Result<Option<Op>, ParseError>>() <= 56);
        assert!(std::mem::size_of::<Parts>() <= 32);
    }

    #[test]
    fn pub_sub_ping() {
        let (ops, err) = parse_all(b"SUB foo 1\r\npub foo bar 5\r\nhello\r\nPING\r\nunsub 1 3\n");
        assert_eq!(err, None);
        assert_eq!(
            ops,
            vec![
                Op::Sub {
                    subject: b"foo",
                    queue: None,
                    sid: b"1"
                },
                Op::Pub(OwnedPub::from_parts(b"foo", Some(b"bar"), 0, b"hello").as_msg()),
                Op::Ping,
                Op::Unsub {
                    sid: b"1",
                    max: Some(3)
                },
            ]
        );
    }

    #[test]
    fn hpub_and_queue_sub_with_tabs() {
        let (ops, err) = parse_all(b"SUB\tfoo  q\t 9\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        assert_eq!(err, None);
        assert_eq!(
            ops[0],
            Op::Sub {
                subject: b"foo",
                queue: Some(b"q"),
                sid: b"9"
            }
        );
        assert_eq!(
            ops[1],
            Op::Pub(OwnedPub::from_parts(b"foo", None, 12, b"NATS/1.0\r\n\r\nhi").as_msg())
        );
    }

    /// The one-pass `PUB` path and the general one agree, on lines that take either.
    #[test]
    fn pub_lines_fast_and_general() {
        // (input, subject, reply, payload)
        type Case<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, &'a [u8]);
        let cases: &[Case] = &[
            (
                b"PUB a.b.c.d.e.f.g.h.i 3\r\nabc\r\n",
                b"a.b.c.d.e.f.g.h.i",
                None,
                b"abc",
            ),
            (
                b"pub \xc3\xa9t\xc3\xa9.a.long.subject _INBOX.abcdefgh.12345678 2\r\nhi\r\n",
                b"\xc3\xa9t\xc3\xa9.a.long.subject",
                Some(b"_INBOX.abcdefgh.12345678"),
                b"hi",
            ),
            (b"PUB sub\x01ject 1\r\nx\r\n", b"sub\x01ject", None, b"x"),
            (b"PUB foo  5\r\nhello\r\n", b"foo", None, b"hello"),
            (b"PUB foo\tr 0\r\n\r\n", b"foo", Some(b"r"), b""),
            (b"PUB foo 2\nhi\r\n", b"foo", None, b"hi"),
            (
                b"PUB abcdefgh 8\r\nabcdefgh\r\n",
                b"abcdefgh",
                None,
                b"abcdefgh",
            ),
        ];
        for &(input, subject, reply, payload) in cases {
            let (ops, err) = parse_all(input);
            assert_eq!(err, None, "{:?}", String::from_utf8_lossy(input));
            let want = OwnedPub::from_parts(subject, reply, 0, payload);
            assert_eq!(
                ops,
                vec![Op::Pub(want.as_msg())],
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        for bad in [&b"PUB foo\r\n"[..], b"PUB foo 1 2 3\r\n", b"PUB foo x1\r\n"] {
            assert!(matches!(parse_all(bad).1, Some(ParseError::BadArgs(..))));
        }
    }

    /// The word-at-a-time line split finds what a byte-at-a-time one finds, on lines with
    /// separators of every kind at every distance, cut off anywhere.
    #[test]
    fn split_pub_line_is_a_byte_loop() {
        fn naive(rest: &[u8]) -> Option<(Span, Option<Span>, Span, usize)> {
            let sep = |from: usize| (from..rest.len()).find(|&i| rest[i] <= b' ');
            let s1 = sep(4)?;
            if s1 == 4 || rest[s1] != b' ' {
                return None;
            }
            let s2 = sep(s1 + 1)?;
            let (reply, size_start, cr) = match rest[s2] {
                b'\r' => (None, s1 + 1, s2),
                b' ' if s2 > s1 + 1 => (Some(s1 + 1..s2), s2 + 1, sep(s2 + 1)?),
                _ => return None,
            };
            if rest[cr] != b'\r' || rest.get(cr + 1) != Some(&b'\n') {
                return None;
            }
            Some((4..s1, reply, size_start..cr, cr + 1))
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let alphabet = b"ab.9\x80\xff\x21\x20\x20\x09\r\n\x00\x01\x7f\xa0";
        let (mut taken, mut with_reply) = (0, 0);
        for _ in 0..50_000 {
            let len = rng.gen_range(4..48);
            let mut a: Vec<u8> = b"PUB ".to_vec();
            a.extend((4..len).map(|_| {
                // Mostly ordinary bytes, so separators sit at every distance.
                if rng.gen_bool(0.8) {
                    alphabet[rng.gen_range(0..4)]
                } else {
                    alphabet[rng.gen_range(0..alphabet.len())]
                }
            }));
            // Often a well-formed line end somewhere, so the whole split is exercised.
            if rng.gen_bool(0.5) && len > 6 {
                let at = rng.gen_range(5..len - 1);
                a[at] = b'\r';
                a[at + 1] = b'\n';
            }
            let got = split_pub_line(&a);
            taken += usize::from(got.is_some());
            with_reply += usize::from(got.as_ref().is_some_and(|g| g.1.is_some()));
            assert_eq!(got, naive(&a), "{:?}", String::from_utf8_lossy(&a));
        }
        assert!(
            taken > 1000 && with_reply > 100,
            "{taken} lines split, {with_reply} with a reply"
        );
    }

    #[test]
    fn split_input_byte_by_byte() {
        let input = b"CONNECT {\"verbose\":false}\r\nPUB a.b 3\r\nxyz\r\nPING\r\n";
        let mut p = Parser::new(4096, 1024);
        let reads: Vec<&[u8]> = input.chunks(1).collect();
        let (ops, err) = parse_reads(&mut p, &reads);
        assert_eq!(err, None);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0], Op::Connect(b"{\"verbose\":false}"));
        assert_eq!(ops[2], Op::Ping);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_all(b"FOO bar\r\n").1, Some(ParseError::UnknownOp));
        assert_eq!(parse_all(b"XYZ").1, Some(ParseError::UnknownOp));
        assert_eq!(
            parse_all(b"PUB foo 2\r\nhiXX").1,
            Some(ParseError::UnknownOp)
        );
        assert_eq!(
            parse_all(b"PUB foo 2000000\r\n").1,
            Some(ParseError::MaxPayload)
        );
        assert!(matches!(
            parse_all(b"PUB foo -1\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert!(matches!(
            parse_all(b"PUB foo 9999999999\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert!(matches!(
            parse_all(b"PUB foo abc\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert!(matches!(
            parse_all(b"PUB foo\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert!(matches!(
            parse_all(b"HPUB foo 5 2\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert!(matches!(
            parse_all(b"SUB foo\r\n").1,
            Some(ParseError::BadArgs(..))
        ));
        assert_eq!(parse_all(b"UNSUB\r\n").1, Some(ParseError::UnknownOp));
        assert_eq!(parse_all(b"PUB\r\n").1, Some(ParseError::UnknownOp));
        assert_eq!(parse_all(b"\r\n").1, Some(ParseError::UnknownOp));
        assert_eq!(
            parse_all(b"PUB foo 2\r\nhi\n").1,
            Some(ParseError::UnknownOp)
        );
        assert_eq!(
            parse_all(b"PING x\r\nPINGX\r\n").0,
            vec![Op::Ping, Op::Ping]
        );
        let long = format!("SUB {} 1\r\n", "a".repeat(5000));
        assert_eq!(
            parse_all(long.as_bytes()).1,
            Some(ParseError::MaxControlLine)
        );
        let partial = format!("SUB {}", "a".repeat(5000));
        assert_eq!(
            parse_all(partial.as_bytes()).1,
            Some(ParseError::MaxControlLine)
        );
    }

    #[test]
    fn incomplete_waits() {
        let (ops, err) = parse_all(b"PUB foo 5\r\nhel");
        assert!(ops.is_empty() && err.is_none());
        let (ops, err) = parse_all(b"PIN");
        assert!(ops.is_empty() && err.is_none());
    }

    /// Random bytes never panic, and whatever the parser accepts stays inside the buffer.
    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces: &[&[u8]] = &[
            b"PUB ",
            b"SUB ",
            b"HPUB ",
            b"UNSUB ",
            b"PING",
            b"\r\n",
            b"\n",
            b" ",
            b"\t",
            b"foo",
            b"12",
            b"-1",
            b"x",
            b"\0",
            b"\xff",
            b"5 ",
            b"CONNECT {}",
        ];
        for _ in 0..5000 {
            let mut input = Vec::new();
            for _ in 0..rng.gen_range(1..12) {
                input.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            }
            let _ = parse_all(&input);
        }
    }

    /// What an operation means, independent of how its bytes were buffered.
    fn meaning(op: &Op) -> String {
        match op {
            Op::Pub(m) => format!(
                "PUB {:?} {:?} {} {:?}",
                m.subject(),
                m.reply(),
                m.hdr_len(),
                m.msg()
            ),
            other => format!("{other:?}"),
        }
    }

    /// The property the fuzz target (fuzz/fuzz_targets/parser.rs) checks, run here on seeded
    /// random protocol text: the same operations whether the bytes arrive at once or in two
    /// reads cut anywhere.
    #[test]
    fn split_reads_give_the_same_operations() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let ops: &[&[u8]] = &[
            b"PUB a.b 5\r\nhello\r\n",
            b"PUB a.b r.1 0\r\n\r\n",
            b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            b"SUB a.* q 1\r\n",
            b"UNSUB 1 2\r\n",
            b"PING\r\n",
            b"CONNECT {\"verbose\":false}\r\n",
            b"PUB x 3\r\nab",
            b"\xff\r\n",
        ];
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.gen_range(1..8) {
                input.extend_from_slice(ops[rng.gen_range(0..ops.len())]);
            }
            let whole = parse_all(&input);
            let cut = rng.gen_range(0..=input.len());
            let mut p = Parser::new(4096, 1024 * 1024);
            p.set_headers(true);
            let (split, err) = parse_reads(&mut p, &[&input[..cut], &input[cut..]]);
            let a: Vec<String> = whole.0.iter().map(meaning).collect();
            let b: Vec<String> = split.iter().map(meaning).collect();
            assert_eq!(
                a,
                b,
                "input {:?} cut at {cut}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(
                whole.1.is_some(),
                err.is_some(),
                "input {input:?} cut at {cut}"
            );
        }
    }
}
