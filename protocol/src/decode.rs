//! The decoder: payload bytes straight into the typed [`Envelope`], with no generic CBOR value
//! in between.
//!
//! ```text
//!  bytes ─► size ─► cbor::scan ─────────► read_header ──────────► decode_body ─► Envelope
//!                   well-formed, depth,    "v" "k" "d" "q" "j"     duplicate keys, series
//!                   trailing bytes,        "b" read where scan     count, then each key read
//!                   duplicate keys found   saw them                into its field, then limits
//! ```
//!
//! Two passes over the bytes, because `SPEC.md` ("Errors") fixes the order in which the checks
//! answer, and it is not byte order: a payload that is not well-formed is `Malformed` even if
//! its body, earlier in the bytes, is wrong too; the version is checked before the kind
//! whatever their order on the wire. The first pass ([`crate::cbor::scan`]) allocates nothing
//! but one key per map entry on its path and the top-level map's entries; the second reads
//! each known key into its field (text borrowed from the payload until it becomes the field's
//! `String`, columns into vectors sized from their CBOR heads) and skips unknown ones.
//!
//! The decoder that it replaced (a strict generic value tree, then serde) is kept as
//! `crate::reference` behind the `reference-decoder` feature: the differential tests feed both
//! the same payloads and require the same answer.

use alloc::{borrow::ToOwned, format, string::String, vec::Vec};

use crate::cbor::{Arg, CborError, Cursor, Head};
use crate::envelope::{
    Alert, AlertEvent, Body, ClockState, Envelope, Kind, Severity, Status, StatusState,
    FORMAT_VERSION, MAX_EPOCH,
};
use crate::error::DecodeError;
use crate::limit::{Limit, MAX_DEPTH, MAX_MESSAGE_BYTES};
use crate::telemetry::{SeriesIn, TelemetryBatch};

/// Decodes one message. Never panics; every failure is a [`DecodeError`].
///
/// Fields this version does not know are ignored whatever they hold (forward compatibility
/// within a major version); a newer major version or an unknown kind is an error. The payload
/// must be exactly one CBOR item with no map holding a key twice, and no known key may hold a
/// tag or a simple value (`SPEC.md`, "CBOR conventions" and "Errors"). Both the 1.0 and the 1.1
/// column forms of telemetry are read. A bundle (kind 4) is [`DecodeError::IsBundle`]: a
/// reader of transport payloads uses [`crate::decode_messages`], which takes both.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    read_header(bytes)?.message(decode_body)
}

/// What the `"k"` of a payload announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderKind {
    /// A message (kinds 1 to 3).
    Message(Kind),
    /// A bundle of messages (kind 4).
    Bundle,
}

/// The envelope keys of a payload, checked, and its body `B` not read yet: where it is
/// ([`BodyAt`]), or for the reference decoder a generic value.
#[derive(Debug)]
pub(crate) struct Header<B> {
    pub(crate) kind: HeaderKind,
    pub(crate) device: String,
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    pub(crate) body: B,
}

impl<B> Header<B> {
    /// The message, its body read by `body`; [`DecodeError::IsBundle`] for a bundle.
    pub(crate) fn message(
        self,
        body: impl FnOnce(Kind, B) -> Result<Body, DecodeError>,
    ) -> Result<Envelope, DecodeError> {
        let kind = match self.kind {
            HeaderKind::Message(kind) => kind,
            HeaderKind::Bundle => return Err(DecodeError::IsBundle),
        };
        Ok(Envelope {
            body: body(kind, self.body)?,
            device: self.device,
            seq: self.seq,
            epoch: self.epoch,
        })
    }

    /// The message or the bundle, read by `body` or `bundle`.
    pub(crate) fn decoded(
        self,
        body: impl FnOnce(Kind, B) -> Result<Body, DecodeError>,
        bundle: impl FnOnce(Header<B>) -> Result<crate::Bundle, DecodeError>,
    ) -> Result<crate::Decoded, DecodeError> {
        match self.kind {
            HeaderKind::Message(_) => self.message(body).map(crate::Decoded::Message),
            HeaderKind::Bundle => bundle(self).map(crate::Decoded::Bundle),
        }
    }
}

