//! The Lambda's alert output: each applied raise and clear published to SNS once.
//!
//! The alert item is written with `notified = false` in the message's transaction. After the
//! transaction, the event is published and the item marked `notified = true`. If the publish
//! fails the record is returned for retry; when it comes again it is a duplicate, and a
//! duplicate alert whose item is still unmarked is published then. So a raise or clear is
//! published once whatever the redeliveries; only a crash between the publish and the mark
//! sends it twice (a FIFO topic drops that copy by its deduplication id; see
//! [`osprey_cloud::alerts`]).

use osprey_cloud::alerts::Notice;
use osprey_cloud::store::Message;

use crate::state::{Applied, DynamoState, StateError};

/// Publishes `message`'s alert event if it has one, an output is configured, and it was not
/// published yet (`applied` says whether this delivery applied it).
pub async fn notify(
    state: &DynamoState,
    message: &Message,
    applied: Applied,
) -> Result<(), StateError> {
    let (Some(output), Some(alert)) = (state.alerts(), &message.alert) else {
        return Ok(());
    };
    if applied == Applied::Duplicate {
        match state
            .alert_notified(&message.device, message.epoch, message.seq)
            .await?
        {
            Some(false) => {}
            // Notified before, or not stored by this deployment: nothing to send.
            Some(true) | None => return Ok(()),
        }
    }
    let notice = Notice::new(&message.device, message.epoch, message.seq, alert);
    output
        .publish(&notice)
        .await
        .map_err(|e| StateError::AlertOutput(e.to_string()))?;
    tracing::info!(id = %notice.id, subject = %notice.subject(), "alert published");
    state
        .mark_notified(&message.device, message.epoch, message.seq)
        .await
}
