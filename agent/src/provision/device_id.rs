//! Writes the thing name that fleet provisioning returned into the agent's config file as its
//! `device_id`, changing only the bytes of that value: comments, layout and every other key
//! stay as the operator wrote them (the file is a hand-edited TOML, not ours to reformat).

use std::path::Path;

use super::ProvisionError;

/// Only the top-level `device_id`, with its place in the text.
#[derive(serde::Deserialize)]
struct DeviceIdOnly {
    device_id: Option<toml::Spanned<String>>,
}

/// `text` with its top-level `device_id` set to `id` (added as the first line if absent).
pub fn set_in_text(text: &str, id: &str) -> Result<String, String> {
    if !osprey_protocol::valid_device_id(id) {
        return Err(format!("{id:?} is not a valid device id"));
    }
    let parsed: DeviceIdOnly = toml::from_str(text).map_err(|e| e.to_string())?;
    // Valid ids are plain ASCII without quotes or backslashes, so this is a TOML basic string.
    let value = format!("\"{id}\"");
    let out = match parsed.device_id {
        Some(spanned) => {
            let span = spanned.span();
            let mut out = String::with_capacity(text.len() + id.len());
            out.push_str(&text[..span.start]);
            out.push_str(&value);
            out.push_str(&text[span.end..]);
            out
        }
        None => format!("device_id = {value}\n{text}"),
    };
    // The edit must read back as the new id and nothing else: check it.
    let check: DeviceIdOnly = toml::from_str(&out).map_err(|e| e.to_string())?;
    match check.device_id {
        Some(v) if v.get_ref() == id => Ok(out),
        _ => Err("the edited file does not read back with the new device_id".into()),
    }
}

/// Sets `device_id = "id"` in the config file at `path`, replacing it whole (never half
/// written).
pub fn set_in_file(path: &Path, id: &str) -> Result<(), ProvisionError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProvisionError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let fail = |reason| ProvisionError::Config {
        path: path.to_owned(),
        reason,
    };
    let out = set_in_text(&text, id).map_err(fail)?;
    crate::atomic_file::replace(path, out.as_bytes(), false).map_err(|source| {
        ProvisionError::File {
            action: "write",
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_value_and_keeps_comments() {
        let text = "# image config\ndevice_id = \"unprovisioned\" # set by provision\n\n[mqtt]\nhost = \"h\"\n# device_id = \"no\"\n";
        let out = set_in_text(text, "gw-0001").unwrap();
        assert_eq!(
            out,
            "# image config\ndevice_id = \"gw-0001\" # set by provision\n\n[mqtt]\nhost = \"h\"\n# device_id = \"no\"\n"
        );
    }

    #[test]
    fn adds_the_key_when_absent_and_leaves_tables_alone() {
        let text = "[mqtt]\ndevice_id_like = 1\nhost = \"h\"\n";
        let out = set_in_text(text, "gw-2").unwrap();
        assert!(out.starts_with("device_id = \"gw-2\"\n[mqtt]"), "{out}");
    }

    #[test]
    fn refuses_invalid_ids_and_invalid_toml() {
        assert!(set_in_text("device_id = \"a\"\n", "a\"b").is_err());
        assert!(set_in_text("device_id = \n", "a").is_err());
    }
}