/// The body of a payload: a map at `pos` (checked by [`read_header`]).
#[derive(Debug)]
pub(crate) struct BodyAt<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
    /// A key some map of the body has twice, found by the scan.
    pub(crate) duplicate: Option<String>,
}

/// Checks the size, the CBOR (well-formed, depth, one item, duplicate keys outside `"b"`),
/// and reads the envelope keys, in the order `SPEC.md` gives ("Errors"): `v`, `k`, `d`, `q`,
/// `j`, `b`.
pub(crate) fn read_header(bytes: &[u8]) -> Result<Header<BodyAt<'_>>, DecodeError> {
    check_size(bytes)?;
    let scanned = crate::cbor::scan(bytes, MAX_DEPTH).map_err(cbor_error)?;
    let Some(entries) = scanned.entries else {
        return Err(DecodeError::Malformed("top level is not a map".to_owned()));
    };
    // A map with a key twice is not valid CBOR (RFC 8949, 5.6), wherever it is; under "b" it
    // is the body's fault (`InvalidBody`, checked with the body), anywhere else the envelope's.
    let duplicate = scanned.duplicate.or_else(|| {
        entries
            .iter()
            .filter(|e| !e.key.is("b"))
            .find_map(|e| e.duplicate.clone())
    });
    if let Some(key) = duplicate {
        return Err(duplicate_in_envelope(&key));
    }
    let find = |name: &str| entries.iter().find(|e| e.key.is(name));
    let head_at = |pos: usize| Cursor::at(bytes, pos).head().map_err(cbor_error);
    let uint = |name: &str| -> Result<u64, DecodeError> {
        let entry = find(name).ok_or_else(|| missing_field(name))?;
        match head_at(entry.value)? {
            Head {
                major: 0,
                arg: Arg::Value(n),
                ..
            } => Ok(n),
            _ => Err(not_uint(name)),
        }
    };

    check_version(uint("v")?)?;
    let kind = header_kind(uint("k")?)?;
    let device = match find("d") {
        Some(entry) => {
            let mut cur = Cursor::at(bytes, entry.value);
            let head = cur.head().map_err(cbor_error)?;
            if head.major != 3 {
                return Err(no_device());
            }
            let text = cur.string(3, head.arg).map_err(cbor_error)?;
            String::from_utf8(text.into_owned()).map_err(|_| no_device())?
        }
        None => return Err(no_device()),
    };
    let device = check_device(device)?;
    let seq = uint("q")?;
    let epoch = match find("j") {
        None => 0,
        Some(_) => check_epoch(uint("j")?)?,
    };
    let body = match find("b") {
        Some(entry) if head_at(entry.value)?.major == 5 => BodyAt {
            bytes,
            pos: entry.value,
            duplicate: entry.duplicate.clone(),
        },
        Some(_) => return Err(body_not_map()),
        None => return Err(missing_field("b")),
    };
    Ok(Header {
        kind,
        device,
        seq,
        epoch,
        body,
    })
}

