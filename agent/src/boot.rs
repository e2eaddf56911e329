//! The boot id that status messages carry, so that the cloud can tell a gateway reboot (new
//! id) from an agent restart or a reconnect (same id).

use std::sync::OnceLock;

/// Where Linux publishes a random id chosen at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id: Linux's `boot_id` (a UUID), or, where there is none, a random id chosen
/// once per agent start (so a restart then looks like a reboot, which is the safe side).
pub(crate) fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string(BOOT_ID_PATH)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.len() <= osprey_protocol::MAX_TEXT_BYTES)
            .unwrap_or_else(|| format!("agent-{:032x}", rand::random::<u128>()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_stable_within_a_process_and_matches_linux() {
        let id = boot_id();
        assert!(!id.is_empty() && id.len() <= osprey_protocol::MAX_TEXT_BYTES);
        assert_eq!(boot_id(), id);
        if let Ok(linux) = std::fs::read_to_string(BOOT_ID_PATH) {
            assert_eq!(id, linux.trim());
        }
    }
}
