//! Config errors, located by line and column so they read like compiler messages:
//! `agent.toml:3:13: device_id: ...`.

use std::fmt;
use std::path::PathBuf;

/// A position in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, when the text came from one.
    pub path: Option<PathBuf>,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text` (clamped to the text's end).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        // A span from the parser always starts on a character boundary; clamp defensively.
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            path: None,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}:{}:{}", path.display(), self.line, self.column),
            None => write!(f, "{}:{}", self.line, self.column),
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, does not match the schema, or holds an invalid value.
    #[error("{}{message}", prefix(.location))]
    Invalid {
        /// Where, when known (configs built in code have no location).
        location: Option<Location>,
        /// What is wrong, starting with the offending key.
        message: String,
    },
    /// Several problems in one file, in file order: each on its own line, then a count.
    #[error("{}", several(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// Where the error is (the first one's, for [`ConfigError::Several`]), if known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Invalid { location, .. } => location.as_ref(),
            ConfigError::Several(all) => all.first().and_then(ConfigError::location),
            ConfigError::Read { .. } => None,
        }
    }

    /// One error for `errors`: itself when there is one, [`ConfigError::Several`] otherwise.
    pub(crate) fn all(mut errors: Vec<ConfigError>) -> ConfigError {
        match errors.len() {
            1 => errors.remove(0),
            _ => ConfigError::Several(errors),
        }
    }

    /// Sets the file name of a located error.
    pub(crate) fn in_file(mut self, file: PathBuf) -> ConfigError {
        match &mut self {
            ConfigError::Invalid {
                location: Some(location),
                ..
            } => location.path = Some(file),
            ConfigError::Several(all) => {
                *all = std::mem::take(all)
                    .into_iter()
                    .map(|e| e.in_file(file.clone()))
                    .collect();
            }
            _ => {}
        }
        self
    }
}

fn several(all: &[ConfigError]) -> String {
    let mut text = String::new();
    for error in all {
        text.push_str(&error.to_string());
        text.push('\n');
    }
    text.push_str(&format!(
        "{} errors; fix them and run check again",
        all.len()
    ));
    text
}

fn prefix(location: &Option<Location>) -> String {
    location
        .as_ref()
        .map_or_else(String::new, |l| format!("{l}: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_character_columns() {
        let text = "a = 1\nbé = \"x\"\n\nz";
        let at = |o| {
            let l = Location::of_offset(text, o);
            (l.line, l.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(4), (1, 5));
        assert_eq!(at(6), (2, 1));
        // "bé" is 3 bytes but 2 characters.
        assert_eq!(at(10), (2, 4));
        assert_eq!(at(16), (3, 1));
        assert_eq!(at(17), (4, 1));
        assert_eq!(at(1000), (4, 2));
    }

    #[test]
    fn display_reads_like_a_compiler_message() {
        let err = ConfigError::Invalid {
            location: Some(Location {
                path: Some(PathBuf::from("agent.toml")),
                line: 3,
                column: 13,
            }),
            message: "device_id: bad".to_owned(),
        };
        assert_eq!(err.to_string(), "agent.toml:3:13: device_id: bad");
    }
}
