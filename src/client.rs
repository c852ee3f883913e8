//! The client state machine and encoder (sans-IO): what a connection has agreed to in
//! `CONNECT`, and the exact bytes the server writes to it.
//!
//! It owns the `CONNECT` options with nats-server's defaults and checks, the `MSG`/`HMSG`
//! encoder, and the `-ERR` texts. It must not touch sockets, shards or the subject index;
//! `server` drives it.

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use std::fmt;

/// The options a client sends in `CONNECT`, with nats-server's defaults for missing fields.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConnectOpts {
    pub verbose: bool,
    pub pedantic: bool,
    pub echo: bool,
    pub headers: bool,
    pub no_responders: bool,
    pub protocol: i64,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub tls_required: bool,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub auth_token: Option<String>,
    pub account: Option<String>,
    pub new_account: Option<bool>,
    pub nkey: Option<String>,
    pub sig: Option<String>,
    pub jwt: Option<String>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            protocol: 0,
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            tls_required: false,
            user: None,
            pass: None,
            auth_token: None,
            account: None,
            new_account: None,
            nkey: None,
            sig: None,
            jwt: None,
        }
    }
}

/// Why a `CONNECT` is refused. Each variant says how nats-server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The JSON does not parse: close without an `-ERR`.
    BadJson(String),
    /// `protocol` is neither 0 nor 1: `-ERR 'invalid client protocol'`, close.
    InvalidProtocol,
    /// `no_responders` without `headers`: `-ERR 'no responders requires headers support'`, close.
    NoRespondersNeedsHeaders,
    /// Deprecated `account`/`new_account` fields: `-ERR 'Authorization Violation'`, close.
    AuthorizationViolation,
}

impl ConnectError {
    /// The `-ERR` text sent before the close, if any.
    pub fn err_text(&self) -> Option<&'static str> {
        match self {
            ConnectError::BadJson(_) => None,
            ConnectError::InvalidProtocol => Some("invalid client protocol"),
            ConnectError::NoRespondersNeedsHeaders => {
                Some("no responders requires headers support")
            }
            ConnectError::AuthorizationViolation => Some("Authorization Violation"),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::BadJson(e) => write!(f, "malformed CONNECT: {e}"),
            other => f.write_str(other.err_text().unwrap_or("connect error")),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectOpts {
    /// Parses and checks a `CONNECT` argument.
    pub fn parse(json: &[u8]) -> Result<ConnectOpts, ConnectError> {
        let bad = |e: serde_json::Error| ConnectError::BadJson(e.to_string());
        // Go's encoding/json leaves a field at its default when the JSON says `null`;
        // clients (async-nats among them) send nulls for unset options.
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json).map_err(bad)?;
        map.retain(|_, v| !v.is_null());
        let opts: ConnectOpts =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(bad)?;
        if opts.account.is_some() || opts.new_account.is_some() {
            return Err(ConnectError::AuthorizationViolation);
        }
        if !(0..=1).contains(&opts.protocol) {
            return Err(ConnectError::InvalidProtocol);
        }
        if opts.no_responders && !opts.headers {
            return Err(ConnectError::NoRespondersNeedsHeaders);
        }
        Ok(opts)
    }
}

/// A `CONNECT` argument with its secrets (`pass`, `auth_token`, `sig`, `jwt`) replaced by
/// `[REDACTED]`, for trace logs (nats-server redacts the same way).
pub fn redact_connect(json: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(mut m) => {
            for k in ["pass", "auth_token", "sig", "jwt"] {
                if let Some(v) = m.get_mut(k) {
                    *v = serde_json::Value::String("[REDACTED]".into());
                }
            }
            serde_json::Value::Object(m).to_string()
        }
        Err(_) => "[unparsable CONNECT]".to_string(),
    }
}

/// `+OK\r\n`.
pub const OK: &[u8] = b"+OK\r\n";
/// `PING\r\n`.
pub const PING: &[u8] = b"PING\r\n";
/// `PONG\r\n`.
pub const PONG: &[u8] = b"PONG\r\n";

/// Appends `-ERR '<text>'\r\n`.
pub fn write_err(out: &mut BytesMut, text: &str) {
    out.reserve(text.len() + 9);
    out.put_slice(b"-ERR '");
    out.put_slice(text.as_bytes());
    out.put_slice(b"'\r\n");
}

