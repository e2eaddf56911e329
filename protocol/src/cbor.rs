//! Strict, allocation-light reading of one CBOR data item (RFC 8949) straight from the payload
//! bytes: a cursor over heads and strings, and the one pass that checks what `SPEC.md` ("CBOR
//! conventions") asks of every payload before any schema is applied.
//!
//! ```text
//!  bytes ─► scan() ─► Scanned      one well-formed item, nothing after it, ≤ MAX_DEPTH deep;
//!             │                    the top-level map's entries (key, where the value starts)
//!             └─ duplicate keys    the first key a map has twice, per top-level entry
//!  bytes ─► Cursor ─► heads, strings, floats    what crate::decode reads the typed body with
//! ```
//!
//! Nothing is built: no generic value tree, no copy of a definite string (text is borrowed from
//! the payload; only indefinite strings, which encoders never write, are joined into a buffer).
//! Why not `ciborium-ll`'s decoder: it reads through an `io::Read`-like trait into caller
//! buffers (every string copied), widens half and single floats through `f32`, which quiets
//! signalling NaNs (the values must come back bit for bit), and its `Header` does not tell a
//! two-byte simple value below 32 (not well-formed) from a one-byte one. The head of a CBOR
//! item is a few lines of code; owning them keeps every rule of `SPEC.md` in view.

use alloc::{borrow::Cow, format, string::String, vec::Vec};

/// Why bytes are not one well-formed CBOR item within the depth limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CborError {
    /// Not well-formed, or followed by more bytes: what is wrong, and where.
    Malformed(String),
    /// Maps, arrays and tags are nested deeper than the limit.
    TooDeep,
}

/// The argument of a CBOR head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A number (a length, a value, a tag number, or the bits of a float).
    Value(u64),
    /// Additional information 31: an indefinite length (or, in major type 7, a break).
    Indefinite,
}

/// One CBOR head: major type, additional information and argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// Major type, 0 to 7.
    pub(crate) major: u8,
    /// Additional information, 0 to 31 (28 to 30 never: they are refused).
    pub(crate) info: u8,
    /// The argument.
    pub(crate) arg: Arg,
}

impl Head {
    /// The float this head holds (major type 7 with a 2-, 4- or 8-byte argument), exactly.
    pub(crate) fn float(self) -> Option<f64> {
        match (self.major, self.info, self.arg) {
            (7, 25, Arg::Value(n)) => Some(half_to_f64(n as u16)),
            (7, 26, Arg::Value(n)) => Some(single_to_f64(n as u32)),
            (7, 27, Arg::Value(n)) => Some(f64::from_bits(n)),
            _ => None,
        }
    }

    /// What this item is, for an error message ("found …").
    pub(crate) fn describe(self) -> String {
        match (self.major, self.arg) {
            (0, Arg::Value(n)) => format!("the unsigned integer {n}"),
            (1, Arg::Value(n)) => format!("the negative integer -1-{n}"),
            (2, _) => String::from("a byte string"),
            (3, _) => String::from("text"),
            (4, _) => String::from("an array"),
            (5, _) => String::from("a map"),
            (6, Arg::Value(tag)) => {
                format!("a tagged item (tag {tag}); tags are never a spec type")
            }
            (7, Arg::Value(n)) => match self.info {
                20 | 21 => String::from("a boolean"),
                22 => String::from("null; an absent optional key is left out"),
                23 => String::from("simple value 23 (undefined)"),
                25..=27 => String::from("a float"),
                _ => format!("simple value {n}"),
            },
            _ => String::from("an ill-formed item"),
        }
    }
}

