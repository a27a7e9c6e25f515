//! Participants and sessions as the customer's backend sees them, and the small values they carry.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AccountId, DomainError, ParticipantId, SessionId, Subscriptions};

/// A free-form label on a session or participant: at most 50 characters, no control
/// character, no uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// The longest tag, counted in Unicode scalar values (characters), not bytes.
    pub const MAX_CHARS: usize = 50;

    /// Accepts any string of at most [`Self::MAX_CHARS`] characters without a control
    /// character, the empty string included.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        DomainError::reject_control_chars("tag", s)?;
        let n = s.chars().count();
        if n > Self::MAX_CHARS {
            return Err(DomainError::new(
                "tag",
                format!(
                    "is {n} characters long; at most {} are allowed",
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(Tag(s.to_owned()))
    }

    /// The tag exactly as the backend sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where lifecycle webhooks for a participant go: an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallbackUrl(String);

impl CallbackUrl {
    /// The longest accepted URL, in bytes.
    pub const MAX_LEN: usize = 2048;

    /// Accepts a syntactically valid URL starting with `http://` or `https://` of at most
    /// [`Self::MAX_LEN`] bytes, without a control character or credentials (`user:pass@`).
    /// Reachability is not checked; where deliveries may go is the webhook runtime's
    /// decision (`webhooks::Destinations`), made at each delivery.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let url = Self::stored(s)?;
        if let Some((_, rest)) = s.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            if authority.contains('@') {
                return Err(DomainError::new(
                    "callbackUrl",
                    "must not carry credentials (user:password@): webhooks are authenticated \
                     by their signature",
                ));
            }
        }
        Ok(url)
    }

    /// What [`CallbackUrl::parse`] accepted before URLs with credentials were refused: for
    /// URLs read back from the store, which must load (their deliveries are refused).
    pub fn stored(s: &str) -> Result<Self, DomainError> {
        use validator::ValidateUrl;
        DomainError::reject_control_chars("callbackUrl", s)?;
        let http = s.starts_with("http://") || s.starts_with("https://");
        if s.len() > Self::MAX_LEN || !http || !s.validate_url() {
            return Err(DomainError::new(
                "callbackUrl",
                format!(
                    "{s:?} is not an absolute http(s) URL of at most {} bytes",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(CallbackUrl(s.to_owned()))
    }

    /// The URL exactly as the backend sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A kind of media a participant may publish or a stream may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MediaKind {
    /// Audio; `"AUDIO"` on the wire.
    Audio,
    /// Video; `"VIDEO"` on the wire.
    Video,
}

impl MediaKind {
    /// The wire spelling: `"AUDIO"` or `"VIDEO"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "AUDIO",
            MediaKind::Video => "VIDEO",
        }
    }

    /// Parses the wire spelling, which is case-sensitive (`"audio"` is refused).
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        match s {
            "AUDIO" => Ok(MediaKind::Audio),
            "VIDEO" => Ok(MediaKind::Video),
            other => Err(DomainError::new(
                "publishPermissions",
                format!("unknown media type {other:?} (expected \"AUDIO\" or \"VIDEO\")"),
            )),
        }
    }
}

/// A set of media kinds, always listed in the order AUDIO, VIDEO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MediaKinds {
    /// Whether [`MediaKind::Audio`] is in the set.
    pub audio: bool,
    /// Whether [`MediaKind::Video`] is in the set.
    pub video: bool,
}

impl MediaKinds {
    /// The empty set (serialized as `[]`).
    pub const NONE: MediaKinds = MediaKinds {
        audio: false,
        video: false,
    };
    /// Audio only.
    pub const AUDIO: MediaKinds = MediaKinds {
        audio: true,
        video: false,
    };
    /// Video only.
    pub const VIDEO: MediaKinds = MediaKinds {
        audio: false,
        video: true,
    };
    /// Audio and video; the default publish permission of a new participant.
    pub const ALL: MediaKinds = MediaKinds {
        audio: true,
        video: true,
    };

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: MediaKind) -> bool {
        match kind {
            MediaKind::Audio => self.audio,
            MediaKind::Video => self.video,
        }
    }

    /// The kinds present in both sets (e.g. what a publisher may send and a stream carries).
    pub fn intersect(self, other: MediaKinds) -> MediaKinds {
        MediaKinds {
            audio: self.audio && other.audio,
            video: self.video && other.video,
        }
    }

    /// Whether the set holds no kind at all.
    pub fn is_empty(self) -> bool {
        !self.audio && !self.video
    }

    /// The kinds in the set, audio before video.
    pub fn iter(self) -> impl Iterator<Item = MediaKind> {
        [
            (self.audio, MediaKind::Audio),
            (self.video, MediaKind::Video),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
    }

    /// Duplicates are folded; order does not matter.
    pub fn from_kinds(kinds: impl IntoIterator<Item = MediaKind>) -> MediaKinds {
        kinds.into_iter().fold(MediaKinds::NONE, |acc, k| match k {
            MediaKind::Audio => MediaKinds { audio: true, ..acc },
            MediaKind::Video => MediaKinds { video: true, ..acc },
        })
    }

    /// Compact storage form: `"AUDIO,VIDEO"`, `"AUDIO"`, `""`.
    pub fn to_csv(self) -> String {
        self.iter()
            .map(MediaKind::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses the storage form written by [`Self::to_csv`]; empty items are skipped and
    /// duplicates folded.
    pub fn from_csv(s: &str) -> Result<MediaKinds, DomainError> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(MediaKind::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(MediaKinds::from_kinds)
    }
}

impl Serialize for MediaKinds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// What a participant is allowed to publish. Media of other kinds is refused by the media plane.
pub type PublishPermissions = MediaKinds;

/// The device signalling protocol version a participant was created for.
///
/// Accepted case-insensitively (`"v3"`, `"V2"` both occur in the wild) and echoed upper-case.
/// Tokens are always minted for protocol v3 whatever this says (reference §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceApiVersion {
    /// Version 2: accepted and echoed for compatibility only; devices still speak v3.
    V2,
    /// Version 3: the protocol this server speaks, and the default when none is given.
    #[default]
    V3,
}

impl DeviceApiVersion {
    /// Parses `"v2"` or `"v3"` in any case; anything else names `deviceApiVersion`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.eq_ignore_ascii_case("v3") {
            Ok(DeviceApiVersion::V3)
        } else if s.eq_ignore_ascii_case("v2") {
            Ok(DeviceApiVersion::V2)
        } else {
            Err(DomainError::new(
                "deviceApiVersion",
                format!("unknown version {s:?} (expected \"V3\")"),
            ))
        }
    }

    /// The upper-case form echoed to the backend: `"V2"` or `"V3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceApiVersion::V2 => "V2",
            DeviceApiVersion::V3 => "V3",
        }
    }
}