/// `TooLarge` for a payload over [`MAX_MESSAGE_BYTES`].
pub(crate) fn check_size(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// The error for bytes that are not one well-formed item within the depth limit.
pub(crate) fn cbor_error(e: CborError) -> DecodeError {
    match e {
        // Maps, arrays and tags count towards the depth, the top-level map included.
        CborError::TooDeep => DecodeError::LimitExceeded {
            limit: Limit::Depth,
            found: MAX_DEPTH + 1,
        },
        CborError::Malformed(why) => DecodeError::Malformed(why),
    }
}

pub(crate) fn duplicate_in_envelope(key: &str) -> DecodeError {
    DecodeError::Malformed(format!("duplicate key {key} in a map of the envelope"))
}

pub(crate) fn missing_field(name: &str) -> DecodeError {
    DecodeError::Malformed(format!("missing field {name:?}"))
}

pub(crate) fn not_uint(name: &str) -> DecodeError {
    DecodeError::Malformed(format!("field {name:?} is not an unsigned integer"))
}

pub(crate) fn no_device() -> DecodeError {
    DecodeError::Malformed("missing or non-text field \"d\"".to_owned())
}

pub(crate) fn body_not_map() -> DecodeError {
    DecodeError::Malformed("field \"b\" is not a map".to_owned())
}

/// `"v"` must be the major version this crate reads.
pub(crate) fn check_version(version: u64) -> Result<(), DecodeError> {
    if version != u64::from(FORMAT_VERSION) {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// What the kind code `"k"` announces.
pub(crate) fn header_kind(code: u64) -> Result<HeaderKind, DecodeError> {
    match Kind::from_code(code) {
        Some(kind) => Ok(HeaderKind::Message(kind)),
        None if code == u64::from(crate::bundle::BUNDLE_KIND) => Ok(HeaderKind::Bundle),
        None => Err(DecodeError::UnknownKind(code)),
    }
}

/// `"d"` must be a valid device id.
pub(crate) fn check_device(device: String) -> Result<String, DecodeError> {
    if crate::valid_device_id(&device) {
        Ok(device)
    } else {
        Err(DecodeError::InvalidDevice(device))
    }
}

/// `"j"` must be at most [`MAX_EPOCH`].
pub(crate) fn check_epoch(epoch: u64) -> Result<u64, DecodeError> {
    if epoch > MAX_EPOCH {
        return Err(DecodeError::Malformed(format!(
            "field \"j\" is {epoch}, over the largest journal epoch {MAX_EPOCH}"
        )));
    }
    Ok(epoch)
}

pub(crate) fn over_limit((limit, found): (Limit, usize)) -> DecodeError {
    DecodeError::LimitExceeded { limit, found }
}

/// Reads the body of a message of `kind` ([`read_header`] checked that it is a map) into its
/// type, in the order of `SPEC.md` ("Errors"): duplicate keys, the series count, every known
/// key's type and the forms (all `InvalidBody`), then the text and count limits.
pub(crate) fn decode_body(kind: Kind, body: BodyAt<'_>) -> Result<Body, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidBody {
        kind: kind.topic_level(),
        reason,
    };
    if let Some(key) = body.duplicate {
        return Err(invalid(format!("duplicate key {key} in a map of the body")));
    }
    let mut r = Reader {
        cur: Cursor::at(body.bytes, body.pos),
    };
    let head = r.head().map_err(|found| invalid(found.into()))?;
    Ok(match kind {
        Kind::Telemetry => {
            let batch = telemetry(&mut r, head.arg)?;
            for s in &batch.series {
                s.check_limits().map_err(over_limit)?;
            }
            Body::Telemetry(batch)
        }
        Kind::Alert => {
            let alert = alert(&mut r, head.arg).map_err(invalid)?;
            alert.check_limits().map_err(over_limit)?;
            Body::Alert(alert)
        }
        Kind::Status => {
            let status = status(&mut r, head.arg).map_err(invalid)?;
            status.check_limits().map_err(over_limit)?;
            Body::Status(status)
        }
    })
}

/// Reads typed values from a payload [`crate::cbor::scan`] accepted. A value of the wrong type
/// is described as what was found (`Err(found)`); the caller says what was expected, where.
pub(crate) struct Reader<'a> {
    pub(crate) cur: Cursor<'a>,
}

/// What stood where a value of a spec type was expected; made into text only for an error.
#[derive(Debug)]
pub(crate) enum Found {
    /// An item of another type, or an integer out of the field's range, by its head.
    Item(Head),
    /// Text naming no variant.
    Name(String),
    /// An item that does not read. The scan accepted the payload, so this is a broken
    /// internal rule, answered as an error all the same.
    IllFormed(CborError),
}

impl From<Found> for String {
    fn from(found: Found) -> String {
        match found {
            Found::Item(head) => head.describe(),
            Found::Name(text) => format!("the text {text:?}"),
            Found::IllFormed(e) => format!("an ill-formed item ({e:?})"),
        }
    }
}

const TEXT: &str = "text";

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn head(&mut self) -> Result<Head, Found> {
        self.cur.head().map_err(Found::IllFormed)
    }

    /// Skips the value of an unknown key, whatever it holds.
    pub(crate) fn skip(&mut self) -> Result<(), Found> {
        self.cur.skip(MAX_DEPTH).map_err(Found::IllFormed)
    }

    #[inline]
    fn uint(&mut self) -> Result<u64, Found> {
        match self.head()? {
            Head {
                major: 0,
                arg: Arg::Value(n),
                ..
            } => Ok(n),
            other => Err(Found::Item(other)),
        }
    }

    #[inline]
    fn int(&mut self) -> Result<i64, Found> {
        let head = self.head()?;
        let n = match (head.major, head.arg) {
            (0, Arg::Value(n)) => i64::try_from(n).ok(),
            // -1 - n, which is within i64 exactly when n is.
            (1, Arg::Value(n)) => i64::try_from(n).ok().map(|n| -1 - n),
            _ => None,
        };
        n.ok_or(Found::Item(head))
    }

    #[inline]
    fn uint_below<T: TryFrom<u64>>(&mut self) -> Result<T, Found> {
        let head = self.head()?;
        match head.arg {
            Arg::Value(n) if head.major == 0 => T::try_from(n).map_err(|_| Found::Item(head)),
            _ => Err(Found::Item(head)),
        }
    }

    #[inline]
    fn float(&mut self) -> Result<f64, Found> {
        let head = self.head()?;
        head.float().ok_or(Found::Item(head))
    }

    pub(crate) fn text(&mut self) -> Result<String, Found> {
        let head = self.head()?;
        if head.major != 3 {
            return Err(Found::Item(head));
        }
        let text = self.cur.string(3, head.arg).map_err(Found::IllFormed)?;
        String::from_utf8(text.into_owned())
            .map_err(|_| Found::IllFormed(self.cur.malformed("text is not UTF-8")))
    }

    /// An array, each item read by `item`.
    #[inline]
    fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, Found>,
    ) -> Result<Vec<T>, Found> {
        let head = self.head()?;
        if head.major != 4 {
            return Err(Found::Item(head));
        }
        let mut out = Vec::new();
        match head.arg {
            // The scan checked that the payload holds that many items.
            Arg::Value(n) => {
                out.reserve_exact(n as usize);
                for _ in 0..n {
                    out.push(item(self)?);
                }
            }
            Arg::Indefinite => {
                while !self.cur.at_break() {
                    out.push(item(self)?);
                }
            }
        }
        Ok(out)
    }

    /// The entries of a map whose head (argument `arg`) was just read: `each` gets the key's
    /// text (`None` for a key that is not text) and must read or skip the value.
    pub(crate) fn entries<E: From<Found>>(
        &mut self,
        arg: Arg,
        mut each: impl FnMut(&mut Self, Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut remaining = match arg {
            Arg::Value(n) => Some(n),
            Arg::Indefinite => None,
        };
        loop {
            match &mut remaining {
                Some(0) => return Ok(()),
                Some(n) => *n -= 1,
                None if self.cur.at_break() => return Ok(()),
                None => {}
            }
            let head = self.head()?;
            if head.major == 3 {
                let key = self.cur.string(3, head.arg).map_err(Found::IllFormed)?;
                each(self, Some(&key))?;
            } else {
                self.cur
                    .skip_rest(head, MAX_DEPTH)
                    .map_err(Found::IllFormed)?;
                each(self, None)?;
            }
        }
    }

    /// How many items the array whose head was just read has (an indefinite one is counted
    /// without moving).
    pub(crate) fn items(&self, arg: Arg) -> Result<usize, Found> {
        match arg {
            Arg::Value(n) => Ok(n as usize),
            Arg::Indefinite => {
                let mut ahead = self.cur.clone();
                let mut n = 0;
                while !ahead.at_break() {
                    ahead.skip(MAX_DEPTH).map_err(Found::IllFormed)?;
                    n += 1;
                }
                Ok(n)
            }
        }
    }
}