/// Appends one delivery. `msg` is the header block (`hdr_len` bytes) followed by the payload.
/// With `headers` the delivery is `HMSG`; otherwise the header block is stripped and it is `MSG`.
pub fn write_msg(
    out: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    hdr_len: usize,
    msg: &[u8],
    headers: bool,
) {
    let mut num = itoa::Buffer::new();
    let with_hdr = headers && hdr_len > 0;
    let body = if with_hdr || hdr_len == 0 {
        msg
    } else {
        &msg[hdr_len.min(msg.len())..]
    };
    out.reserve(subject.len() + sid.len() + reply.map_or(0, |r| r.len()) + body.len() + 40);
    out.put_slice(if with_hdr { b"HMSG " } else { b"MSG " });
    out.put_slice(subject);
    out.put_u8(b' ');
    out.put_slice(sid);
    out.put_u8(b' ');
    if let Some(r) = reply {
        out.put_slice(r);
        out.put_u8(b' ');
    }
    if with_hdr {
        out.put_slice(num.format(hdr_len).as_bytes());
        out.put_u8(b' ');
    }
    out.put_slice(num.format(body.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// The longest `HMSG <subject> ` plus tails that [`Outgoing`] formats in place; a longer
/// subject or reply takes [`write_msg`].
const LINE_MAX: usize = 384;

/// Where the parts of a message's `MSG`/`HMSG` line that are the same for every subscriber
/// lie in [`Outgoing`]'s line buffer: the verb and subject before the sid, and the reply and
/// sizes after it.
#[derive(Clone, Copy)]
struct Spans {
    /// `HMSG <subject> ` is `buf[..head]`; `MSG <subject> ` is `buf[1..head]`.
    head: usize,
    /// ` [reply ]<size>\r\n` for `MSG` is `buf[head..msg_end]`.
    msg_end: usize,
    /// ` [reply ]<hdr_len> <total>\r\n` for `HMSG` is `buf[msg_end..hmsg_end]`.
    hmsg_end: usize,
}

/// One message as its subscribers get it. The line's parts that do not depend on the
/// subscriber are formatted on the first delivery and copied for each one after it, so a
/// delivery costs four copies (head, sid, tail, body) rather than formatting the line again.
pub struct Outgoing<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    /// Size of the header block at the start of `msg` (0 for none).
    pub hdr_len: usize,
    /// The header block followed by the payload.
    pub msg: &'a [u8],
    /// `None` until the first delivery formats the line; then `Some(None)` when it does not
    /// fit in `buf` (the delivery takes [`write_msg`]).
    spans: std::cell::Cell<Option<Option<Spans>>>,
    /// The line, written in place once: neither zeroed nor moved, where building a line
    /// value and storing it cost a 384-byte fill and two ~400-byte copies per message
    /// (a tenth of a pub/sub 128 B message's time).
    buf: std::cell::UnsafeCell<std::mem::MaybeUninit<[u8; LINE_MAX]>>,
}

impl<'a> Outgoing<'a> {
    /// A message to deliver; nothing is formatted yet.
    pub fn new(subject: &'a [u8], reply: Option<&'a [u8]>, hdr_len: usize, msg: &'a [u8]) -> Self {
        Outgoing {
            subject,
            reply,
            hdr_len,
            msg,
            spans: std::cell::Cell::new(None),
            buf: std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()),
        }
    }

    /// The payload bytes a subscriber with or without `headers` support receives.
    pub fn size_for(&self, headers: bool) -> usize {
        if headers {
            self.msg.len()
        } else {
            self.msg.len() - self.hdr_len.min(self.msg.len())
        }
    }

    /// Writes the line into `buf` (once: `spans` is still `None`, so no slice of `buf` has
    /// been handed out) and says where its parts are; `None` when it does not fit.
    #[inline(always)]
    fn format(&self) -> Option<Spans> {
        let (subject, reply, hdr_len, msg) = (self.subject, self.reply, self.hdr_len, self.msg);
        let reply_len = reply.map_or(0, |r| r.len() + 1);
        if subject.len() + 2 * reply_len + 80 > LINE_MAX {
            return None;
        }
        let base = self.buf.get().cast::<u8>();
        let mut at = 0;
        let mut put = |b: &[u8]| {
            // SAFETY: what is put is at most the 80 bytes of verb, spaces and numbers, the
            // subject and the reply twice, which the check above keeps within `LINE_MAX`;
            // nothing else refers to `buf` while it is written (see above).
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), base.add(at), b.len()) };
            at += b.len();
            at
        };
        put(b"HMSG ");
        put(subject);
        let head = put(b" ");
        let mut tail = |sizes: &[&[u8]]| {
            if let Some(r) = reply {
                put(b" ");
                put(r);
            }
            for size in sizes {
                put(b" ");
                put(size);
            }
            put(b"\r\n")
        };
        let (mut n, mut total) = (itoa::Buffer::new(), itoa::Buffer::new());
        let msg_end = tail(&[n.format(msg.len() - hdr_len.min(msg.len())).as_bytes()]);
        let hmsg_end = match hdr_len {
            0 => msg_end,
            _ => tail(&[
                n.format(hdr_len).as_bytes(),
                total.format(msg.len()).as_bytes(),
            ]),
        };
        Some(Spans {
            head,
            msg_end,
            hmsg_end,
        })
    }

    /// Appends the delivery to subscription `sid`, as [`write_msg`] would.
    #[inline(always)]
    pub fn write(&self, out: &mut Outbound, sid: &[u8], headers: bool) {
        let spans = self.spans.get().unwrap_or_else(|| {
            let s = self.format();
            self.spans.set(Some(s));
            s
        });
        let Some(sp) = spans else {
            let size = self.subject.len() + self.reply.map_or(0, <[u8]>::len) + self.msg.len();
            return write_msg(
                out.tail(size + sid.len() + 64),
                self.subject,
                sid,
                self.reply,
                self.hdr_len,
                self.msg,
                headers,
            );
        };
        // SAFETY: `format` wrote the first `hmsg_end` bytes of `buf`, and nothing writes
        // them again.
        let l = unsafe { std::slice::from_raw_parts(self.buf.get().cast::<u8>(), sp.hmsg_end) };
        let with_hdr = headers && self.hdr_len > 0;
        let (head, tail, body) = if with_hdr {
            (&l[..sp.head], &l[sp.msg_end..], self.msg)
        } else {
            (
                &l[1..sp.head],
                &l[sp.head..sp.msg_end],
                &self.msg[self.hdr_len.min(self.msg.len())..],
            )
        };
        out.put_parts([head, sid, tail, body, b"\r\n"]);
    }
}

