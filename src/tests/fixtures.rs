//! Fixtures shared by the unit tests: API keys and their hashes, the one seeded generator (it is
//! also the deterministic [`RandomSource`] of API tests), and a strict JSON oracle.

use crate::support::ids::{RandomSource, RandomUnavailable};
use sha2::{Digest, Sha256};

pub(crate) const KEY_A: &str = "key-acme-0123456789";
pub(crate) const KEY_B: &str = "key-beta-0123456789";
pub(crate) const KEY_OPS: &str = "key-ops-0123456789";
pub(crate) const STATIC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `api.keys[].sha256` value for an API key.
pub(crate) fn hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The seeded generator

/// `ROBUSTNESS_SEED=<n>` varies every test's seed and `ROBUSTNESS_SCALE=<n>` multiplies the
/// iteration counts, for longer local runs; by default the runs are fixed and take seconds.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn seeded(base: u64) -> Rng {
    Rng(base ^ env_number("ROBUSTNESS_SEED", 0).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

pub(crate) fn scaled(iterations: usize) -> usize {
    iterations * env_number("ROBUSTNESS_SCALE", 1) as usize
}

/// splitmix64: tiny, fast, and good enough to drive a fuzzer.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length biased towards short values but occasionally long.
    pub(crate) fn len(&mut self, max: usize) -> usize {
        match self.below(10) {
            0..=5 => self.below(max.min(16) + 1),
            6..=8 => self.below(max.min(256) + 1),
            _ => self.below(max + 1),
        }
    }

    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.len(max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub(crate) fn ascii(&mut self, max: usize) -> String {
        let n = self.len(max);
        (0..n).map(|_| char::from(self.below(128) as u8)).collect()
    }

    /// Any Unicode scalar values, biased towards the interesting ones.
    pub(crate) fn unicode(&mut self, max: usize) -> String {
        let n = self.len(max);
        (0..n)
            .map(|_| match self.below(6) {
                0 => char::from(self.below(0x20) as u8),
                1 => *self.pick(&['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{feff}', '\n']),
                2 => char::from_u32(self.below(0x11_0000) as u32).unwrap_or('\u{fffd}'),
                3 => char::from_u32(0x80 + self.below(0x800) as u32).unwrap_or('é'),
                _ => char::from(0x20 + self.below(0x5f) as u8),
            })
            .collect()
    }

    /// A string from `alphabet`, 0..=max characters.
    pub(crate) fn from(&mut self, alphabet: &str, max: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let n = self.len(max);
        (0..n).map(|_| *self.pick(&chars)).collect()
    }
}

/// The generator as the host's randomness: fixed bytes from a fixed seed.
impl RandomSource for Rng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        for b in buf.iter_mut() {
            *b = self.next() as u8;
        }
        Ok(())
    }
}

/// A source that always fails, as WASI `random_get` might.
pub(crate) struct NoRandom;

impl RandomSource for NoRandom {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        Err(RandomUnavailable)
    }
}

// ---------------------------------------------------------------------------------------------
// A strict JSON oracle, independent of serde_json (no depth limit, I-JSON strings)

/// One RFC 8259 JSON text, strings restricted as I-JSON (RFC 7493) requires: UTF-8 and no
/// unpaired surrogate escapes. Iterative, so any nesting depth is checked.
pub(crate) fn is_strict_json(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut p = Cursor { b: bytes, i: 0 };
    let mut stack: Vec<u8> = Vec::new();
    p.ws();
    'value: loop {
        match p.peek() {
            Some(b'{') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b'}') {
                    p.i += 1;
                } else {
                    stack.push(b'{');
                    if !p.key() {
                        return false;
                    }
                    continue 'value;
                }
            }
            Some(b'[') => {
                p.i += 1;
                p.ws();
                if p.peek() == Some(b']') {
                    p.i += 1;
                } else {
                    stack.push(b'[');
                    continue 'value;
                }
            }
            Some(b'"') => {
                if !p.string() {
                    return false;
                }
            }
            Some(b't') => {
                if !p.literal(b"true") {
                    return false;
                }
            }
            Some(b'f') => {
                if !p.literal(b"false") {
                    return false;
                }
            }
            Some(b'n') => {
                if !p.literal(b"null") {
                    return false;
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                if !p.number() {
                    return false;
                }
            }
            _ => return false,
        }
        loop {
            p.ws();
            let Some(&open) = stack.last() else {
                return p.i == p.b.len();
            };
            match (open, p.bump()) {
                (b'{', Some(b',')) => {
                    p.ws();
                    if !p.key() {
                        return false;
                    }
                    continue 'value;
                }
                (b'[', Some(b',')) => {
                    p.ws();
                    continue 'value;
                }
                (b'{', Some(b'}')) | (b'[', Some(b']')) => {
                    stack.pop();
                }
                _ => return false,
            }
        }
    }
}

pub(crate) struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(crate) fn bump(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    pub(crate) fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    pub(crate) fn literal(&mut self, word: &[u8]) -> bool {
        let ok = self.b.get(self.i..self.i + word.len()) == Some(word);
        self.i += word.len();
        ok
    }

    /// `"key"` `:` and the whitespace around it.
    pub(crate) fn key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.ws();
        if self.bump() != Some(b':') {
            return false;
        }
        self.ws();
        true
    }

    pub(crate) fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    pub(crate) fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    pub(crate) fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    pub(crate) fn string(&mut self) -> bool {
        self.i += 1; // the opening quote
        loop {
            match self.bump() {
                None => return false,
                Some(b'"') => return true,
                Some(0..=0x1f) => return false,
                Some(b'\\') => match self.bump() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                    Some(b'u') => match self.hex4() {
                        Some(0xd800..=0xdbff) => {
                            if self.literal(b"\\u") && !matches!(self.hex4(), Some(0xdc00..=0xdfff))
                            {
                                return false;
                            }
                            if self.b.get(self.i - 6..self.i - 4) != Some(b"\\u") {
                                return false;
                            }
                        }
                        Some(0xdc00..=0xdfff) | None => return false,
                        Some(_) => {}
                    },
                    _ => return false,
                },
                Some(_) => {}
            }
        }
    }
}

#[test]
fn the_json_oracle_agrees_with_known_cases() {
    for good in [
        &b"1"[..],
        b" {\"a\":[1,2.5e-3,-0,true,false,null,\"\\u00e9\\uD83D\\uDE00\\n\"]} ",
        b"[]",
        b"{}",
        b"\"\"",
    ] {
        assert!(is_strict_json(good), "{:?}", String::from_utf8_lossy(good));
    }
    for bad in [
        &b""[..],
        b"01",
        b"1.",
        b"[1,]",
        b"{\"a\"}",
        b"{\"a\":1,}",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800x\"",
        b"\"\x01\"",
        b"\"\xff\"",
        b"[1] [2]",
        b"tru",
        b"[",
    ] {
        assert!(!is_strict_json(bad), "{:?}", String::from_utf8_lossy(bad));
    }
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    assert!(is_strict_json(deep.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// Log lines

use std::cell::RefCell;

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Keeps what this thread logs, so a test can read its own lines (tests run on many threads).
struct ThreadLog;

impl log::Log for ThreadLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|l| {
            l.borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }

    fn flush(&self) {}
}

/// What this thread logged since the last call (the first call installs the logger).
pub(crate) fn logged() -> Vec<(log::Level, String)> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&ThreadLog);
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.with(|l| std::mem::take(&mut *l.borrow_mut()))
}
