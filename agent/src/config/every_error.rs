//! Every structural error of a config file at once, in file order.
//!
//! serde stops at the first value that does not fit the schema, so a file with a typo in
//! `[mqtt]` and a wrong type in `[[rules]]` would take two rounds of `check` to fix. When the
//! strict parse fails, this module parses the text again into toml's spanned document
//! ([`DeTable`]), and repeats: deserialize the schema from the document, record the error,
//! remove the value it points at (the smallest key/value pair, or the whole `[[…]]` entry,
//! that contains the error's position), until the rest deserializes. Syntax errors are all
//! reported by toml's recovering parser instead.
//!
//! No error is invented: a "missing field" error after a removal may only be the removal's
//! doing, so it is not reported and the table it names is removed in turn (a field that is
//! really missing there shows on the next `check`); an error without a position stops the
//! search.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfigError, Location};
use super::raw::AgentConfig;

/// At most this many errors are collected (each costs one deserialization of the document).
const MAX_ERRORS: usize = 50;

/// Every error of `text`, whose strict parse failed with `first`, ordered by position.
pub(crate) fn structural_errors(text: &str, first: &toml::de::Error) -> Vec<ConfigError> {
    let (mut document, syntax) = DeTable::parse_recoverable(text);
    let mut found: Vec<(usize, ConfigError)> = Vec::new();
    if !syntax.is_empty() {
        found.extend(syntax.iter().map(|e| located(text, e)));
    } else {
        for _ in 0..MAX_ERRORS {
            let Err(error) =
                AgentConfig::deserialize(toml::de::Deserializer::from(document.clone()))
            else {
                break;
            };
            let missing = error.message().starts_with("missing field");
            if missing && !found.is_empty() {
                // Possibly the doing of a removal: not reported; its table goes too, and the
                // search goes on past it.
                match error.span() {
                    Some(span) if remove_containing(document.get_mut(), span.start) => continue,
                    _ => break,
                }
            }
            let Some(span) = error.span() else {
                found.push(located(text, &error));
                break;
            };
            found.push(located(text, &error));
            if missing || !remove_containing(document.get_mut(), span.start) {
                break;
            }
        }
    }
    if found.is_empty() {
        found.push(located(text, first));
    }
    found.sort_by_key(|(offset, _)| *offset);
    found.dedup_by(|a, b| a.0 == b.0 && a.1.to_string() == b.1.to_string());
    found.into_iter().map(|(_, error)| error).collect()
}

/// A toml error as a located [`ConfigError`], with its byte offset (the end of the text when
/// it has none, so it sorts last).
fn located(text: &str, error: &toml::de::Error) -> (usize, ConfigError) {
    let offset = error.span().map_or(text.len(), |s| s.start);
    (
        offset,
        ConfigError::Invalid {
            location: error.span().map(|s| Location::of_offset(text, s.start)),
            message: error.message().trim_end().to_owned(),
        },
    )
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Whether `value`, or anything inside it, has a key or value span holding `offset` (a
/// `[table]` header's span does not cover its body, so containment is found at the leaves).
fn holds(value: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    if contains(&value.span(), offset) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .any(|(k, v)| contains(&k.span(), offset) || holds(v, offset)),
        DeValue::Array(array) => array.iter().any(|v| holds(v, offset)),
        _ => false,
    }
}

/// Removes from `table` the smallest key/value pair, or array-of-tables entry, holding
/// `offset`; whether anything was removed.
fn remove_containing<'i>(table: &mut DeTable<'i>, offset: usize) -> bool {
    let mut hit: Option<Spanned<toml::de::DeString<'i>>> = None;
    for (key, value) in table.iter_mut() {
        let here = contains(&key.span(), offset) || contains(&value.span(), offset);
        if !here && !holds(value, offset) {
            continue;
        }
        let removed_inside = !here
            && match value.get_mut() {
                DeValue::Table(inner) => remove_containing(inner, offset),
                DeValue::Array(array) => remove_entry(array, offset),
                _ => false,
            };
        if removed_inside {
            return true;
        }
        hit = Some(key.clone());
        break;
    }
    match hit {
        Some(key) => table.remove(&key).is_some(),
        None => false,
    }
}

/// Removes the entry of `array` that holds `offset`; whether there was one.
fn remove_entry(array: &mut toml::de::DeArray<'_>, offset: usize) -> bool {
    let Some(i) = array.iter().position(|v| holds(v, offset)) else {
        return false;
    };
    let mut kept = toml::de::DeArray::new();
    for (j, v) in array.iter().enumerate() {
        if j != i {
            kept.push(v.clone());
        }
    }
    *array = kept;
    true
}