/// A read position in a payload. Every method checks the bounds and never panics; after
/// [`scan`] accepted the payload, the typed reader in `crate::decode` walks it with this.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at byte `pos` of `bytes`.
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Cursor<'a> {
        Cursor { bytes, pos }
    }

    /// The byte offset of the next item.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// An error for what is wrong at the current position.
    pub(crate) fn malformed(&self, what: &str) -> CborError {
        CborError::Malformed(format!("{what} at byte {}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.left())
            .ok_or_else(|| self.malformed("truncated item"))?;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a head.
    #[inline]
    pub(crate) fn head(&mut self) -> Result<Head, CborError> {
        let Some(&first) = self.bytes.get(self.pos) else {
            return Err(self.malformed("truncated item"));
        };
        self.pos += 1;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => Arg::Value(u64::from(info)),
            24 => Arg::Value(u64::from(u8::from_be_bytes(self.array()?))),
            25 => Arg::Value(u64::from(u16::from_be_bytes(self.array()?))),
            26 => Arg::Value(u64::from(u32::from_be_bytes(self.array()?))),
            27 => Arg::Value(u64::from_be_bytes(self.array()?)),
            31 => Arg::Indefinite,
            _ => return Err(self.malformed("reserved additional information 28-30")),
        };
        Ok(Head { major, info, arg })
    }

    /// The next `N` bytes.
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CborError> {
        let end = self.pos.checked_add(N);
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(slice) => {
                let mut out = [0u8; N];
                out.copy_from_slice(slice);
                self.pos += N;
                Ok(out)
            }
            None => Err(self.malformed("truncated item")),
        }
    }

    /// Whether the next byte is a break (`ff`); consumes it if so.
    pub(crate) fn at_break(&mut self) -> bool {
        if self.bytes.get(self.pos) == Some(&0xff) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// The content of a byte or text string of `major` type whose head was just read:
    /// definite (borrowed from the payload), or indefinite made of definite chunks of the same
    /// major type (joined; text chunks each valid UTF-8). Text is checked to be UTF-8.
    pub(crate) fn string(&mut self, major: u8, arg: Arg) -> Result<Cow<'a, [u8]>, CborError> {
        if let Arg::Value(n) = arg {
            let content = self.take(n)?;
            if major == 3 && core::str::from_utf8(content).is_err() {
                return Err(self.malformed("text is not UTF-8"));
            }
            return Ok(Cow::Borrowed(content));
        }
        let mut out = Vec::new();
        while !self.at_break() {
            let chunk = self.head()?;
            let Arg::Value(n) = chunk.arg else {
                return Err(self.malformed("nested indefinite-length string"));
            };
            if chunk.major != major {
                return Err(self.malformed("string chunk of another major type"));
            }
            let chunk = self.take(n)?;
            if major == 3 && core::str::from_utf8(chunk).is_err() {
                return Err(self.malformed("text chunk is not UTF-8"));
            }
            out.extend_from_slice(chunk);
        }
        Ok(Cow::Owned(out))
    }

    /// How many items a definite container of `n` entries (each `per` items) can have at
    /// most, given the bytes left (each item takes at least one byte).
    pub(crate) fn count(&self, n: u64, per: u64) -> Result<usize, CborError> {
        match n.checked_mul(per) {
            Some(items) if items <= self.left() as u64 => Ok(n as usize),
            _ => Err(self.malformed("container longer than the payload")),
        }
    }

    /// Skips one item whose head was just read, checking only what it must to find its end.
    /// For payloads [`scan`] accepted; on others it returns an error (and recurses at most
    /// `depth_left` levels), never panics.
    pub(crate) fn skip_rest(&mut self, head: Head, depth_left: usize) -> Result<(), CborError> {
        let deeper = |c: &mut Cursor<'a>| -> Result<(), CborError> {
            let head = c.head()?;
            match depth_left.checked_sub(1) {
                Some(depth) => c.skip_rest(head, depth),
                None => Err(CborError::TooDeep),
            }
        };
        match (head.major, head.arg) {
            (2 | 3, arg) => self.string(head.major, arg).map(drop),
            (4 | 5, Arg::Value(n)) => {
                let per = if head.major == 4 { 1 } else { 2 };
                for _ in 0..self.count(n, per)? * per as usize {
                    deeper(self)?;
                }
                Ok(())
            }
            (4 | 5, Arg::Indefinite) => {
                while !self.at_break() {
                    deeper(self)?;
                    if head.major == 5 {
                        deeper(self)?;
                    }
                }
                Ok(())
            }
            (6, Arg::Value(_)) => deeper(self),
            (_, Arg::Indefinite) => Err(self.malformed("indefinite length where none is allowed")),
            _ => Ok(()),
        }
    }

    /// Skips the next item.
    pub(crate) fn skip(&mut self, depth_left: usize) -> Result<(), CborError> {
        let head = self.head()?;
        self.skip_rest(head, depth_left)
    }
}