impl fmt::Display for DeviceApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for DeviceApiVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A participant as stored: its attributes, its (at most one) session and its subscriptions there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// Minted by the server when the participant is created; never reused.
    pub id: ParticipantId,
    /// The account that created it; only that account may see or change it.
    pub account: AccountId,
    /// Where its lifecycle webhooks go, if the backend gave a URL.
    pub callback_url: Option<CallbackUrl>,
    /// The media kinds its device may publish.
    pub publish_permissions: PublishPermissions,
    /// The backend's free-form label, if it gave one.
    pub tag: Option<Tag>,
    /// The protocol version it was created for (echoed; tokens are always v3).
    pub device_api_version: DeviceApiVersion,
    /// The session it is a member of, if any ("capped to one").
    pub session: Option<SessionId>,
    /// Its subscription rules in that session; empty when it is in no session.
    pub subscriptions: Subscriptions,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Minted by the server when the session is created; never reused.
    pub id: SessionId,
    /// The account that created it; only that account may see or change it.
    pub account: AccountId,
    /// The backend's free-form label, if it gave one.
    pub tag: Option<Tag>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_count_characters_not_bytes() {
        assert!(Tag::parse(&"é".repeat(50)).is_ok());
        assert!(Tag::parse(&"a".repeat(51)).is_err());
        assert!(Tag::parse("").is_ok());
    }

    #[test]
    fn media_kinds_csv_round_trip() {
        for k in [
            MediaKinds::NONE,
            MediaKinds::AUDIO,
            MediaKinds::VIDEO,
            MediaKinds::ALL,
        ] {
            assert_eq!(MediaKinds::from_csv(&k.to_csv()), Ok(k));
        }
        assert_eq!(
            serde_json::to_string(&MediaKinds::ALL).unwrap(),
            r#"["AUDIO","VIDEO"]"#
        );
    }

    #[test]
    fn device_api_version_is_lenient() {
        assert_eq!(DeviceApiVersion::parse("v3"), Ok(DeviceApiVersion::V3));
        assert_eq!(DeviceApiVersion::parse("V2"), Ok(DeviceApiVersion::V2));
        assert!(DeviceApiVersion::parse("V4").is_err());
    }

    #[test]
    fn callback_urls_must_be_http() {
        assert!(CallbackUrl::parse("https://example.com/cb").is_ok());
        assert!(CallbackUrl::parse("ftp://example.com").is_err());
        assert!(CallbackUrl::parse("not a url").is_err());
    }

    #[test]
    fn callback_urls_with_credentials_are_refused_but_stored_ones_load() {
        for bad in [
            "http://user:pass@example.com/cb",
            "https://admin@example.com/",
            "http://a:b@127.0.0.1:8080/v1/accounts/x/sessions",
        ] {
            let e = CallbackUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains("credentials"), "{bad}: {e}");
            assert!(CallbackUrl::stored(bad).is_ok(), "{bad}");
        }
        // An @ after the authority is part of the path or query, not credentials.
        assert!(CallbackUrl::parse("https://example.com/hooks?by=me@example.com").is_ok());
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        for bad in [
            "a\0b",
            "\u{7}",
            "line\nbreak",
            "tab\t",
            "\u{7f}",
            "c1\u{85}",
        ] {
            let e = Tag::parse(bad).unwrap_err();
            assert_eq!(e.field, "tag", "{bad:?}");
            assert!(e.problem.contains("control character"), "{e}");
            let e = CallbackUrl::parse(&format!("https://example.com/{bad}")).unwrap_err();
            assert_eq!(e.field, "callbackUrl", "{bad:?}");
            assert!(e.problem.contains("control character"), "{e}");
        }
        assert_eq!(
            Tag::parse("x\0").unwrap_err().to_string(),
            "tag: contains the control character U+0000 at character 1; control characters are not allowed"
        );
        assert!(
            Tag::parse("caf\u{e9} \u{1f600}").is_ok(),
            "non-control Unicode is fine"
        );
    }
}
