//! Typed identifiers. Sessions and participants are UUIDs minted by the server; accounts are
//! short operator-chosen strings; streams are the publisher's MediaStream ids (msid).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DomainError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (v4) identifier.
            pub fn random() -> Self {
                $name(Uuid::new_v4())
            }

            /// Parses the canonical textual form.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                Uuid::parse_str(s)
                    .map($name)
                    .map_err(|_| DomainError::new($field, format!("{s:?} is not a UUID")))
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                $name(u)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, DomainError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A session (a "room"): a set of at most 20 member participants.
    SessionId,
    "sessionId"
);
uuid_id!(
    /// A participant: one device or phone leg, with its own token and subscriptions.
    ParticipantId,
    "participantId"
);

/// An account: the tenant that owns sessions and participants and holds API credentials.
///
/// 1 to 12 characters of `[A-Za-z0-9_-]`. The bound keeps every device token within 186
/// characters (reference §10), since the account id travels inside it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    /// The longest account id that still keeps device tokens within 186 characters.
    pub const MAX_LEN: usize = 12;

    /// Accepts 1 to [`Self::MAX_LEN`] characters of `[A-Za-z0-9_-]`; anything else names
    /// `accountId` in the error.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if s.is_empty() || s.len() > Self::MAX_LEN || !ok_chars {
            return Err(DomainError::new(
                "accountId",
                format!(
                    "{s:?} is not an account id (1 to {} characters of A-Z, a-z, 0-9, '_', '-')",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(AccountId(s.to_owned()))
    }

    /// The id exactly as the operator spelled it (case is kept).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A published media stream, named by the publisher's MediaStream id (the `a=msid` stream id).
///
/// Cheap to clone (shared), since forwarding tables hold it in every route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamId(std::sync::Arc<str>);

impl StreamId {
    /// Longest accepted msid stream id (RFC 8830 allows 64 characters).
    pub const MAX_LEN: usize = 64;

    /// Accepts 1 to [`Self::MAX_LEN`] visible ASCII characters (no space, no control
    /// character); anything else names `streamId` in the error.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok =
            !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(DomainError::new(
                "streamId",
                format!("{s:?} is not a stream id (1 to 64 visible ASCII characters)"),
            ));
        }
        Ok(StreamId(s.into()))
    }

    /// The msid stream id as the publisher's SDP carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_round_trip_and_reject_garbage() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(&id.to_string()), Ok(id));
        let err = ParticipantId::parse("nope").unwrap_err();
        assert_eq!(err.field, "participantId");
    }

    #[test]
    fn account_ids_are_bounded() {
        assert!(AccountId::parse("9900000").is_ok());
        assert!(AccountId::parse("abcdefghijkl").is_ok());
        assert!(AccountId::parse("abcdefghijklm").is_err());
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse("a b").is_err());
        assert!(AccountId::parse("a/b").is_err());
    }
}