/// A map key as RFC 8949 (5.6) compares them: text by its content (whatever head or chunks
/// spelled it), any other key by its canonical encoding (shortest heads, definite lengths,
/// floats by their value as a double).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key<'a> {
    /// A text key: its UTF-8 bytes.
    Text(Cow<'a, [u8]>),
    /// Any other key: its canonical encoding.
    Other(Vec<u8>),
}

impl Key<'_> {
    /// Whether this is the text key `name`.
    pub(crate) fn is(&self, name: &str) -> bool {
        matches!(self, Key::Text(text) if **text == *name.as_bytes())
    }

    /// The key for an error message.
    pub(crate) fn show(&self) -> String {
        match self {
            Key::Text(text) => format!("{:?}", String::from_utf8_lossy(text)),
            Key::Other(canonical) => {
                let hex: String = canonical.iter().map(|b| format!("{b:02x}")).collect();
                format!("(a key that is not text, CBOR {hex})")
            }
        }
    }
}

/// An entry of the top-level map, as [`scan`] found it.
#[derive(Debug, Clone)]
pub(crate) struct TopEntry<'a> {
    /// Its key.
    pub(crate) key: Key<'a>,
    /// Offset of its value in the payload.
    pub(crate) value: usize,
    /// A key that some map inside this entry (key or value, at any depth) has twice.
    pub(crate) duplicate: Option<String>,
}

/// What [`scan`] found in a payload that is one well-formed CBOR item.
#[derive(Debug, Clone)]
pub(crate) struct Scanned<'a> {
    /// The entries of the top-level map, in order; `None` when the item is not a map.
    pub(crate) entries: Option<Vec<TopEntry<'a>>>,
    /// A key the top-level map itself has twice.
    pub(crate) duplicate: Option<String>,
}

/// Checks that `bytes` is exactly one CBOR item, well-formed (RFC 8949, appendix F) and
/// nested at most `max_depth` deep (maps, arrays and tags each count as a level; the outermost
/// item is level 1), and finds the keys that maps have twice. The first problem in byte order
/// is the error. Never panics; work is linear in `bytes.len()` (plus sorting the keys of any
/// map with many), memory is one key per map entry on the path being read.
pub(crate) fn scan(bytes: &[u8], max_depth: usize) -> Result<Scanned<'_>, CborError> {
    let mut scanner = Scanner {
        cur: Cursor::at(bytes, 0),
        max_depth,
        keys: Vec::with_capacity(32),
        duplicate: None,
        top: None,
        top_duplicate: None,
    };
    scanner.item(1)?;
    let cur = &scanner.cur;
    if cur.pos != bytes.len() {
        return Err(CborError::Malformed(format!(
            "{} trailing bytes after the CBOR item (which ends at byte {}); a payload is \
             exactly one item",
            bytes.len() - cur.pos,
            cur.pos
        )));
    }
    Ok(Scanned {
        entries: scanner.top,
        duplicate: scanner.top_duplicate,
    })
}

/// Maps with more keys than this are checked for duplicates by sorting, fewer pairwise.
const PAIRWISE_KEYS: usize = 12;

struct Scanner<'a> {
    cur: Cursor<'a>,
    max_depth: usize,
    /// The keys of the maps being read, innermost last.
    keys: Vec<Key<'a>>,
    /// The first duplicate key found since the last top-level entry began.
    duplicate: Option<String>,
    /// The top-level map's entries, once it is read.
    top: Option<Vec<TopEntry<'a>>>,
    /// A key the top-level map has twice.
    top_duplicate: Option<String>,
}

