//! The NATS wire protocol, client side, sans-IO: an incremental parser for what a server sends
//! (`MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`, `INFO`) and builders for what a client sends
//! (`CONNECT`, `PUB`, `SUB`, `UNSUB`). It owns no socket; callers feed it bytes. It must stay
//! minimal and allocation-free per message: it sits on the generator's hot path.

use crate::error::{Error, Result};
use std::io::{self, Read};

/// One frame from the server, borrowing from the parser's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `MSG` or `HMSG` (for `HMSG` the payload includes the header block).
    Msg {
        /// Subject the message was published on.
        subject: &'a [u8],
        /// Subscription id it was delivered for.
        sid: &'a [u8],
        /// Reply subject, if any.
        reply: Option<&'a [u8]>,
        /// Payload bytes (without the trailing CRLF).
        payload: &'a [u8],
    },
    /// `PING`: the caller must answer `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR` with its text.
    Err(&'a [u8]),
    /// `INFO` with its JSON.
    Info(&'a [u8]),
}

/// Incremental parser with its own growable read buffer.
///
/// Bytes go in either by [`Parser::read_from`] (one `read` syscall into the free tail of the
/// buffer) or [`Parser::feed`]; frames come out of [`Parser::next_frame`]. A frame split across
/// reads stays in the buffer until it is complete.
pub struct Parser {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last `MSG`/`HMSG` control line (through its `\n`) and what it scanned to: a
    /// subscriber's deliveries mostly repeat one line (subject, sid and size alike), which
    /// is then compared instead of scanned again.
    last_line: Vec<u8>,
    last_msg: Option<Scan>,
}

const MIN_FREE: usize = 16 * 1024;

impl Parser {
    /// A parser whose buffer starts at `cap` bytes (it grows for frames larger than that).
    pub fn new(cap: usize) -> Self {
        Parser {
            buf: vec![0; cap.max(MIN_FREE * 2)],
            start: 0,
            end: 0,
            last_line: Vec::new(),
            last_msg: None,
        }
    }

    /// Bytes buffered but not yet consumed as frames.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < MIN_FREE {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < MIN_FREE {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
    }

    /// Reads once from `r` into the buffer. Returns the byte count (0 at end of stream).
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.make_room();
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes (tests feed split input this way).
    #[cfg(test)]
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            self.make_room();
            let n = rest.len().min(self.buf.len() - self.end);
            self.buf[self.end..self.end + n].copy_from_slice(&rest[..n]);
            self.end += n;
            rest = &rest[n..];
        }
    }

    /// Makes room for a MSG frame of `total` bytes that is under way.
    fn grow_for(&mut self, total: Option<usize>) {
        if let Some(total) = total {
            if self.buf.len() - self.start < total + MIN_FREE {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                let want = (total + MIN_FREE).next_power_of_two().max(self.buf.len());
                self.buf.resize(want, 0);
            }
        }
    }

    /// Whether a complete frame is buffered (skips blank lines).
    pub fn ready(&mut self) -> Result<bool> {
        loop {
            match self.scan()? {
                Scan::Need(t) => {
                    self.grow_for(t);
                    return Ok(false);
                }
                Scan::Blank(n) => self.start += n,
                _ => return Ok(true),
            }
        }
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        loop {
            match self.scan()? {
                Scan::Need(t) => {
                    self.grow_for(t);
                    return Ok(None);
                }
                Scan::Blank(n) => self.start += n,
                Scan::Line { kind, rest, len } => {
                    let s = self.start;
                    self.start += len;
                    let b = &self.buf[s..s + len];
                    let rest = trim(&b[rest.0..rest.1]);
                    return Ok(Some(match kind {
                        LineKind::Ping => Frame::Ping,
                        LineKind::Pong => Frame::Pong,
                        LineKind::Ok => Frame::Ok,
                        LineKind::Err => Frame::Err(rest),
                        LineKind::Info => Frame::Info(rest),
                    }));
                }
                Scan::Msg {
                    subject,
                    sid,
                    reply,
                    payload,
                    total,
                } => {
                    let s = self.start;
                    self.start += total;
                    let b = &self.buf[s..s + total];
                    return Ok(Some(Frame::Msg {
                        subject: &b[subject.0..subject.1],
                        sid: &b[sid.0..sid.1],
                        reply: reply.map(|r| &b[r.0..r.1]),
                        payload: &b[payload.0..payload.1],
                    }));
                }
            }
        }
    }

    /// Consumes the whole frames at the front that repeat the last `MSG`/`HMSG` line, when
    /// that line's payload is `size` bytes, calling `each` with each payload; returns how
    /// many. The generator's subscribers count their deliveries this way, without a frame
    /// made and matched per message.
    pub fn take_repeats(&mut self, size: usize, mut each: impl FnMut(&[u8])) -> u64 {
        let mut n = 0;
        while let Some((payload, total)) = self.repeat() {
            if payload.1 - payload.0 != size {
                break;
            }
            each(&self.buf[self.start + payload.0..self.start + payload.1]);
            self.start += total;
            n += 1;
        }
        n
    }

    /// The payload span and length of the whole frame at the front when it repeats the
    /// last `MSG`/`HMSG` line.
    #[inline]
    fn repeat(&self) -> Option<((usize, usize), usize)> {
        let Some(Scan::Msg { payload, total, .. }) = self.last_msg else {
            return None;
        };
        let avail = &self.buf[self.start..self.end];
        (avail.len() >= total && avail.starts_with(&self.last_line)).then_some((payload, total))
    }

    /// Looks at the buffered bytes and says what the next frame is, as offsets.
    fn scan(&mut self) -> Result<Scan> {
        if self.repeat().is_some() {
            return Ok(self.last_msg.expect("a repeated message"));
        }
        let avail = &self.buf[self.start..self.end];
        let verb = if avail.starts_with(b"MSG ") {
            Some(3)
        } else if avail.starts_with(b"HMSG ") {
            Some(4)
        } else {
            None
        };
        if let Some(op_end) = verb {
            let scan = scan_msg(avail, op_end)?;
            if let Scan::Msg { payload, .. } = scan {
                // The control line ends where the payload starts.
                self.last_line.clear();
                self.last_line.extend_from_slice(&avail[..payload.0]);
                self.last_msg = Some(scan);
            }
            return Ok(scan);
        }
        let Some(nl) = avail.iter().position(|&b| b == b'\n') else {
            return need_line(avail);
        };
        let line_end = if nl > 0 && avail[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = &avail[..line_end];
        let after = nl + 1;
        let op_end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let op = &line[..op_end];
        if op == b"MSG" || op == b"HMSG" {
            // A tab after the verb: the same frame, off the fast path.
            return scan_msg(avail, op_end);
        }
        let kind = if op.eq_ignore_ascii_case(b"PING") {
            LineKind::Ping
        } else if op.eq_ignore_ascii_case(b"PONG") {
            LineKind::Pong
        } else if op.eq_ignore_ascii_case(b"+OK") {
            LineKind::Ok
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            LineKind::Err
        } else if op.eq_ignore_ascii_case(b"INFO") {
            LineKind::Info
        } else if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Scan::Blank(after));
        } else {
            return Err(proto_err("unknown operation", line));
        };
        Ok(Scan::Line {
            kind,
            rest: (op_end, line_end),
            len: after,
        })
    }
}