/// The "no responders" status a requester gets when nobody is listening.
pub const NO_RESPONDERS_HDR: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// A message (`hdr_len` bytes of header block, then the payload) with one more header
/// line; returns the new header length and the message. A message without headers gets a
/// `NATS/1.0` block of its own.
pub fn add_header(hdr_len: usize, msg: &[u8], name: &[u8], value: &[u8]) -> (usize, Vec<u8>) {
    let line_len = name.len() + 2 + value.len() + 2;
    let mut out = Vec::with_capacity(msg.len() + line_len + 12);
    let hdr_len = hdr_len.min(msg.len());
    // A header block ends with an empty line; the new one goes just before it.
    if hdr_len >= 4 && msg[..hdr_len].ends_with(b"\r\n\r\n") {
        out.extend_from_slice(&msg[..hdr_len - 2]);
    } else {
        out.extend_from_slice(b"NATS/1.0\r\n");
    }
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n\r\n");
    let new_hdr = out.len();
    out.extend_from_slice(&msg[hdr_len..]);
    (new_hdr, out)
}

/// The size an output block is filled to before the next one starts.
pub const BLOCK: usize = 64 * 1024;
/// Free blocks a thread keeps for reuse; beyond them, written blocks go back to the allocator.
const POOL_MAX: usize = 64;

thread_local! {
    /// Written blocks of this thread (one shard), cleared and ready to fill again.
    static POOL: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A cleared block from this thread's pool, or a new one.
pub fn take_block() -> BytesMut {
    POOL.with_borrow_mut(|p| p.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BLOCK))
}

