//! Subject validation and the subscription index ("sublist").
//!
//! This module owns:
//!
//! * **Subject validation** with exactly the nats-server rules: subjects are
//!   byte strings of `.`-separated, non-empty tokens; ASCII whitespace
//!   (space, `\t`, `\n`, `\r`, `\x0c`) is illegal anywhere; `*` (one token)
//!   and `>` (one or more trailing tokens) are wildcards only when they are a
//!   whole token, and `>` must be the last token.
//! * **The subject index** [`Sublist`]: a token trie modelled on
//!   nats-server's `sublist.go`. Each level has literal children in a hash
//!   map plus optional `*` and `>` children; each node stores its plain
//!   subscriptions and its queue subscriptions grouped by queue name.
//!   Removal prunes empty nodes, so memory stays bounded under churn.
//! * **The bounded match cache**: at most [`CACHE_MAX`] results, keyed by
//!   subject bytes, invalidated lazily by a generation counter that every
//!   successful insert/remove bumps. A cache hit performs no allocation (it
//!   is a hash lookup plus an `Rc` refcount bump). A subject enters the cache
//!   only at its second miss in a while (`Uncached::admit`); one that is not
//!   let in is matched into a result reused in place, without allocating.
//!
//! It must not do I/O, spawn threads or take locks: it is sans-IO and
//! single-threaded (each server shard owns its own index), which is why
//! results are shared through [`Rc`].
//!
//! Note on hashing: the index uses a small hand-written Fx-style hasher
//! because subject tokens are short. It is fast but not HashDoS resistant.

use hashbrown::HashTable;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Maximum number of entries kept in the match cache (nats-server's
/// `slCacheMax`).
pub const CACHE_MAX: usize = 1024;

/// Number of entries the cache is reduced to when it overflows with fresh
/// entries (nats-server's `slCacheSweep`).
const CACHE_SWEEP: usize = 256;

/// Bits of the cache's doorkeeper (see [`Uncached::admit`]): 8192, a power of two.
const SEEN_BITS: usize = 1 << 13;

/// Subjects the doorkeeper notes before it forgets them all: the cache's size, so that a
/// subject that comes back within about as many other misses as the cache holds is cached.
const SEEN_WINDOW: u32 = CACHE_MAX as u32;

/// Token separator.
const TSEP: u8 = b'.';

/// Errors returned by [`Sublist`] mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SublistError {
    /// The subject is not a valid subscription subject (empty, empty token,
    /// whitespace, or `>` not in last position). See [`is_valid_subject`].
    InvalidSubject,
    /// The queue group name is empty or contains whitespace.
    InvalidQueue,
}

impl fmt::Display for SublistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SublistError::InvalidSubject => f.write_str("invalid subject"),
            SublistError::InvalidQueue => f.write_str("invalid queue group name"),
        }
    }
}

impl std::error::Error for SublistError {}

// ---------------------------------------------------------------------------
// Subject validation
// ---------------------------------------------------------------------------

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// Returns true if `s` is a valid subscription subject (wildcards allowed).
///
/// The empty subject, empty tokens (leading, trailing or double `.`),
/// whitespace bytes, and a `>` token that is not the last token are invalid.
/// `foo*` and `foo>` are ordinary literal tokens.
pub fn is_valid_subject(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut saw_fwc = false;
    for tok in s.split(|&b| b == TSEP) {
        if saw_fwc || tok.is_empty() || tok.iter().any(|&b| is_ws(b)) {
            return false;
        }
        if tok == b">" {
            saw_fwc = true;
        }
    }
    true
}

/// Returns true if `s` is a valid subject containing no wildcard token
/// (i.e. usable as a publish subject).
pub fn is_valid_literal_subject(s: &[u8]) -> bool {
    is_valid_subject(s) && s.split(|&b| b == TSEP).all(|t| t != b"*" && t != b">")
}

/// `a == b` for the last-subject check of every lookup and the tokens of a walk: 1 to 16
/// bytes are compared as two overlapping words (or bytes) each, where the slice
/// comparison's `memcmp` call and its size dispatch cost about as much as the rest of a
/// cached lookup.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let w8 = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let w4 = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        _ => a == b,
    }
}

/// Returns true if `s` is non-empty and has no empty token. This is the only
/// check [`Sublist::matches`] applies to a published subject.
///
/// A word at a time (every walk of the index checks its subject first): no separator
/// first or last, and no two in a row, found in 8-byte windows that overlap by a byte.
#[inline]
fn has_no_empty_tokens(s: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (s.first(), s.last()) else {
        return false;
    };
    if first == TSEP || last == TSEP {
        return false;
    }
    let no_pair = |w: [u8; 8]| {
        let m = crate::swar::bytes_equal(u64::from_le_bytes(w), TSEP);
        m & (m >> 8) == 0
    };
    let n = s.len();
    if n < 8 {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(s);
        return no_pair(w);
    }
    let word = |at: usize| -> [u8; 8] { s[at..at + 8].try_into().expect("8 bytes") };
    (0..n - 8).step_by(7).all(|at| no_pair(word(at))) && no_pair(word(n - 8))
}

/// Does every subject that subscription `sub` can match also match `filter`?
pub fn subject_is_subset(filter: &[u8], sub: &[u8]) -> bool {
    let mut f = filter.split(|&b| b == b'.');
    let mut s = sub.split(|&b| b == b'.');
    loop {
        match (f.next(), s.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(t)) if t != b">" => {}
            (Some(ft), Some(st)) if ft == st && ft != b"*" && ft != b">" => {}
            _ => return false,
        }
    }
}