/// Not a whole line yet; an error once the line is longer than any server sends.
fn need_line(avail: &[u8]) -> Result<Scan> {
    if avail.len() > 64 * 1024 {
        return Err(Error::Protocol("control line longer than 64 KiB".into()));
    }
    Ok(Scan::Need(None))
}

/// A `MSG` or `HMSG` frame whose verb ends at `op_end`: its arguments and its line end are
/// found in one pass over the line, eight bytes at a time. This is the generator's hot loop
/// (a fan-out run parses ten million deliveries a second on one core): a search for the line
/// end followed by a byte-by-byte split into arguments cost ~460 instructions per `MSG`
/// line, more than the server's whole delivery, and made the generator the limit of fan-out.
fn scan_msg(avail: &[u8], op_end: usize) -> Result<Scan> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let hmsg = op_end == 4;
    // Arguments are the runs between bytes up to b' ' (space, tab, CR; LF ends the line),
    // which subjects, sids and sizes never contain. Consecutive separators make no empty
    // argument.
    let mut args = [(0usize, 0usize); 5];
    let mut n = 0;
    let mut from = op_end + 1;
    // A separator at `j`: ends the argument since `from`, if any; whether it ends the line.
    let mut at = |j: usize| -> Result<bool> {
        if j > from {
            if n == 5 {
                return Err(proto_err("too many MSG arguments", &avail[..j]));
            }
            args[n] = (from, j);
            n += 1;
        }
        from = j + 1;
        Ok(avail[j] == b'\n')
    };
    let mut i = op_end;
    let nl = 'line: loop {
        if let Some(word) = avail.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            // High bit of each byte below 0x21: (b & 0x7f) + 0x5f reaches 0x80 exactly when
            // b & 0x7f >= 0x21, and b's own high bit rules out bytes >= 0x80 (no carries
            // cross bytes: the sum stays under 0x100).
            let mut m = !(((w & LOW7).wrapping_add(LO * 0x5f)) | w) & HI;
            while m != 0 {
                let j = i + (m.trailing_zeros() / 8) as usize;
                m &= m - 1;
                if at(j)? {
                    break 'line j;
                }
            }
            i += 8;
        } else {
            // The last few bytes buffered, one at a time.
            let Some(&b) = avail.get(i) else {
                return need_line(avail);
            };
            if b <= b' ' && at(i)? {
                break i;
            }
            i += 1;
        }
    };
    let line_end = if avail[nl - 1] == b'\r' { nl - 1 } else { nl };
    let line = &avail[..line_end];
    let after = nl + 1;
    let (subject, sid, reply, size) = match (hmsg, n) {
        (false, 3) => (args[0], args[1], None, args[2]),
        (false, 4) => (args[0], args[1], Some(args[2]), args[3]),
        (true, 4) => (args[0], args[1], None, args[3]),
        (true, 5) => (args[0], args[1], Some(args[2]), args[4]),
        _ => return Err(proto_err("bad MSG arguments", line)),
    };
    let size = parse_usize(&line[size.0..size.1]).ok_or_else(|| proto_err("bad MSG size", line))?;
    let total = after + size + 2;
    if avail.len() < total {
        return Ok(Scan::Need(Some(total)));
    }
    Ok(Scan::Msg {
        subject,
        sid,
        reply,
        payload: (after, after + size),
        total,
    })
}