impl<'a> Scanner<'a> {
    /// Checks that a container or tag at `depth` is within the limit.
    fn enter(&self, depth: usize) -> Result<(), CborError> {
        if depth > self.max_depth {
            Err(CborError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn item(&mut self, depth: usize) -> Result<(), CborError> {
        let head = self.cur.head()?;
        match (head.major, head.arg) {
            (0 | 1, Arg::Value(_)) => {}
            (0 | 1, Arg::Indefinite) => {
                return Err(self.cur.malformed("indefinite-length integer"))
            }
            (2 | 3, arg) => {
                self.cur.string(head.major, arg)?;
            }
            (4, arg) => {
                self.enter(depth)?;
                match arg {
                    Arg::Value(n) => {
                        for _ in 0..self.cur.count(n, 1)? {
                            self.item(depth + 1)?;
                        }
                    }
                    Arg::Indefinite => {
                        while !self.cur.at_break() {
                            self.item(depth + 1)?;
                        }
                    }
                }
            }
            (5, arg) => {
                self.enter(depth)?;
                self.map(depth, arg)?;
            }
            (6, Arg::Value(_)) => {
                self.enter(depth)?;
                self.item(depth + 1)?;
            }
            (6, Arg::Indefinite) => return Err(self.cur.malformed("indefinite-length tag")),
            (7, Arg::Indefinite) => return Err(self.cur.malformed("break outside a container")),
            // Two-byte simple values below 32 are not well-formed (RFC 8949, 3.3).
            (7, Arg::Value(n)) if head.info == 24 && n < 32 => {
                return Err(self.cur.malformed("simple value below 32 in two bytes"))
            }
            (7, Arg::Value(_)) => {}
            // A major type is three bits: every case is above.
            (8..=u8::MAX, _) => return Err(self.cur.malformed("impossible major type")),
        }
        Ok(())
    }

    /// The entries of a map whose head (at `depth`) was just read.
    fn map(&mut self, depth: usize, arg: Arg) -> Result<(), CborError> {
        let top = depth == 1;
        let base = self.keys.len();
        let mut entries = Vec::new();
        let mut remaining = match arg {
            Arg::Value(n) => Some(self.cur.count(n, 2)?),
            Arg::Indefinite => None,
        };
        loop {
            match &mut remaining {
                Some(0) => break,
                Some(n) => *n -= 1,
                None if self.cur.at_break() => break,
                None => {}
            }
            let start = self.cur.pos;
            self.item(depth + 1)?;
            let key = key_at(self.cur.bytes, start, self.max_depth)?;
            if self.keys.len() - base < PAIRWISE_KEYS && self.keys[base..].contains(&key) {
                let found = Some(key.show());
                if top {
                    self.top_duplicate = self.top_duplicate.take().or(found);
                } else {
                    self.duplicate = self.duplicate.take().or(found);
                }
            }
            self.keys.push(key);
            let value = self.cur.pos;
            self.item(depth + 1)?;
            if top {
                entries.push(TopEntry {
                    key: self.keys[self.keys.len() - 1].clone(),
                    value,
                    duplicate: self.duplicate.take(),
                });
            }
        }
        let keys = &mut self.keys[base..];
        if keys.len() > PAIRWISE_KEYS {
            keys.sort_unstable();
            if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
                let found = Some(pair[0].show());
                if top {
                    self.top_duplicate = self.top_duplicate.take().or(found);
                } else {
                    self.duplicate = self.duplicate.take().or(found);
                }
            }
        }
        self.keys.truncate(base);
        if top {
            self.top = Some(entries);
        }
        Ok(())
    }
}

/// The key whose item (already checked well-formed) starts at `start`.
fn key_at(bytes: &[u8], start: usize, max_depth: usize) -> Result<Key<'_>, CborError> {
    let mut cur = Cursor::at(bytes, start);
    let head = cur.head()?;
    if head.major == 3 {
        return cur.string(3, head.arg).map(Key::Text);
    }
    let mut out = Vec::new();
    canonical(&mut cur, head, &mut out, max_depth)?;
    Ok(Key::Other(out))
}

/// Writes the canonical encoding of the item whose head was just read: shortest heads,
/// definite lengths, strings joined, floats as the double they stand for.
fn canonical(
    cur: &mut Cursor<'_>,
    head: Head,
    out: &mut Vec<u8>,
    depth_left: usize,
) -> Result<(), CborError> {
    let nested = |cur: &mut Cursor<'_>, out: &mut Vec<u8>| -> Result<(), CborError> {
        let head = cur.head()?;
        let depth = depth_left.checked_sub(1).ok_or(CborError::TooDeep)?;
        canonical(cur, head, out, depth)
    };
    match (head.major, head.arg) {
        (2 | 3, arg) => {
            let content = cur.string(head.major, arg)?;
            push_head(out, head.major, content.len() as u64);
            out.extend_from_slice(&content);
        }
        (4 | 5, arg) => {
            // Written after the items, once their number is known.
            let mut items = Vec::new();
            let per = if head.major == 4 { 1 } else { 2 };
            let mut n = 0u64;
            match arg {
                Arg::Value(len) => {
                    for _ in 0..cur.count(len, per)? {
                        for _ in 0..per {
                            nested(cur, &mut items)?;
                        }
                        n += 1;
                    }
                }
                Arg::Indefinite => {
                    while !cur.at_break() {
                        for _ in 0..per {
                            nested(cur, &mut items)?;
                        }
                        n += 1;
                    }
                }
            }
            push_head(out, head.major, n);
            out.extend_from_slice(&items);
        }
        (6, Arg::Value(tag)) => {
            push_head(out, 6, tag);
            nested(cur, out)?;
        }
        (major, Arg::Value(n)) => match head.float() {
            Some(x) => {
                out.push(0xfb);
                out.extend_from_slice(&x.to_bits().to_be_bytes());
            }
            None => push_head(out, major, n),
        },
        (_, Arg::Indefinite) => {
            return Err(cur.malformed("indefinite length where none is allowed"))
        }
    }
    Ok(())
}