/// Naive reference matcher: does subscription `filter` match the published
/// `subject`?
///
/// Tokens of `subject` are taken literally, so a published `*` or `>` token
/// is matched only by a `*` or `>` filter token (a `*`/`>` filter token is
/// always a wildcard). Returns
/// false if `filter` is not a valid subject or `subject` is empty or has an
/// empty token, mirroring [`Sublist::matches`].
pub fn subject_matches(filter: &[u8], subject: &[u8]) -> bool {
    if !is_valid_subject(filter) || !has_no_empty_tokens(subject) {
        return false;
    }
    let mut f = filter.split(|&b| b == TSEP);
    let mut s = subject.split(|&b| b == TSEP);
    loop {
        match (f.next(), s.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(ft), Some(st)) => {
                if ft != st {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Splits off the first token: returns `(token, rest_after_separator)`;
/// `rest` is `None` when `s` holds the last token.
#[inline]
fn split_token(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == TSEP) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

// ---------------------------------------------------------------------------
// Hasher
// ---------------------------------------------------------------------------

/// Small Fx-style hasher (as used in rustc) for short byte-string keys.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = self.hash.wrapping_add(w).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut b = [0u8; 8];
            b[..rem.len()].copy_from_slice(rem);
            // Mix in the remainder length so "a\0" and "a" differ.
            self.add(u64::from_le_bytes(b) ^ ((rem.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Rotate so the well-mixed high bits reach the bucket-index bits.
        self.hash.rotate_left(26)
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// Result of [`Sublist::matches`].
#[derive(Debug, Clone, PartialEq)]
pub struct SublistResult<T> {
    /// Plain (non-queue) subscriptions that match, in no particular order.
    pub psubs: Vec<T>,
    /// One entry per distinct matching queue group name, with all matching
    /// members of that group (from literal, `*` and `>` paths merged).
    pub qsubs: Vec<(Box<[u8]>, Vec<T>)>,
}

impl<T> SublistResult<T> {
    /// True if nothing matched.
    pub fn is_empty(&self) -> bool {
        self.psubs.is_empty() && self.qsubs.is_empty()
    }
}

impl<T> Default for SublistResult<T> {
    fn default() -> Self {
        SublistResult {
            psubs: Vec::new(),
            qsubs: Vec::new(),
        }
    }
}

impl<T: Clone> SublistResult<T> {
    fn add_node(&mut self, n: &Node<T>) {
        self.psubs.extend_from_slice(&n.psubs);
        for (name, members) in &n.qsubs {
            match self.qsubs.iter_mut().find(|(q, _)| **q == **name) {
                Some((_, acc)) => acc.extend_from_slice(members),
                None => self.qsubs.push((name.clone(), members.clone())),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Trie
// ---------------------------------------------------------------------------

struct Node<T> {
    next: Option<Box<Level<T>>>,
    psubs: Vec<T>,
    qsubs: Vec<(Box<[u8]>, Vec<T>)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            psubs: Vec::new(),
            qsubs: Vec::new(),
        }
    }
}

impl<T: PartialEq> Node<T> {
    /// True if the node has no subscriptions and no children (child levels
    /// are pruned eagerly, so `next` is `None` when empty).
    fn is_empty(&self) -> bool {
        self.psubs.is_empty() && self.qsubs.is_empty() && self.next.is_none()
    }

    fn remove_sub(&mut self, queue: Option<&[u8]>, value: &T) -> Option<T> {
        match queue {
            None => {
                let i = self.psubs.iter().position(|v| v == value)?;
                Some(self.psubs.swap_remove(i))
            }
            Some(q) => {
                let gi = self.qsubs.iter().position(|(n, _)| **n == *q)?;
                let members = &mut self.qsubs[gi].1;
                let i = members.iter().position(|v| v == value)?;
                let taken = members.swap_remove(i);
                if members.is_empty() {
                    self.qsubs.swap_remove(gi);
                }
                Some(taken)
            }
        }
    }
}

struct Level<T> {
    nodes: Children<T>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            nodes: Children::Few(Vec::new()),
            pwc: None,
            fwc: None,
        }
    }
}

/// Most literal children a level keeps in a list before it moves them into a hash map.
const FEW: usize = 8;

/// A level's literal children. Below the first tokens most levels have one child
/// (`orders.<id>.created`): a list whose first allocation holds one entry costs 72 bytes,
/// where a hash map's smallest table cost ~300, which with a million subscriptions was most
/// of the index's memory. Past [`FEW`] children the lookup is a hash map's.
enum Children<T> {
    Few(Vec<(Box<[u8]>, Node<T>)>),
    Many(FxMap<Box<[u8]>, Node<T>>),
}

impl<T> Children<T> {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }

    /// The child for `tok`: a few children inline in the walk, a map's out of line.
    #[inline(always)]
    fn get(&self, tok: &[u8]) -> Option<&Node<T>> {
        match self {
            Children::Few(v) => {
                for (k, n) in v {
                    if same_bytes(k, tok) {
                        return Some(n);
                    }
                }
                None
            }
            Children::Many(m) => Self::get_many(m, tok),
        }
    }

    #[inline(never)]
    fn get_many<'a>(m: &'a FxMap<Box<[u8]>, Node<T>>, tok: &[u8]) -> Option<&'a Node<T>> {
        m.get(tok)
    }

    fn get_mut(&mut self, tok: &[u8]) -> Option<&mut Node<T>> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(k, _)| **k == *tok).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(tok),
        }
    }

    /// The child for `tok`, made empty if there is none.
    fn get_or_insert(&mut self, tok: &[u8]) -> &mut Node<T> {
        if let Children::Few(v) = self {
            if v.len() >= FEW && !v.iter().any(|(k, _)| **k == *tok) {
                *self = Children::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.iter().position(|(k, _)| **k == *tok) {
                    Some(i) => i,
                    None => {
                        push_sparing(v, (Box::from(tok), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Children::Many(m) => m.entry(Box::from(tok)).or_default(),
        }
    }

    fn remove(&mut self, tok: &[u8]) {
        match self {
            Children::Few(v) => {
                if let Some(i) = v.iter().position(|(k, _)| **k == *tok) {
                    v.swap_remove(i);
                }
            }
            Children::Many(m) => {
                m.remove(tok);
            }
        }
    }

    #[cfg(test)]
    fn values(&self) -> Box<dyn Iterator<Item = &Node<T>> + '_> {
        match self {
            Children::Few(v) => Box::new(v.iter().map(|(_, n)| n)),
            Children::Many(m) => Box::new(m.values()),
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }

    /// Calls `f` on this level and every level below it.
    #[cfg(test)]
    fn visit(&self, f: &mut dyn FnMut(&Level<T>)) {
        f(self);
        let nodes = self
            .nodes
            .values()
            .chain(self.pwc.as_deref())
            .chain(self.fwc.as_deref());
        for l in nodes.filter_map(|n| n.next.as_deref()) {
            l.visit(f);
        }
    }
}

/// Walks the trie for a published subject (`rest` must have no empty
/// tokens), adding all matching nodes to `acc`. Mirrors nats-server's
/// `matchLevel`. A published token that is itself `*` or `>` only looks up
/// the wildcard children (literal children never have those keys).
fn match_level<T: Clone>(mut level: &Level<T>, mut rest: &[u8], acc: &mut SublistResult<T>) {
    loop {
        let (tok, tail) = split_token(rest);
        if let Some(f) = level.fwc.as_deref() {
            acc.add_node(f);
        }
        let pwc = level.pwc.as_deref();
        let lit = if tok == b"*" || tok == b">" {
            None
        } else {
            level.nodes.get(tok)
        };
        match tail {
            None => {
                if let Some(n) = lit {
                    acc.add_node(n);
                }
                if let Some(p) = pwc {
                    acc.add_node(p);
                }
                return;
            }
            Some(t) => {
                if let Some(next) = pwc.and_then(|p| p.next.as_deref()) {
                    match_level(next, t, acc);
                }
                match lit.and_then(|n| n.next.as_deref()) {
                    Some(l) => {
                        level = l;
                        rest = t;
                    }
                    None => return,
                }
            }
        }
    }
}

/// Like [`match_level`] but only answers whether anything matches, without
/// allocating.
fn level_has_interest<T>(mut level: &Level<T>, mut rest: &[u8]) -> bool {
    loop {
        let (tok, tail) = split_token(rest);
        if level.fwc.as_deref().is_some_and(|f| f.has_subs_any()) {
            return true;
        }
        let pwc = level.pwc.as_deref();
        let lit = if tok == b"*" || tok == b">" {
            None
        } else {
            level.nodes.get(tok)
        };
        match tail {
            None => {
                return lit.is_some_and(|n| n.has_subs_any())
                    || pwc.is_some_and(|p| p.has_subs_any());
            }
            Some(t) => {
                if let Some(next) = pwc.and_then(|p| p.next.as_deref()) {
                    if level_has_interest(next, t) {
                        return true;
                    }
                }
                match lit.and_then(|n| n.next.as_deref()) {
                    Some(l) => {
                        level = l;
                        rest = t;
                    }
                    None => return false,
                }
            }
        }
    }
}

impl<T> Node<T> {
    #[inline]
    fn has_subs_any(&self) -> bool {
        !self.psubs.is_empty() || !self.qsubs.is_empty()
    }
}

/// Pushes onto `v`, allocating room for exactly one element when `v` has none: most
/// subjects have one subscriber, and `Vec`'s first allocation holds four (192 bytes for
/// another shard's interest entry). Later pushes grow as usual, amortized.
fn push_sparing<E>(v: &mut Vec<E>, e: E) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(e);
}

/// Removes one `(queue, value)` subscription at `subject` below `level`,
/// pruning nodes that become empty. Returns the stored value if it was found.
fn remove_rec<T: PartialEq>(
    level: &mut Level<T>,
    subject: &[u8],
    queue: Option<&[u8]>,
    value: &T,
) -> Option<T> {
    let (tok, tail) = split_token(subject);
    let node: &mut Node<T> = match tok {
        b"*" => level.pwc.as_deref_mut()?,
        b">" => level.fwc.as_deref_mut()?,
        _ => level.nodes.get_mut(tok)?,
    };
    let removed = match tail {
        None => node.remove_sub(queue, value),
        Some(t) => {
            let next = node.next.as_deref_mut()?;
            let r = remove_rec(next, t, queue, value);
            if r.is_some() && next.is_empty() {
                node.next = None;
            }
            r
        }
    };
    if removed.is_some() && node.is_empty() {
        match tok {
            b"*" => level.pwc = None,
            b">" => level.fwc = None,
            _ => level.nodes.remove(tok),
        }
    }
    removed
}

/// Computes a fresh match result; returns the shared empty result when
/// nothing matches so that misses with no interest do not allocate a result.
fn compute<T: Clone>(
    root: &Level<T>,
    empty: &Rc<SublistResult<T>>,
    subject: &[u8],
) -> Rc<SublistResult<T>> {
    let mut acc = SublistResult::default();
    match_level(root, subject, &mut acc);
    if acc.is_empty() {
        Rc::clone(empty)
    } else {
        Rc::new(acc)
    }
}

/// A hash of `subject` for the match cache: the Fx hash, as the trie's maps use it.
#[inline(always)]
fn subject_hash(subject: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(subject);
    h.finish()
}

/// `h` ([`subject_hash`]) mixed for the cache's doorkeeper: the Fx hash's high bits depend
/// only on a subject's first bytes; after the final step of MurmurHash3 every bit depends on
/// every byte.
fn mixed(h: u64) -> u64 {
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// What a [`Sublist`] keeps for the subjects it does not cache (see [`Uncached::admit`]).
struct Uncached<T> {
    /// The cache's doorkeeper: one bit per hash of a subject that missed the cache and was
    /// not let in, and how many it noted since it last forgot them all.
    seen: [u64; SEEN_BITS / 64],
    seen_count: u32,
    /// The result of the last lookup that was not cached, refilled in place by the next one
    /// once nobody else holds it: a subject that is not cached costs no allocation.
    spare: Rc<SublistResult<T>>,
}

impl<T: Clone> Uncached<T> {
    fn new() -> Box<Self> {
        Box::new(Uncached {
            seen: [0; SEEN_BITS / 64],
            seen_count: 0,
            spare: Rc::new(SublistResult::default()),
        })
    }

    /// Whether a subject of hash `h` ([`subject_hash`]), which missed the cache, goes into
    /// it: only when it missed once before, recently (a doorkeeper, as in TinyLFU). Subjects
    /// that do not come back within the cache's reach (a reply inbox per request, more
    /// subjects in turn than the cache holds) would each cost an allocation, and in time a
    /// sweep, and would push out the subjects that do come back. A false positive (a subject
    /// whose bits others set) only caches a subject at its first miss, as without the
    /// doorkeeper.
    fn admit(&mut self, h: u64) -> bool {
        // Two bits per subject (a Bloom filter): with at most a window's subjects noted,
        // under 5 % of new subjects find both of theirs set by others.
        let h = mixed(h);
        let bits = [
            (h >> 51) as usize & (SEEN_BITS - 1),
            (h >> 38) as usize & (SEEN_BITS - 1),
        ];
        if bits
            .iter()
            .all(|&b| self.seen[b / 64] & (1 << (b % 64)) != 0)
        {
            return true;
        }
        if self.seen_count >= SEEN_WINDOW {
            self.seen.fill(0);
            self.seen_count = 0;
        }
        for b in bits {
            self.seen[b / 64] |= 1 << (b % 64);
        }
        self.seen_count += 1;
        false
    }

    /// The match for `subject`, not cached: into the spare result when nobody else holds
    /// it, else into a new one that becomes the spare.
    fn refill(
        &mut self,
        root: &Level<T>,
        empty: &Rc<SublistResult<T>>,
        subject: &[u8],
    ) -> Rc<SublistResult<T>> {
        match Rc::get_mut(&mut self.spare) {
            Some(acc) => {
                // The groups stay, emptied, with their names and members' room: a queue group
                // matched again (the same workers behind every subject) allocates nothing.
                acc.psubs.clear();
                for (_, members) in &mut acc.qsubs {
                    members.clear();
                }
                match_level(root, subject, acc);
                acc.qsubs.retain(|(_, members)| !members.is_empty());
            }
            None => {
                let mut acc = SublistResult::default();
                match_level(root, subject, &mut acc);
                self.spare = Rc::new(acc);
            }
        }
        if self.spare.is_empty() {
            Rc::clone(empty)
        } else {
            Rc::clone(&self.spare)
        }
    }
}

/// The cache entry of `subject`, whose hash is `h`: the whole hash compared first, so that
/// the subjects compared are nearly always equal.
#[inline(always)]
fn cached<T>(h: u64, subject: &[u8]) -> impl Fn(&CacheEntry<T>) -> bool + '_ {
    move |e| e.hash == h && same_bytes(&e.subject, subject)
}

/// [`Sublist::lookup`] of a subject cached before the index last changed: its entry
/// matched again.
#[cold]
#[inline(never)]
fn refresh<T: Clone>(
    e: &mut CacheEntry<T>,
    root: &Level<T>,
    empty: &Rc<SublistResult<T>>,
    generation: u64,
) -> Rc<SublistResult<T>> {
    let r = compute(root, empty, &e.subject);
    e.result = Rc::clone(&r);
    e.generation = generation;
    r
}

struct CacheEntry<T> {
    /// [`subject_hash`] of `subject`: compared before the subject itself, and the table's
    /// hash when it grows.
    hash: u64,
    subject: Box<[u8]>,
    generation: u64,
    result: Rc<SublistResult<T>>,
}

/// The subject index: a token trie of subscriptions with queue groups and a
/// bounded, lazily invalidated match cache.
///
/// Duplicates: inserting an identical `(subject, queue, value)` triple twice
/// stores it twice (and it is then reported twice by [`Sublist::matches`]);
/// each [`Sublist::remove`] removes one copy. The same value under
/// different subjects is independent and may be reported once per matching
/// subscription.
pub struct Sublist<T> {
    root: Level<T>,
    count: usize,
    generation: u64,
    cache: HashTable<CacheEntry<T>>,
    empty: Rc<SublistResult<T>>,
    /// The last subject matched and its result: publishers tend to repeat a subject, and a
    /// byte compare is cheaper than hashing into the cache. Valid while `last_generation`
    /// equals `generation`.
    last_subject: Vec<u8>,
    last_generation: u64,
    last_result: Rc<SublistResult<T>>,
    /// Made at the first miss of the cache, apart: the hits' path reads none of it.
    uncached: Option<Box<Uncached<T>>>,
    inserts: u64,
    removes: u64,
    lookups: u64,
    hits: u64,
}

/// Counters of a [`Sublist`], as `/subsz` reports them (nats-server's `SublistStats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SublistStats {
    pub num_subscriptions: u64,
    pub num_cache: u64,
    pub num_inserts: u64,
    pub num_removes: u64,
    pub num_matches: u64,
    /// Matches answered without walking the trie.
    pub cache_hits: u64,
    /// The most subscriptions (plain plus queue groups) one cached subject matches.
    pub max_fanout: u64,
    /// Summed over cached subjects, for the average.
    pub total_fanout: u64,
}

impl SublistStats {
    /// Two indexes' counters together (shards, accounts).
    pub fn plus(self, o: SublistStats) -> SublistStats {
        SublistStats {
            num_subscriptions: self.num_subscriptions + o.num_subscriptions,
            num_cache: self.num_cache + o.num_cache,
            num_inserts: self.num_inserts + o.num_inserts,
            num_removes: self.num_removes + o.num_removes,
            num_matches: self.num_matches + o.num_matches,
            cache_hits: self.cache_hits + o.cache_hits,
            max_fanout: self.max_fanout.max(o.max_fanout),
            total_fanout: self.total_fanout + o.total_fanout,
        }
    }
}

impl<T: Clone + PartialEq> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    /// Creates an empty index.
    pub fn new() -> Self {
        Sublist {
            root: Level::default(),
            count: 0,
            generation: 0,
            cache: HashTable::new(),
            empty: Rc::new(SublistResult::default()),
            last_subject: Vec::new(),
            last_generation: u64::MAX,
            last_result: Rc::new(SublistResult::default()),
            uncached: None,
            inserts: 0,
            removes: 0,
            lookups: 0,
            hits: 0,
        }
    }

    /// The counters, and the fan-out of the subjects in the cache.
    pub fn stats(&self) -> SublistStats {
        let fanouts = self
            .cache
            .iter()
            .map(|e| (e.result.psubs.len() + e.result.qsubs.len()) as u64);
        SublistStats {
            num_subscriptions: self.count as u64,
            num_cache: self.cache.len() as u64,
            num_inserts: self.inserts,
            num_removes: self.removes,
            num_matches: self.lookups,
            cache_hits: self.hits,
            max_fanout: fanouts.clone().max().unwrap_or(0),
            total_fanout: fanouts.sum(),
        }
    }

    /// Adds a subscription on `subject` (wildcards allowed), optionally in
    /// queue group `queue`.
    ///
    /// Errors: [`SublistError::InvalidSubject`] if `subject` fails
    /// [`is_valid_subject`]; [`SublistError::InvalidQueue`] if `queue` is
    /// empty or contains whitespace. On error nothing changes.
    pub fn insert(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        value: T,
    ) -> Result<(), SublistError> {
        if !is_valid_subject(subject) {
            return Err(SublistError::InvalidSubject);
        }
        if let Some(q) = queue {
            if q.is_empty() || q.iter().any(|&b| is_ws(b)) {
                return Err(SublistError::InvalidQueue);
            }
        }
        let mut level = &mut self.root;
        let mut rest = subject;
        let node = loop {
            let (tok, tail) = split_token(rest);
            let node: &mut Node<T> = match tok {
                b"*" => level.pwc.get_or_insert_with(Box::default),
                b">" => level.fwc.get_or_insert_with(Box::default),
                _ => level.nodes.get_or_insert(tok),
            };
            match tail {
                None => break node,
                Some(t) => {
                    level = node.next.get_or_insert_with(Box::default);
                    rest = t;
                }
            }
        };
        match queue {
            None => push_sparing(&mut node.psubs, value),
            Some(q) => match node.qsubs.iter_mut().find(|(n, _)| **n == *q) {
                Some((_, members)) => members.push(value),
                None => push_sparing(&mut node.qsubs, (Box::from(q), vec![value])),
            },
        }
        self.count += 1;
        self.inserts += 1;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// Removes one subscription `(subject, queue, value)`. Returns true if it
    /// was present. Empty trie nodes are pruned.
    pub fn remove(&mut self, subject: &[u8], queue: Option<&[u8]>, value: &T) -> bool {
        self.take(subject, queue, value).is_some()
    }

    /// Removes one subscription `(subject, queue)` whose value equals `value`, and returns
    /// the value it stored (which may differ in what `T`'s equality ignores).
    pub fn take(&mut self, subject: &[u8], queue: Option<&[u8]>, value: &T) -> Option<T> {
        if !is_valid_subject(subject) {
            return None;
        }
        let taken = remove_rec(&mut self.root, subject, queue, value)?;
        self.count -= 1;
        self.removes += 1;
        self.generation = self.generation.wrapping_add(1);
        Some(taken)
    }

    /// Returns all subscriptions matching the published `subject`.
    ///
    /// Tokens are taken literally, except that a published `*` or `>` token
    /// matches only wildcard subscriptions (`*`/`>`) at that position. A
    /// subject that is empty or has an empty token matches nothing. Results
    /// are cached (see the module docs); a cache hit does not allocate.
    #[inline]
    pub fn matches(&mut self, subject: &[u8]) -> Rc<SublistResult<T>> {
        self.lookups += 1;
        // Inline: publishing into an empty index (no subscribers, or no other shard's
        // interest with one shard) costs no call.
        if self.count == 0 {
            return Rc::clone(&self.empty);
        }
        self.matches_some(subject)
    }

    /// [`Sublist::matches`] with at least one subscription.
    fn matches_some(&mut self, subject: &[u8]) -> Rc<SublistResult<T>> {
        let generation = self.generation;
        if self.last_generation == generation && same_bytes(&self.last_subject, subject) {
            self.hits += 1;
            return Rc::clone(&self.last_result);
        }
        let r = self.lookup(subject);
        self.last_subject.clear();
        self.last_subject.extend_from_slice(subject);
        self.last_generation = generation;
        self.last_result = Rc::clone(&r);
        r
    }

    /// `matches` without the last-subject shortcut: the cache, then the trie.
    fn lookup(&mut self, subject: &[u8]) -> Rc<SublistResult<T>> {
        let h = subject_hash(subject);
        match self.cache.find_mut(h, cached(h, subject)) {
            Some(e) if e.generation == self.generation => {
                self.hits += 1;
                Rc::clone(&e.result)
            }
            Some(e) => refresh(e, &self.root, &self.empty, self.generation),
            None => self.miss(h, subject),
        }
    }

    /// [`Sublist::lookup`] of a subject of hash `h` not in the cache.
    #[inline(never)]
    fn miss(&mut self, h: u64, subject: &[u8]) -> Rc<SublistResult<T>> {
        if !has_no_empty_tokens(subject) {
            return Rc::clone(&self.empty);
        }
        let u = self.uncached.get_or_insert_with(Uncached::new);
        if !u.admit(h) {
            // Let go of the spare as the last result (`matches_some` replaces it after this).
            if Rc::ptr_eq(&self.last_result, &u.spare) {
                self.last_result = Rc::clone(&self.empty);
            }
            return u.refill(&self.root, &self.empty, subject);
        }
        let r = compute(&self.root, &self.empty, subject);
        if self.cache.len() >= CACHE_MAX {
            self.shrink_cache();
        }
        self.cache.insert_unique(
            h,
            CacheEntry {
                hash: h,
                subject: Box::from(subject),
                generation: self.generation,
                result: Rc::clone(&r),
            },
            |e| e.hash,
        );
        r
    }

    /// True if any plain or queue subscription matches `subject`. Uses a
    /// fresh cache entry if present, otherwise walks the trie without
    /// allocating (and without populating the cache).
    pub fn has_interest(&mut self, subject: &[u8]) -> bool {
        let h = subject_hash(subject);
        if let Some(e) = self.cache.find(h, cached(h, subject)) {
            if e.generation == self.generation {
                return !e.result.is_empty();
            }
        }
        has_no_empty_tokens(subject) && level_has_interest(&self.root, subject)
    }

    /// Number of subscriptions stored.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Number of entries currently in the match cache (fresh or stale).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Called when the cache is full: drop stale entries; if that frees too
    /// little, drop arbitrary (hash-order) entries down to `CACHE_SWEEP`.
    /// Amortised O(1) per insertion.
    fn shrink_cache(&mut self) {
        let generation = self.generation;
        self.cache.retain(|e| e.generation == generation);
        if self.cache.len() > CACHE_MAX - CACHE_SWEEP {
            let mut keep = CACHE_SWEEP;
            self.cache.retain(|_| {
                if keep > 0 {
                    keep -= 1;
                    true
                } else {
                    false
                }
            });
        }
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut n = 0;
        self.root.visit(&mut |l| {
            n += l.nodes.values().count()
                + usize::from(l.pwc.is_some())
                + usize::from(l.fwc.is_some())
        });
        n
    }

    /// How many levels keep their children in a map.
    #[cfg(test)]
    fn map_levels(&self) -> usize {
        let mut n = 0;
        self.root
            .visit(&mut |l| n += usize::from(matches!(l.nodes, Children::Many(_))));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-wise comparison agrees with `==` at every length, with the one differing
    /// byte at every place.
    #[test]
    fn same_bytes_is_equality() {
        for n in 0..40 {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i % 26).collect();
            assert!(same_bytes(&a, &a.clone()));
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same_bytes(&a, &b), "n {n}, differing at {at}");
            }
            let longer = [&a[..], b"x"].concat();
            assert!(!same_bytes(&a, &longer));
        }
    }

    /// The word-wise check agrees with splitting at every length, with separators (one, or
    /// two in a row) at every place.
    #[test]
    fn empty_tokens_found_at_every_place() {
        let naive = |s: &[u8]| !s.is_empty() && s.split(|&b| b == TSEP).all(|t| !t.is_empty());
        assert!(!has_no_empty_tokens(b""));
        for n in 1..40 {
            let plain = vec![b'a'; n];
            assert!(has_no_empty_tokens(&plain), "n {n}");
            for at in 0..n {
                for run in 1..=2.min(n - at) {
                    let mut s = plain.clone();
                    s[at..at + run].fill(TSEP);
                    assert_eq!(has_no_empty_tokens(&s), naive(&s), "{:?}", s.escape_ascii());
                }
            }
        }
        // Bytes that differ from the separator in one bit only, or in the top bit.
        for b in [b'/', b',', b'\xae', b'\x0e', b'\x6e'] {
            assert!(has_no_empty_tokens(&[b'a', b, b, b'a']));
        }
    }

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[test]
    fn validation() {
        for s in [
            "foo", "foo.bar", "foo.*", "foo.>", ">", "*", "foo*.bar", "foo>.bar", "*.*.>",
            "a.b.c.d",
        ] {
            assert!(is_valid_subject(s.as_bytes()), "{s} should be valid");
        }
        for s in [
            "",
            ".foo",
            "foo.",
            "foo..bar",
            "foo.>.bar",
            ">.>",
            "foo bar",
            "foo\tbar",
            "foo\nbar",
            "foo\rbar",
            "foo\x0cbar",
            ".",
            "..",
        ] {
            assert!(!is_valid_subject(s.as_bytes()), "{s:?} should be invalid");
        }
        for s in ["foo", "foo.bar", "foo*.bar", "foo>.bar", "a.b.c"] {
            assert!(is_valid_literal_subject(s.as_bytes()), "{s} literal");
        }
        for s in ["foo.*", "foo.>", ">", "*", "", "foo..bar", "foo bar"] {
            assert!(!is_valid_literal_subject(s.as_bytes()), "{s:?} not literal");
        }
    }

    #[test]
    fn naive_matcher() {
        let m = |f: &str, s: &str| subject_matches(f.as_bytes(), s.as_bytes());
        assert!(m("foo", "foo"));
        assert!(!m("foo", "Foo"));
        assert!(m("foo.*", "foo.bar"));
        assert!(!m("foo.*", "foo"));
        assert!(!m("foo.*", "foo.bar.baz"));
        assert!(m("foo.>", "foo.bar.baz"));
        assert!(!m("foo.>", "foo"));
        assert!(m(">", "foo"));
        assert!(m("*.bar", "foo.bar"));
        assert!(!m("foo*", "foo.bar"));
        assert!(m("foo*", "foo*"));
        assert!(!m("foo.bar", "foo.*"));
        assert!(m("foo.*", "foo.*"));
        assert!(!m("foo", ""));
        assert!(!m("foo.>.bar", "foo.x.bar"));
    }

    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    #[test]
    fn insert_match_remove_basic() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"foo.bar", None, 1).unwrap();
        sl.insert(b"foo.*", None, 2).unwrap();
        sl.insert(b"foo.>", None, 3).unwrap();
        sl.insert(b">", None, 4).unwrap();
        sl.insert(b"*.bar", None, 5).unwrap();
        sl.insert(b"foo", None, 6).unwrap();
        assert_eq!(sl.count(), 6);

        assert_eq!(sorted(&sl.matches(b"foo.bar").psubs), vec![1, 2, 3, 4, 5]);
        assert_eq!(sorted(&sl.matches(b"foo.baz").psubs), vec![2, 3, 4]);
        assert_eq!(sorted(&sl.matches(b"foo.bar.baz").psubs), vec![3, 4]);
        assert_eq!(sorted(&sl.matches(b"foo").psubs), vec![4, 6]);
        assert_eq!(sorted(&sl.matches(b"bar").psubs), vec![4]);
        // Published wildcard tokens only hit wildcard subscriptions.
        assert_eq!(sorted(&sl.matches(b"foo.*").psubs), vec![2, 3, 4]);
        assert_eq!(sorted(&sl.matches(b"*.bar").psubs), vec![4, 5]);
        // Empty tokens match nothing.
        assert!(sl.matches(b"foo..bar").is_empty());
        assert!(sl.matches(b"").is_empty());
        assert!(!sl.has_interest(b""));

        assert!(sl.remove(b"foo.*", None, &2));
        assert!(!sl.remove(b"foo.*", None, &2));
        assert!(!sl.remove(b"foo.bar", None, &99));
        assert!(!sl.remove(b"nope.x", None, &1));
        assert_eq!(sorted(&sl.matches(b"foo.baz").psubs), vec![3, 4]);
        assert_eq!(sl.count(), 5);
    }

    #[test]
    fn invalid_inserts() {
        let mut sl: Sublist<u32> = Sublist::new();
        assert_eq!(sl.insert(b"", None, 1), Err(SublistError::InvalidSubject));
        assert_eq!(
            sl.insert(b"foo.>.bar", None, 1),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(
            sl.insert(b"foo bar", None, 1),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(
            sl.insert(b"foo", Some(b""), 1),
            Err(SublistError::InvalidQueue)
        );
        assert_eq!(
            sl.insert(b"foo", Some(b"q 1"), 1),
            Err(SublistError::InvalidQueue)
        );
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.node_count(), 0);
        assert_eq!(SublistError::InvalidSubject.to_string(), "invalid subject");
    }

    #[test]
    fn queue_groups_merge() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"foo.bar", Some(b"q1"), 1).unwrap();
        sl.insert(b"foo.*", Some(b"q1"), 2).unwrap();
        sl.insert(b"foo.>", Some(b"q1"), 3).unwrap();
        sl.insert(b"foo.bar", Some(b"q2"), 4).unwrap();
        sl.insert(b"foo.bar", None, 5).unwrap();
        let r = sl.matches(b"foo.bar");
        assert_eq!(r.psubs, vec![5]);
        assert_eq!(r.qsubs.len(), 2);
        let q1 = r.qsubs.iter().find(|(n, _)| &**n == b"q1").unwrap();
        assert_eq!(sorted(&q1.1), vec![1, 2, 3]);
        let q2 = r.qsubs.iter().find(|(n, _)| &**n == b"q2").unwrap();
        assert_eq!(q2.1, vec![4]);
        // Wrong queue name does not remove.
        assert!(!sl.remove(b"foo.bar", Some(b"q2"), &1));
        assert!(!sl.remove(b"foo.bar", None, &1));
        assert!(sl.remove(b"foo.bar", Some(b"q2"), &4));
        let r = sl.matches(b"foo.bar");
        assert_eq!(r.qsubs.len(), 1);
        assert!(sl.has_interest(b"foo.x"));
    }

    #[test]
    fn duplicates_stored_twice() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"a", None, 1).unwrap();
        sl.insert(b"a", None, 1).unwrap();
        assert_eq!(sl.count(), 2);
        assert_eq!(sl.matches(b"a").psubs, vec![1, 1]);
        assert!(sl.remove(b"a", None, &1));
        assert_eq!(sl.matches(b"a").psubs, vec![1]);
        assert!(sl.remove(b"a", None, &1));
        assert!(sl.matches(b"a").is_empty());
        assert_eq!(sl.node_count(), 0);
    }

    #[test]
    fn pruning() {
        let mut sl: Sublist<u32> = Sublist::new();
        let subs: &[(&[u8], Option<&[u8]>)] = &[
            (b"a.b.c", None),
            (b"a.b", None),
            (b"a.*.c", Some(b"q")),
            (b"a.>", None),
            (b"*.*.*.*", Some(b"q")),
            (b">", None),
            (b"x.y.z.w.v", None),
        ];
        for (i, (s, q)) in subs.iter().enumerate() {
            sl.insert(s, *q, i as u32).unwrap();
        }
        assert!(sl.node_count() > 0);
        for (i, (s, q)) in subs.iter().enumerate().rev() {
            assert!(sl.remove(s, *q, &(i as u32)));
        }
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.node_count(), 0);
        assert!(sl.root.is_empty());
        // Churn keeps it bounded.
        for i in 0..1000u32 {
            let s = format!("t.{}.x", i);
            sl.insert(s.as_bytes(), None, i).unwrap();
            assert!(sl.remove(s.as_bytes(), None, &i));
        }
        assert_eq!(sl.node_count(), 0);
    }

    #[test]
    fn cache_invalidation() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"foo.bar", None, 1).unwrap();
        let r1 = sl.matches(b"foo.bar");
        let r2 = sl.matches(b"foo.bar");
        assert!(Rc::ptr_eq(&r1, &r2), "second lookup is a cache hit");
        assert_eq!(r1.psubs, vec![1]);

        sl.insert(b"foo.*", None, 2).unwrap();
        assert_eq!(sorted(&sl.matches(b"foo.bar").psubs), vec![1, 2]);
        // Old result is unchanged (immutable snapshot).
        assert_eq!(r1.psubs, vec![1]);

        assert!(sl.remove(b"foo.bar", None, &1));
        assert_eq!(sl.matches(b"foo.bar").psubs, vec![2]);
        assert!(sl.remove(b"foo.*", None, &2));
        assert!(sl.matches(b"foo.bar").is_empty());
        assert!(!sl.has_interest(b"foo.bar"));
    }

    #[test]
    fn cache_is_bounded() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b">", None, 1).unwrap();
        for i in 0..5000u32 {
            let s = format!("s.{i}");
            assert_eq!(sl.matches(s.as_bytes()).psubs, vec![1]);
            assert!(sl.cache_len() <= CACHE_MAX);
        }
    }

    #[test]
    fn cache_admits_subjects_that_come_back() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"s.*", None, 1).unwrap();
        let subjects: Vec<String> = (0..500).map(|i| format!("s.{i}")).collect();
        for s in &subjects {
            assert_eq!(sl.matches(s.as_bytes()).psubs, vec![1]);
        }
        // Seen once: matched, and only the doorkeeper's rare false positives cached.
        assert!(
            sl.cache_len() < 25,
            "one-off subjects cached: {}",
            sl.cache_len()
        );
        for s in &subjects {
            assert_eq!(sl.matches(s.as_bytes()).psubs, vec![1]);
        }
        assert_eq!(
            sl.cache_len(),
            subjects.len(),
            "subjects seen again are cached"
        );
        let before = sl.stats().cache_hits;
        for s in &subjects {
            assert_eq!(sl.matches(s.as_bytes()).psubs, vec![1]);
        }
        assert_eq!(sl.stats().cache_hits - before, subjects.len() as u64);
    }

    #[test]
    fn uncached_results_are_snapshots() {
        let mut sl: Sublist<u32> = Sublist::new();
        sl.insert(b"a.*", None, 1).unwrap();
        sl.insert(b"b.*", Some(b"q"), 2).unwrap();
        let a = sl.matches(b"a.1");
        // `a` is still held, so this one cannot be refilled into it.
        let b = sl.matches(b"b.1");
        assert_eq!(a.psubs, vec![1]);
        assert_eq!(b.qsubs, vec![(Box::from(&b"q"[..]), vec![2])]);
        drop(a);
        let a = sl.matches(b"a.2");
        assert_eq!(
            (a.psubs.as_slice(), b.psubs.as_slice()),
            (&[1][..], &[][..])
        );
        assert_eq!(b.qsubs.len(), 1);
        drop((a, b));
        // Held by nobody: the next uncached lookup refills the same result in place.
        let spare = Rc::as_ptr(&sl.matches(b"b.2"));
        let a = sl.matches(b"a.3");
        assert_eq!(Rc::as_ptr(&a), spare);
        assert_eq!((a.psubs.as_slice(), a.qsubs.len()), (&[1][..], 0));
        assert!(sl.matches(b"c.1").is_empty());
        assert_eq!(sl.cache_len(), 0);
    }

    /// Tokens of the narrow runs: few, so that filters and subjects meet often.
    const NARROW: [&str; 4] = ["a", "b", "c", "d"];
    /// Tokens of the wide run: more than [`FEW`], so that levels move into a map.
    const WIDE: [&str; 14] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
    ];

    fn random_filter(rng: &mut StdRng, alpha: &[&'static str]) -> String {
        let n = rng.gen_range(1..=5);
        let mut toks = Vec::new();
        for i in 0..n {
            let r = rng.gen_range(0..10);
            if i == n - 1 && r == 0 {
                toks.push(">");
            } else if r < 3 {
                toks.push("*");
            } else {
                toks.push(alpha[rng.gen_range(0..alpha.len())]);
            }
        }
        toks.join(".")
    }

    fn random_subject(rng: &mut StdRng, alpha: &[&'static str]) -> String {
        let n = rng.gen_range(1..=6);
        let mut toks = Vec::new();
        for _ in 0..n {
            let r = rng.gen_range(0..30);
            if r == 0 {
                toks.push("*");
            } else if r == 1 {
                toks.push(">");
            } else {
                toks.push(alpha[rng.gen_range(0..alpha.len())]);
            }
        }
        toks.join(".")
    }

    type Canon = (BTreeSet<u32>, BTreeSet<(Vec<u8>, BTreeSet<u32>)>);

    fn canon(r: &SublistResult<u32>) -> Canon {
        let p: BTreeSet<u32> = r.psubs.iter().copied().collect();
        assert_eq!(p.len(), r.psubs.len(), "no duplicate psubs");
        let names: BTreeSet<&[u8]> = r.qsubs.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names.len(), r.qsubs.len(), "one entry per queue name");
        let q = r
            .qsubs
            .iter()
            .map(|(n, m)| {
                let s: BTreeSet<u32> = m.iter().copied().collect();
                assert_eq!(s.len(), m.len());
                assert!(!m.is_empty());
                (n.to_vec(), s)
            })
            .collect();
        (p, q)
    }

    fn brute(live: &[(String, Option<String>, u32)], subject: &str) -> Canon {
        let mut p = BTreeSet::new();
        let mut q: std::collections::BTreeMap<Vec<u8>, BTreeSet<u32>> = Default::default();
        for (f, qn, v) in live {
            if subject_matches(f.as_bytes(), subject.as_bytes()) {
                match qn {
                    None => {
                        p.insert(*v);
                    }
                    Some(qn) => {
                        q.entry(qn.as_bytes().to_vec()).or_default().insert(*v);
                    }
                }
            }
        }
        (p, q.into_iter().collect())
    }

    #[test]
    fn randomized_against_naive() {
        // Filters from three tokens, subjects from four.
        randomized_run(0x5eed_1234, &NARROW[..3], &NARROW, 150, 500);
    }

    #[test]
    fn randomized_against_naive_wide_levels() {
        let most = randomized_run(0x5eed_5678, &WIDE, &WIDE, 400, 100);
        assert!(most > 3, "levels in a map at most: {most}");
    }

    /// Random inserts, removes and matches against the brute-force oracle, with at most
    /// `max_live` subscriptions; at least `min_hits` matches must find plain and queue
    /// subscribers each. Returns the most levels that kept their children in a map at once.
    fn randomized_run(
        seed: u64,
        filter_alpha: &[&'static str],
        subject_alpha: &[&'static str],
        max_live: usize,
        min_hits: usize,
    ) -> usize {
        let mut most_maps = 0;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sl: Sublist<u32> = Sublist::new();
        let mut live: Vec<(String, Option<String>, u32)> = Vec::new();
        let mut next_id = 0u32;
        let (mut nonempty_p, mut nonempty_q) = (0usize, 0usize);
        for _ in 0..6000 {
            let op = rng.gen_range(0..100);
            // Keep the live set moderate so the brute-force oracle stays fast.
            if op < 35 && live.len() < max_live {
                let f = random_filter(&mut rng, filter_alpha);
                let q = match rng.gen_range(0..4) {
                    0 => Some("q1".to_string()),
                    1 => Some("q2".to_string()),
                    _ => None,
                };
                sl.insert(f.as_bytes(), q.as_deref().map(str::as_bytes), next_id)
                    .unwrap();
                live.push((f, q, next_id));
                next_id += 1;
            } else if op < 60 {
                if !live.is_empty() && rng.gen_range(0..10) != 0 {
                    let i = rng.gen_range(0..live.len());
                    let (f, q, v) = live.swap_remove(i);
                    assert!(sl.remove(f.as_bytes(), q.as_deref().map(str::as_bytes), &v));
                } else {
                    let f = random_filter(&mut rng, filter_alpha);
                    assert!(!sl.remove(f.as_bytes(), None, &u32::MAX));
                }
            } else {
                let s = random_subject(&mut rng, subject_alpha);
                let r = sl.matches(s.as_bytes());
                let want = brute(&live, &s);
                assert_eq!(canon(&r), want, "subject {s}");
                nonempty_p += usize::from(!want.0.is_empty());
                nonempty_q += usize::from(!want.1.is_empty());
                let empty = want.0.is_empty() && want.1.is_empty();
                assert_eq!(sl.has_interest(s.as_bytes()), !empty);
                // Check the cache-less interest walk too.
                let s2 = random_subject(&mut rng, subject_alpha);
                let want2 = brute(&live, &s2);
                let e2 = want2.0.is_empty() && want2.1.is_empty();
                assert_eq!(sl.has_interest(s2.as_bytes()), !e2, "interest {s2}");
            }
            assert_eq!(sl.count(), live.len());
            most_maps = most_maps.max(sl.map_levels());
        }
        assert!(
            nonempty_p > min_hits && nonempty_q > min_hits,
            "{nonempty_p} {nonempty_q}"
        );
        for (f, q, v) in live.drain(..) {
            assert!(sl.remove(f.as_bytes(), q.as_deref().map(str::as_bytes), &v));
        }
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.node_count(), 0);
        assert!(sl.matches(b"a.b").is_empty());
        most_maps
    }
}
