//! The client protocol parser on arbitrary bytes: it must never panic, and it must give the
//! same operations whether the bytes arrive at once or split at an arbitrary point (it is
//! sans-IO, so reads can cut anywhere).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern::parser::{Op, Parser};

fn parse(chunks: &[&[u8]]) -> (Vec<String>, bool) {
    let mut p = Parser::new(4096, 1 << 20);
    p.set_headers(true);
    let mut left = Vec::new();
    let mut ops = Vec::new();
    for c in chunks {
        // Each read's chunk starts with what the previous one left unparsed.
        left.extend_from_slice(c);
        let buf = Bytes::from(std::mem::take(&mut left));
        let mut pos = 0;
        loop {
            match p.next(&buf, &mut pos) {
                Ok(Some(op)) => ops.push(describe(&op)),
                Ok(None) => break,
                Err(_) => return (ops, true),
            }
        }
        left = buf[pos..].to_vec();
    }
    (ops, false)
}

/// What an operation means, independent of how its bytes were buffered.
fn describe(op: &Op) -> String {
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

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let whole = parse(&[&data[1..]]);
    let split = parse(&[&data[1..cut.max(1)], &data[cut.max(1)..]]);
    // An error may be found earlier or later depending on the cut, but never different ops
    // before it.
    let n = whole.0.len().min(split.0.len());
    assert_eq!(whole.0[..n], split.0[..n]);
    if !whole.1 && !split.1 {
        assert_eq!(whole.0, split.0);
    }
});