/// Writes the shortest CBOR head of `major` type with argument `n`.
pub(crate) fn push_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    // Each arm's range makes the narrowing exact.
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A half-precision float, exactly (NaN payloads kept in the high bits).
pub(crate) fn half_to_f64(h: u16) -> f64 {
    let sign = u64::from(h >> 15) << 63;
    let exp = (h >> 10) & 0x1f;
    let frac = u64::from(h & 0x3ff);
    let magnitude = match exp {
        0 => frac as f64 * (1.0 / 16_777_216.0), // 2^-24: subnormals (and zero)
        31 => return f64::from_bits(sign | (0x7ff << 52) | (frac << 42)),
        _ => (1024 + frac) as f64 * pow2(i32::from(exp) - 25),
    };
    f64::from_bits(sign | magnitude.to_bits())
}

/// A single-precision float, exactly (NaN payloads kept bit for bit, not quieted).
pub(crate) fn single_to_f64(bits: u32) -> f64 {
    let x = f32::from_bits(bits);
    if x.is_nan() {
        let sign = u64::from(bits >> 31) << 63;
        let frac = u64::from(bits & 0x7f_ffff);
        return f64::from_bits(sign | (0x7ff << 52) | (frac << 29));
    }
    f64::from(x)
}

/// 2^e for the exponents a half float needs (−24 … 5), exactly.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(bytes: &[u8]) -> Scanned<'_> {
        match scan(bytes, 16) {
            Ok(s) => s,
            Err(e) => panic!("{bytes:02x?}: {e:?}"),
        }
    }

    #[test]
    fn indefinite_lengths_are_well_formed() {
        scanned(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff]);
        scanned(&[0x9f, 0x01, 0x02, 0xff]);
        scanned(&[0xbf, 0x61, b'a', 0x01, 0xff]);
    }

    #[test]
    fn ill_formed_input_is_malformed() {
        for bytes in [
            &[][..],
            &[0x1c],                   // reserved additional information
            &[0x5f, 0x61, 0x61, 0xff], // text chunk in a byte string
            &[0x7f, 0x7f, 0xff, 0xff], // nested indefinite string
            &[0xf8, 0x10],             // two-byte simple value below 32
            &[0xff],                   // lone break
            &[0x82, 0x01, 0xff],       // break in a definite array
            &[0xbf, 0x01, 0xff],       // break where a map value belongs
            &[0x62, 0xc3, 0x28],       // invalid UTF-8
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // huge array
            &[0x1f],                   // indefinite integer
            &[0xdf, 0x01],             // indefinite tag
            &[0x01, 0x02],             // trailing byte
        ] {
            assert!(
                matches!(scan(bytes, 16), Err(CborError::Malformed(_))),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn depth_counts_containers_and_tags() {
        assert!(scan(&[0x81, 0x81, 0x00], 2).is_ok());
        assert_eq!(
            scan(&[0x81, 0x81, 0x81, 0x00], 2).err(),
            Some(CborError::TooDeep)
        );
        assert_eq!(
            scan(&[0x81, 0xc1, 0x81, 0x00], 2).err(),
            Some(CborError::TooDeep)
        );
        let deep = [0xc1u8; 100_000];
        assert_eq!(scan(&deep, 16).err(), Some(CborError::TooDeep));
        // The first problem in byte order wins: too deep before the bad byte after it.
        assert_eq!(
            scan(&[0x82, 0x81, 0x81, 0x81, 0x00, 0x1c], 2).err(),
            Some(CborError::TooDeep)
        );
    }

    #[test]
    fn top_level_entries_and_where_duplicates_are() {
        // {"a": {"x": 1, "x" (one-byte length head): 2}, "b": 3}
        let bytes = [
            0xa2, 0x61, b'a', 0xa2, 0x61, b'x', 0x01, 0x78, 0x01, b'x', 0x02, 0x61, b'b', 0x03,
        ];
        let s = scanned(&bytes);
        assert_eq!(s.duplicate, None);
        let entries = s.entries.unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].key.is("a") && entries[1].key.is("b"));
        assert_eq!(entries[0].duplicate.as_deref(), Some("\"x\""));
        assert_eq!(entries[1].duplicate, None);
        assert_eq!((entries[0].value, entries[1].value), (3, 13));
        // The top-level map's own keys, one spelled as indefinite text.
        let s = scanned(&[0xa2, 0x61, b'a', 0x01, 0x7f, 0x61, b'a', 0xff, 0x02]);
        assert_eq!(s.duplicate.as_deref(), Some("\"a\""));
        // Not a map.
        assert!(scanned(&[0x81, 0x01]).entries.is_none());
    }

    #[test]
    fn keys_compare_as_values() {
        let dup = |bytes: &[u8]| scanned(bytes).duplicate;
        // 1 and 1 with a longer head; 1.0 as half and as double; [1] definite and indefinite.
        assert!(dup(&[0xa2, 0x01, 0x00, 0x18, 0x01, 0x00]).is_some());
        let double_one = [0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
        assert!(
            dup(&[&[0xa2, 0xf9, 0x3c, 0x00, 0x00][..], &double_one, &[0x00]].concat()).is_some()
        );
        assert!(dup(&[0xa2, 0x81, 0x01, 0x00, 0x9f, 0x01, 0xff, 0x00]).is_some());
        // 1 and 1.0, 1 and "1", h'01' and "\x01" are different keys.
        assert!(dup(&[0xa2, 0x01, 0x00, 0xf9, 0x3c, 0x00, 0x00]).is_none());
        assert!(dup(&[0xa2, 0x01, 0x00, 0x61, b'1', 0x00]).is_none());
        assert!(dup(&[0xa2, 0x41, 0x01, 0x00, 0x61, 0x01, 0x00]).is_none());
        // Many keys: found by sorting.
        let mut many = alloc::vec![0xb8, 40];
        for i in 0..40u8 {
            many.extend_from_slice(&[0x18, 24 + i.min(38), 0x00]);
        }
        assert!(dup(&many).is_some());
        many[2 + 3 * 39 + 1] = 24 + 39;
        assert!(dup(&many).is_none());
    }

    #[test]
    fn strings_borrow_unless_chunked() {
        let bytes = [0x63, b'a', b'b', b'c'];
        let mut cur = Cursor::at(&bytes, 0);
        let head = cur.head().unwrap_or(Head {
            major: 0,
            info: 0,
            arg: Arg::Value(0),
        });
        assert!(matches!(cur.string(3, head.arg), Ok(Cow::Borrowed(b"abc"))));
    }
}