/// "key "x" must be …; found …".
fn mismatch(context: &str, key: &str, expected: &str, found: Found) -> String {
    format!(
        "{context}key {key:?} must be {expected}; found {}",
        String::from(found)
    )
}

/// Why a telemetry body fails: a schema error, or too many series.
enum Fail {
    Invalid(String),
    Over((Limit, usize)),
}

impl From<Found> for Fail {
    fn from(found: Found) -> Fail {
        Fail::Invalid(found.into())
    }
}

/// A telemetry body: `{"s": [series, …]}`.
fn telemetry(r: &mut Reader<'_>, arg: Arg) -> Result<TelemetryBatch, DecodeError> {
    let mut series = None;
    let read = r.entries(arg, |r, key| -> Result<(), Fail> {
        if key != Some(b"s") {
            return Ok(r.skip()?);
        }
        let head = r.head()?;
        if head.major != 4 {
            let found = Found::Item(head);
            return Err(Fail::Invalid(mismatch(
                "",
                "s",
                "an array of series",
                found,
            )));
        }
        // Counted before any series is read (`SPEC.md`, "Errors": counts before types).
        let n = r.items(head.arg)?;
        Limit::SeriesPerBatch.check(n).map_err(Fail::Over)?;
        let mut out = Vec::with_capacity(n);
        for index in 0..n {
            out.push(one_series(r, index).map_err(Fail::Invalid)?);
        }
        if head.arg == Arg::Indefinite && !r.cur.at_break() {
            return Err(Fail::Invalid("the series array does not end".to_owned()));
        }
        series = Some(out);
        Ok(())
    });
    let invalid = |reason: String| DecodeError::InvalidBody {
        kind: Kind::Telemetry.topic_level(),
        reason,
    };
    match (read, series) {
        (Err(Fail::Invalid(reason)), _) => Err(invalid(reason)),
        (Err(Fail::Over(over)), _) => Err(over_limit(over)),
        (Ok(()), Some(series)) => Ok(TelemetryBatch { series }),
        (Ok(()), None) => Err(invalid("missing key \"s\"".to_owned())),
    }
}