/// Gives a written block back to this thread's pool (blocks that grew past two
/// [`BLOCK`]s for one large message, and any beyond the pool's bound, are freed).
pub fn give_block(mut b: BytesMut) {
    if !(BLOCK..=2 * BLOCK).contains(&b.capacity()) {
        return;
    }
    b.clear();
    POOL.with_borrow_mut(|p| {
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}

/// The output queued for one connection, as nats-server keeps it: a list of blocks of
/// about [`BLOCK`] bytes rather than one buffer. The writer takes the whole list and gives
/// each block back as soon as the socket took it, so what a backlog costs is the bytes
/// queued (rounded up to a block), not twice the largest backlog so far, which is what a
/// growing buffer swapped with a spare one held. Blocks are reused through a per-thread
/// pool, so the steady state allocates nothing, and an idle connection holds no block.
#[derive(Default)]
pub struct Outbound {
    /// Full blocks, oldest first.
    full: std::collections::VecDeque<BytesMut>,
    /// Bytes in `full`.
    sealed: usize,
    /// The block being filled (none allocated while nothing is queued).
    tail: BytesMut,
}

/// Copies `src` to `dst`. Up to 32 bytes (a delivery's line parts: the verb and subject, the
/// sid, the sizes) it copies in place with at most two overlapping loads and stores of one
/// width, where a call to `memcpy` and its size dispatch cost a fan-out delivery about a
/// fifth of its instructions over its four parts.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes that do not overlap `src`.
#[inline(always)]
unsafe fn copy_part(src: &[u8], dst: *mut u8) {
    let (n, s) = (src.len(), src.as_ptr());
    // SAFETY: each arm's width is at most `n` (see `copy_ends`).
    unsafe {
        match n {
            33.. => std::ptr::copy_nonoverlapping(s, dst, n),
            16..=32 => copy_ends::<u128>(s, dst, n),
            8..=15 => copy_ends::<u64>(s, dst, n),
            4..=7 => copy_ends::<u32>(s, dst, n),
            2..=3 => copy_ends::<u16>(s, dst, n),
            1 => *dst = *s,
            0 => {}
        }
    }
}

/// Copies `n` bytes from `s` to `dst` as the first and the last `W`-sized word (overlapping
/// when `n` is under twice the width).
///
/// # Safety
///
/// `size_of::<W>() <= n`, `s` readable and `dst` writable for `n` bytes, not overlapping.
#[inline(always)]
unsafe fn copy_ends<W: Copy>(s: *const u8, dst: *mut u8, n: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    let w = std::mem::size_of::<W>();
    // SAFETY: both words lie within the `n` bytes at `s` and at `dst` (the caller's contract).
    unsafe {
        let (a, b) = (rd(s.cast::<W>()), rd(s.add(n - w).cast::<W>()));
        wr(dst.cast::<W>(), a);
        wr(dst.add(n - w).cast::<W>(), b);
    }
}

impl Outbound {
    /// Queued bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.sealed + self.tail.len()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block to append `additional` bytes to, with room for them: the current one while
    /// they fit in it, otherwise a new one (larger than a block for a larger item).
    #[inline]
    pub fn tail(&mut self, additional: usize) -> &mut BytesMut {
        if self.tail.capacity() - self.tail.len() < additional {
            self.next_block(additional);
        }
        &mut self.tail
    }

    #[cold]
    fn next_block(&mut self, additional: usize) {
        let full = std::mem::replace(&mut self.tail, take_block());
        self.tail.reserve(additional);
        if !full.is_empty() {
            self.sealed += full.len();
            self.full.push_back(full);
        } else if full.capacity() > 0 {
            give_block(full);
        }
    }

    /// Appends `b`.
    pub fn extend_from_slice(&mut self, b: &[u8]) {
        self.tail(b.len()).extend_from_slice(b);
    }

    /// Appends `parts` in order with one room check and one length update, where an
    /// `extend_from_slice` each (a call apiece, not inlined) would check and update per
    /// part: that was most of a fan-out delivery's work.
    #[inline(always)]
    pub fn put_parts<const N: usize>(&mut self, parts: [&[u8]; N]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let out = self.tail(total);
        let room = out.spare_capacity_mut();
        assert!(room.len() >= total);
        let mut dst = room.as_mut_ptr().cast::<u8>();
        for p in parts {
            // SAFETY: `dst` stays within `room`, which holds all `total` bytes (asserted);
            // nothing else can point into a `BytesMut`'s spare room, so no part overlaps it.
            unsafe {
                copy_part(p, dst);
                dst = dst.add(p.len());
            }
        }
        let len = out.len() + total;
        // SAFETY: the `total` bytes after the old length were all written just above.
        unsafe { out.set_len(len) };
    }

    /// Moves everything queued to the back of `batch` (the writer's list).
    pub fn take_into(&mut self, batch: &mut std::collections::VecDeque<BytesMut>) {
        batch.append(&mut self.full);
        self.sealed = 0;
        if !self.tail.is_empty() {
            batch.push_back(std::mem::take(&mut self.tail));
        }
    }

    /// Drops everything queued, giving the blocks back to the pool.
    pub fn clear(&mut self) {
        self.full.drain(..).for_each(give_block);
        self.sealed = 0;
        give_block(std::mem::take(&mut self.tail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_part_copies_every_length_exactly() {
        let src: Vec<u8> = (1..=80).collect();
        for n in 0..=src.len() {
            // Guard bytes on both sides of the destination catch a store out of range.
            let mut dst = vec![0xee_u8; n + 32];
            // SAFETY: `dst[16..16 + n]` is valid for writes and apart from `src`.
            unsafe { copy_part(&src[..n], dst.as_mut_ptr().add(16)) };
            assert_eq!(&dst[16..16 + n], &src[..n], "length {n}");
            assert!(
                dst[..16].iter().all(|&b| b == 0xee),
                "length {n}: wrote before"
            );
            assert!(
                dst[16 + n..].iter().all(|&b| b == 0xee),
                "length {n}: wrote after"
            );
        }
    }

    /// Everything queued in `q`, in order, as one buffer.
    fn drain(q: &mut Outbound) -> Vec<u8> {
        let mut batch = std::collections::VecDeque::new();
        q.take_into(&mut batch);
        assert!(q.is_empty());
        batch.into_iter().flatten().collect()
    }

    /// Output fills one block after another: none is allocated while nothing is queued, no
    /// item is split between two blocks, an item larger than a block gets a block of its
    /// own, and the bytes come out in order.
    #[test]
    fn outbound_fills_blocks_in_order() {
        let mut q = Outbound::default();
        assert!(q.is_empty());
        assert_eq!(q.tail.capacity(), 0);
        let item = [7u8; 1000];
        let mut want = Vec::new();
        for i in 0..200u8 {
            let n = if i == 100 {
                3 * BLOCK
            } else {
                1 + i as usize * 3
            };
            let b: Vec<u8> = std::iter::repeat_n(i, n).collect();
            q.extend_from_slice(&b);
            want.extend_from_slice(&b);
            q.extend_from_slice(&item);
            want.extend_from_slice(&item);
            assert_eq!(q.len(), want.len());
        }
        let mut batch = std::collections::VecDeque::new();
        q.take_into(&mut batch);
        assert!(batch.len() > 4);
        for b in &batch {
            assert!(b.len() <= BLOCK || b.len() >= 3 * BLOCK, "{}", b.len());
        }
        assert_eq!(batch.iter().flatten().copied().collect::<Vec<u8>>(), want);
        assert!(q.is_empty());
        assert_eq!(q.tail.capacity(), 0);
    }

    /// Written blocks are reused: after a block goes back to the pool, the next queue that
    /// needs one gets that allocation rather than a new one.
    #[test]
    fn outbound_reuses_written_blocks() {
        let mut q = Outbound::default();
        q.extend_from_slice(b"PONG\r\n");
        let mut batch = std::collections::VecDeque::new();
        q.take_into(&mut batch);
        let block = batch.pop_front().unwrap();
        let ptr = block.as_ptr();
        give_block(block);
        q.extend_from_slice(b"PING\r\n");
        assert_eq!(q.tail.as_ptr(), ptr);
        assert_eq!(drain(&mut q), b"PING\r\n");
    }

    /// The shared-line encoder writes exactly what the one-off encoder does, for every
    /// shape of message and subscriber, and falls back to it for a line too long to hold.
    #[test]
    fn outgoing_matches_write_msg() {
        let long = "s".repeat(LINE_MAX);
        let hmsg = b"NATS/1.0\r\nA: b\r\n\r\nhello";
        for subject in ["foo.bar", long.as_str()] {
            for reply in [None, Some(&b"_INBOX.1"[..])] {
                for (hdr_len, msg) in [(0, &b"hello"[..]), (hmsg.len() - 5, &hmsg[..]), (0, b"")] {
                    let o = Outgoing::new(subject.as_bytes(), reply, hdr_len, msg);
                    for headers in [false, true] {
                        for sid in [&b"1"[..], b"12345"] {
                            let (mut q, mut b) = (Outbound::default(), BytesMut::new());
                            o.write(&mut q, sid, headers);
                            let a = drain(&mut q);
                            write_msg(
                                &mut b,
                                subject.as_bytes(),
                                sid,
                                reply,
                                hdr_len,
                                msg,
                                headers,
                            );
                            assert_eq!(a, b);
                            assert_eq!(
                                o.size_for(headers) + 2,
                                a.len() - a.iter().position(|&c| c == b'\n').unwrap() - 1
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn add_header_to_plain_and_header_messages() {
        let (h, m) = add_header(0, b"hi", b"K", b"v");
        assert_eq!(&m[..], b"NATS/1.0\r\nK: v\r\n\r\nhi");
        assert_eq!(h, m.len() - 2);
        let orig = b"NATS/1.0\r\nA: b\r\n\r\nhi";
        let (h, m) = add_header(orig.len() - 2, orig, b"K", b"v");
        assert_eq!(&m[..], b"NATS/1.0\r\nA: b\r\nK: v\r\n\r\nhi");
        assert_eq!(h, m.len() - 2);
    }

    #[test]
    fn connect_defaults_and_checks() {
        let o = ConnectOpts::parse(b"{}").unwrap();
        assert!(o.verbose && o.pedantic && o.echo && !o.headers);
        let o = ConnectOpts::parse(br#"{"verbose":false,"headers":true,"lang":"rust"}"#).unwrap();
        assert!(!o.verbose && o.headers && o.pedantic);
        assert_eq!(
            ConnectOpts::parse(br#"{"protocol":2}"#),
            Err(ConnectError::InvalidProtocol)
        );
        assert_eq!(
            ConnectOpts::parse(br#"{"no_responders":true}"#),
            Err(ConnectError::NoRespondersNeedsHeaders)
        );
        assert_eq!(
            ConnectOpts::parse(br#"{"account":"A"}"#),
            Err(ConnectError::AuthorizationViolation)
        );
        assert!(matches!(
            ConnectOpts::parse(b"{nope"),
            Err(ConnectError::BadJson(_))
        ));
        // Nulls keep the default.
        let o = ConnectOpts::parse(br#"{"name":null,"verbose":null,"user":null}"#).unwrap();
        assert!(o.verbose && o.name.is_empty());
        // Unknown fields are ignored, as Go's encoding/json does.
        assert!(ConnectOpts::parse(br#"{"sig":"x","jwt":"y","whatever":[1]}"#).is_ok());
    }

    #[test]
    fn encodes_msg_and_hmsg() {
        let mut out = BytesMut::new();
        write_msg(&mut out, b"foo", b"1", Some(b"bar"), 0, b"hello", false);
        assert_eq!(&out[..], b"MSG foo 1 bar 5\r\nhello\r\n");
        out.clear();
        write_msg(
            &mut out,
            b"foo",
            b"2",
            None,
            12,
            b"NATS/1.0\r\n\r\nhi",
            true,
        );
        assert_eq!(&out[..], b"HMSG foo 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        out.clear();
        write_msg(
            &mut out,
            b"foo",
            b"2",
            None,
            12,
            b"NATS/1.0\r\n\r\nhi",
            false,
        );
        assert_eq!(&out[..], b"MSG foo 2 2\r\nhi\r\n");
        out.clear();
        write_err(&mut out, "Invalid Subject");
        assert_eq!(&out[..], b"-ERR 'Invalid Subject'\r\n");
    }
}
