//! The domain: typed identifiers and the values a customer's backend manipulates.
//!
//! Everything here is pure (std, serde, uuid, validator only) and cannot hold an invalid state:
//! adapters parse untrusted input into these types with `parse`/`TryFrom` and the rest of the
//! program never re-checks them. This module owns the rules that are properties of a single
//! value (a tag is at most 50 characters, an account id fits in a device token, an alias is
//! non-empty...). Rules that span several values (the 20-member cap, one session per
//! participant) belong to `control` and the store.

mod ids;
mod layout;
mod lifecycle;
mod negotiation;
mod participant;
mod quality;
mod subscription;

pub use ids::{AccountId, ParticipantId, SessionId, StreamId};
pub use layout::{LayoutLine, LineContent, PublishCredentials, StoredPhoneCall, SubscribeLayout};
pub use lifecycle::{CallEndReason, LifecycleEvent};
pub use negotiation::{DeclaredStreams, PublishAnswer, StreamMetadata, SubscribeOffer};
pub use participant::{
    CallbackUrl, DeviceApiVersion, MediaKind, MediaKinds, Participant, PublishPermissions, Session,
    Tag,
};
pub use quality::{
    ConnectionQuality, LevelWatch, ParticipantQuality, QualityDevice, QualityLevel, TrackQuality,
    STATS_INTERVAL_MS,
};
pub use subscription::{ParticipantSubscription, StreamAlias, SubscriptionRule, Subscriptions};

/// At most this many participants (phone callers included) may be members of one session.
pub const MAX_SESSION_MEMBERS: usize = 20;

/// Why a value could not be parsed into a domain type. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DomainError {
    /// The JSON field (or path segment) at fault, in the wire's spelling.
    pub field: &'static str,
    /// What is wrong with it, for a human.
    pub problem: String,
}

impl DomainError {
    /// Refuses text holding a control character (Unicode category Cc: NUL, the other C0
    /// controls, DEL and the C1 controls), naming `field` and the first offender. Free text is
    /// checked here, before any store sees it, so both database backends see the same values.
    pub(crate) fn reject_control_chars(field: &'static str, s: &str) -> Result<(), DomainError> {
        match s.chars().enumerate().find(|(_, c)| c.is_control()) {
            None => Ok(()),
            Some((at, c)) => Err(DomainError::new(
                field,
                format!(
                    "contains the control character U+{:04X} at character {at}; control characters are not allowed",
                    u32::from(c)
                ),
            )),
        }
    }

    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        DomainError {
            field,
            problem: problem.into(),
        }
    }
}