/// Series `index` of a telemetry body.
fn one_series(r: &mut Reader<'_>, index: usize) -> Result<crate::Series, String> {
    let head = r.head()?;
    if head.major != 5 {
        return Err(format!("series {index} is {}", head.describe()));
    }
    let mut w = SeriesIn::default();
    let (mut n, mut m, mut t) = (None, None, None);
    const INTS: &str = "an array of integers";
    const DELTA: &str = "an unsigned integer below 2^32";
    r.entries(head.arg, |r, key| -> Result<(), String> {
        let bad = |name: &'static str, expected: &'static str| {
            move |found| mismatch(&format!("series {index}: "), name, expected, found)
        };
        match key.unwrap_or_default() {
            b"n" => n = Some(r.text().map_err(bad("n", TEXT))?),
            b"m" => m = Some(r.text().map_err(bad("m", TEXT))?),
            b"u" => w.u = r.text().map_err(bad("u", TEXT))?,
            b"t" => t = Some(r.int().map_err(bad("t", "an integer"))?),
            b"dt" => {
                let dt = r.array(Reader::uint_below::<u32>);
                w.dt = Some(dt.map_err(bad("dt", "an array of unsigned integers below 2^32"))?);
            }
            b"p" => w.p = Some(r.uint_below::<u32>().map_err(bad("p", DELTA))?),
            b"e" => w.e = Some(r.array(Reader::int).map_err(bad("e", INTS))?),
            b"x" => {
                w.x = Some(
                    r.array(Reader::float)
                        .map_err(bad("x", "an array of floats"))?,
                )
            }
            b"s" => {
                let scale = r.uint_below::<u8>();
                w.s = Some(scale.map_err(bad("s", "an unsigned integer below 256"))?);
            }
            b"xi" => w.xi = Some(r.array(Reader::int).map_err(bad("xi", INTS))?),
            _ => r.skip()?,
        }
        Ok(())
    })?;
    let missing = |name: &str| format!("series {index}: missing key {name:?}");
    w.n = n.ok_or_else(|| missing("n"))?;
    w.m = m.ok_or_else(|| missing("m"))?;
    w.t = t.ok_or_else(|| missing("t"))?;
    w.into_series()
}

/// One of `names` (the wire names of an enum's variants, in the order of `values`).
fn name_of<T: Copy>(r: &mut Reader<'_>, names: &[&str], values: &[T]) -> Result<T, Found> {
    let text = r.text()?;
    names
        .iter()
        .position(|name| *name == text)
        .and_then(|i| values.get(i).copied())
        .ok_or(Found::Name(text))
}