#[derive(Debug, Clone, Copy)]
enum LineKind {
    Ping,
    Pong,
    Ok,
    Err,
    Info,
}

/// What [`Parser::scan`] found, as offsets from the start of the unconsumed bytes.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Incomplete; `Some(total)` when a MSG frame of `total` bytes is under way.
    Need(Option<usize>),
    /// An empty line of this length.
    Blank(usize),
    Line {
        kind: LineKind,
        rest: (usize, usize),
        len: usize,
    },
    Msg {
        subject: (usize, usize),
        sid: (usize, usize),
        reply: Option<(usize, usize)>,
        payload: (usize, usize),
        total: usize,
    },
}

fn proto_err(what: &str, line: &[u8]) -> Error {
    let shown: String = String::from_utf8_lossy(&line[..line.len().min(120)]).into();
    Error::Protocol(format!("{what}: {shown:?}"))
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let b = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |i| i + 1);
    &s[a..b]
}

/// Parses an ASCII decimal, rejecting empty input and overflow.
pub fn parse_usize(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as usize)
    })
}

/// Reads the 8-byte little-endian timestamp at the start of a payload, if it has one.
#[inline]
pub fn payload_stamp(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// The `CONNECT` line tern-bench sends: no verbose acks, no echo suppression, no headers.
pub fn connect_line(name: &str) -> Vec<u8> {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":{},\
         \"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"echo\":true}}\r\nPING\r\n",
        serde_json::Value::String(name.to_string()),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// A buffer of `count` identical `PUB` frames, plus where each payload starts so a timestamp
/// can be stamped into it before each write.
pub struct PubBatch {
    /// The frames back to back.
    pub bytes: Vec<u8>,
    /// Length of one frame.
    pub frame_len: usize,
    /// Offset of each frame's payload inside `bytes`.
    pub payload_offsets: Vec<usize>,
    /// Payload size of every frame.
    pub size: usize,
}

impl PubBatch {
    /// Builds `count` frames `PUB subject [reply] size\r\n<payload>\r\n`.
    pub fn new(subject: &str, reply: Option<&str>, size: usize, count: usize) -> Self {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {size}\r\n"),
            None => format!("PUB {subject} {size}\r\n"),
        };
        let frame_len = head.len() + size + 2;
        let mut bytes = Vec::with_capacity(frame_len * count);
        let mut payload_offsets = Vec::with_capacity(count);
        for _ in 0..count {
            bytes.extend_from_slice(head.as_bytes());
            payload_offsets.push(bytes.len());
            bytes.extend((0..size).map(|i| b'a' + (i % 26) as u8));
            bytes.extend_from_slice(b"\r\n");
        }
        PubBatch {
            bytes,
            frame_len,
            payload_offsets,
            size,
        }
    }

    /// Frames in the batch.
    pub fn count(&self) -> usize {
        self.payload_offsets.len()
    }

    /// Writes `stamp` into the first `n` payloads (no-op for payloads under 8 bytes).
    #[inline]
    pub fn stamp(&mut self, n: usize, stamp: u64) {
        if self.size < 8 {
            return;
        }
        let s = stamp.to_le_bytes();
        for &o in &self.payload_offsets[..n] {
            self.bytes[o..o + 8].copy_from_slice(&s);
        }
    }

    /// Writes the numbers `first`, `first + 1`, … (modulo `modulo`), zero-padded to `width`
    /// digits, at byte `at` of each of the first `n` frames: the last token of a subject
    /// that changes from message to message (`--subjects`).
    pub fn number(&mut self, n: usize, at: usize, width: usize, first: u64, modulo: u64) {
        for j in 0..n {
            let mut k = (first + j as u64) % modulo;
            let start = j * self.frame_len + at;
            for d in self.bytes[start..start + width].iter_mut().rev() {
                *d = b'0' + (k % 10) as u8;
                k /= 10;
            }
        }
    }

    /// Writes `stamp` into frame `i` only.
    #[inline]
    pub fn stamp_one(&mut self, i: usize, stamp: u64) {
        if self.size >= 8 {
            let o = self.payload_offsets[i];
            self.bytes[o..o + 8].copy_from_slice(&stamp.to_le_bytes());
        }
    }

    /// The first `n` frames.
    pub fn frames(&self, n: usize) -> &[u8] {
        &self.bytes[..n * self.frame_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(f: Frame) -> String {
        match f {
            Frame::Msg {
                subject,
                sid,
                reply,
                payload,
            } => format!(
                "MSG {} {} {:?} {}",
                String::from_utf8_lossy(subject),
                String::from_utf8_lossy(sid),
                reply.map(|r| String::from_utf8_lossy(r).into_owned()),
                String::from_utf8_lossy(payload)
            ),
            other => format!("{other:?}"),
        }
    }

    fn collect(p: &mut Parser, out: &mut Vec<String>) {
        while let Some(f) = p.next_frame().unwrap() {
            out.push(describe(f));
        }
    }

    fn collect_one(p: &mut Parser, out: &mut Vec<String>) {
        if let Some(f) = p.next_frame().unwrap() {
            out.push(describe(f));
        }
    }

    #[test]
    fn parses_frames_split_at_every_byte() {
        let wire = b"INFO {\"a\":1}\r\nMSG foo.bar 1 5\r\nhello\r\nPING\r\n\
                     MSG x 22 _INBOX.1 0\r\n\r\nHMSG h 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n\
                     +OK\r\n-ERR 'Slow Consumer'\r\nPONG\r\n\
                     MSG  tab.subj\t7   3\r\nabc\r\nMSG\tt 8 2\r\nhi\r\n";
        let mut whole = Vec::new();
        let mut p = Parser::new(0);
        p.feed(wire);
        collect(&mut p, &mut whole);
        assert_eq!(whole.len(), 10, "{whole:?}");
        assert_eq!(whole[1], "MSG foo.bar 1 None hello");
        assert_eq!(whole[3], "MSG x 22 Some(\"_INBOX.1\") ");
        assert_eq!(whole[4], "MSG h 3 None NATS/1.0\r\n\r\nhi");
        assert_eq!(
            whole[6],
            "Err([39, 83, 108, 111, 119, 32, 67, 111, 110, 115, 117, 109, 101, 114, 39])"
        );
        // Runs of spaces and tabs separate arguments as one space does.
        assert_eq!(whole[8], "MSG tab.subj 7 None abc");
        assert_eq!(whole[9], "MSG t 8 None hi");
        for chunk in 1..wire.len() {
            let mut p = Parser::new(0);
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                p.feed(c);
                collect(&mut p, &mut got);
            }
            assert_eq!(got, whole, "chunk size {chunk}");
            assert_eq!(p.pending(), 0);
        }
    }

    /// Frames that repeat the last MSG line are taken in a run, payload by payload; a
    /// different line, a different size or a frame not all there yet ends the run, and
    /// the frames after it parse as before.
    #[test]
    fn repeated_lines_are_taken_in_a_run() {
        let mut p = Parser::new(0);
        p.feed(b"MSG s 1 3\r\nabc\r\nMSG s 1 3\r\ndef\r\nMSG s 1 3\r\nghi\r\n");
        p.feed(b"MSG s 2 3\r\njkl\r\nMSG s 1 3\r\nmn");
        let mut seen = Vec::new();
        assert_eq!(
            p.take_repeats(3, |b| seen.push(b.to_vec())),
            0,
            "no line yet"
        );
        let mut first = Vec::new();
        collect_one(&mut p, &mut first);
        assert_eq!(first, ["MSG s 1 None abc"]);
        assert_eq!(
            p.take_repeats(4, |b| seen.push(b.to_vec())),
            0,
            "another size"
        );
        assert_eq!(p.take_repeats(3, |b| seen.push(b.to_vec())), 2);
        assert_eq!(seen, [b"def".to_vec(), b"ghi".to_vec()]);
        let mut rest = Vec::new();
        collect(&mut p, &mut rest);
        assert_eq!(rest, ["MSG s 2 None jkl"]);
        // The next repeat of `MSG s 2 3` is not all there.
        assert_eq!(p.take_repeats(3, |b| seen.push(b.to_vec())), 0);
        p.feed(b"o\r\n");
        collect(&mut p, &mut rest);
        assert_eq!(rest[1], "MSG s 1 None mno");
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn large_payload_grows_buffer() {
        let payload = vec![b'z'; 200_000];
        let mut wire = b"MSG big 1 200000\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        let mut p = Parser::new(0);
        let mut n = 0;
        for c in wire.chunks(7000) {
            p.feed(c);
            while let Some(Frame::Msg { payload: got, .. }) = p.next_frame().unwrap() {
                assert_eq!(got, &payload[..]);
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn rejects_garbage() {
        let mut p = Parser::new(0);
        p.feed(b"MSG a b\r\n");
        assert!(p.next_frame().is_err());
        let mut p = Parser::new(0);
        p.feed(b"BOGUS\r\n");
        assert!(p.next_frame().is_err());
        let mut p = Parser::new(0);
        p.feed(b"MSG a 1 12x\r\n");
        assert!(p.next_frame().is_err());
    }

    #[test]
    fn pub_batch_stamps_payloads() {
        let mut b = PubBatch::new("s", None, 16, 3);
        assert_eq!(b.frame_len, "PUB s 16\r\n".len() + 18);
        b.stamp(2, 0x0102030405060708);
        let mut p = Parser::new(0);
        // Turn the PUB frames into MSG frames to read them back through the parser.
        let text = String::from_utf8_lossy(b.frames(3)).replace("PUB s 16", "MSG s 1 16");
        p.feed(text.as_bytes());
        let mut stamps = Vec::new();
        while let Some(Frame::Msg { payload, .. }) = p.next_frame().unwrap() {
            stamps.push(payload_stamp(payload));
        }
        assert_eq!(stamps[0], Some(0x0102030405060708));
        assert_eq!(stamps[1], Some(0x0102030405060708));
        assert_ne!(stamps[2], Some(0x0102030405060708));
    }

    #[test]
    fn pub_batch_numbers_subjects() {
        let mut b = PubBatch::new("s.000", None, 1, 4);
        b.number(3, "PUB s.".len(), 3, 998, 1000);
        let text = String::from_utf8_lossy(b.frames(4)).into_owned();
        let subjects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("PUB "))
            .collect();
        assert_eq!(subjects, ["s.998 1", "s.999 1", "s.000 1", "s.000 1"]);
    }
}