/// An alert body: every key required.
fn alert(r: &mut Reader<'_>, arg: Arg) -> Result<Alert, String> {
    let (mut rule, mut sensor, mut metric) = (None, None, None);
    let (mut event, mut severity) = (None, None);
    let (mut value, mut threshold, mut time) = (None, None, None);
    r.entries(arg, |r, key| -> Result<(), String> {
        let bad = |name: &'static str, expected: &'static str| {
            move |found| mismatch("", name, expected, found)
        };
        match key.unwrap_or_default() {
            b"r" => rule = Some(r.text().map_err(bad("r", TEXT))?),
            b"n" => sensor = Some(r.text().map_err(bad("n", TEXT))?),
            b"m" => metric = Some(r.text().map_err(bad("m", TEXT))?),
            b"e" => {
                let e = name_of(
                    r,
                    &["raise", "clear"],
                    &[AlertEvent::Raise, AlertEvent::Clear],
                );
                event = Some(e.map_err(bad("e", "\"raise\" or \"clear\""))?);
            }
            b"l" => {
                let names = ["info", "warning", "critical"];
                let values = [Severity::Info, Severity::Warning, Severity::Critical];
                let l = name_of(r, &names, &values);
                severity = Some(l.map_err(bad("l", "\"info\", \"warning\" or \"critical\""))?);
            }
            b"x" => value = Some(r.float().map_err(bad("x", "a float"))?),
            b"h" => threshold = Some(r.float().map_err(bad("h", "a float"))?),
            b"t" => time = Some(r.int().map_err(bad("t", "an integer"))?),
            _ => r.skip()?,
        }
        Ok(())
    })?;
    let missing = |name: &str| format!("missing key {name:?}");
    Ok(Alert {
        rule: rule.ok_or_else(|| missing("r"))?,
        sensor: sensor.ok_or_else(|| missing("n"))?,
        metric: metric.ok_or_else(|| missing("m"))?,
        event: event.ok_or_else(|| missing("e"))?,
        severity: severity.ok_or_else(|| missing("l"))?,
        value: value.ok_or_else(|| missing("x"))?,
        threshold: threshold.ok_or_else(|| missing("h"))?,
        time_ms: time.ok_or_else(|| missing("t"))?,
    })
}

/// A status body: `"st"` required, every other key defaulted.
fn status(r: &mut Reader<'_>, arg: Arg) -> Result<Status, String> {
    let mut s = Status::new(StatusState::Online);
    let mut state = None;
    const COUNTER: &str = "an unsigned integer";
    r.entries(arg, |r, key| -> Result<(), String> {
        let bad = |name: &'static str, expected: &'static str| {
            move |found| mismatch("", name, expected, found)
        };
        match key.unwrap_or_default() {
            b"st" => {
                let names = ["online", "offline"];
                let st = name_of(r, &names, &[StatusState::Online, StatusState::Offline]);
                state = Some(st.map_err(bad("st", "\"online\" or \"offline\""))?);
            }
            b"av" => s.agent_version = r.text().map_err(bad("av", TEXT))?,
            b"up" => s.uptime_s = r.uint().map_err(bad("up", COUNTER))?,
            b"bl" => s.backlog = r.uint().map_err(bad("bl", COUNTER))?,
            b"dr" => s.dropped = r.uint().map_err(bad("dr", COUNTER))?,
            b"t" => s.time_ms = r.int().map_err(bad("t", "an integer"))?,
            b"wq" => s.will_seq = r.uint().map_err(bad("wq", COUNTER))?,
            b"bb" => s.backlog_bytes = r.uint().map_err(bad("bb", COUNTER))?,
            b"dq" => s.dropped_quota = r.uint().map_err(bad("dq", COUNTER))?,
            b"bi" => s.boot_id = r.text().map_err(bad("bi", TEXT))?,
            b"cs" => s.clock = ClockState::from_name(&r.text().map_err(bad("cs", TEXT))?),
            b"jr" => s.journal_resets = r.uint().map_err(bad("jr", COUNTER))?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    s.state = state.ok_or_else(|| "missing key \"st\"".to_owned())?;
    Ok(s)
}
