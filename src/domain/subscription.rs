//! Subscription rules: who a participant wants to receive, at session, participant or
//! stream-alias level. Rules are data; `forwarding::compile` gives them meaning.

use serde::{Serialize, Serializer};

use super::{DomainError, ParticipantId, SessionId};

/// The label a publisher gives one of its streams (e.g. `"cam"`, `"screen"`, `"phone"`).
///
/// Cheap to clone (shared). 1 to 64 characters, no control character, not starting with `~` (rpc-websockets 7.4.14–7.4.17 in browsers read
/// strings that start with `~` as circular-JSON references, reference §3.2).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamAlias(std::sync::Arc<str>);

impl StreamAlias {
    /// The longest alias, counted in characters, not bytes.
    pub const MAX_CHARS: usize = 64;

    /// Accepts 1 to [`Self::MAX_CHARS`] characters, none a control character, not starting
    /// with `~`; anything else names
    /// `streamAliases` in the error.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        DomainError::reject_control_chars("streamAliases", s)?;
        let n = s.chars().count();
        if n == 0 || n > Self::MAX_CHARS || s.starts_with('~') {
            return Err(DomainError::new(
                "streamAliases",
                format!(
                    "{s:?} is not a stream alias (1 to {} characters, not starting with '~')",
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(StreamAlias(s.into()))
    }

    /// The alias exactly as the publisher gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for StreamAlias {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A subscription to one publisher, optionally narrowed to some of its stream aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantSubscription {
    /// The publisher subscribed to (`participantId` on the wire).
    #[serde(rename = "participantId")]
    pub participant: ParticipantId,
    /// Empty means every stream of that publisher; otherwise only streams with these aliases
    /// (an unaliased stream matches no non-empty list). No duplicates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stream_aliases: Vec<StreamAlias>,
}

/// A participant's subscription rules, exactly as the backend set them (full replace on PUT).
///
/// Meaning (reference §1.6): a non-empty `participants` list subscribes to exactly those
/// publishers and overrides `session_id`; otherwise `session_id` subscribes to every other
/// member of the session, including later joiners; with neither, nothing is received.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscriptions {
    /// Subscribe to every other member of this session; ignored when `participants` is
    /// non-empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// Subscribe to exactly these publishers; at most one entry per publisher.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<ParticipantSubscription>,
}

/// The effective meaning of a [`Subscriptions`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionRule<'a> {
    /// Neither a session nor participants: nothing is received.
    Nothing,
    /// Every other member of this session, including members who join later.
    WholeSession(SessionId),
    /// Exactly these publishers (each possibly narrowed to some aliases); the session id, if
    /// any, is ignored.
    Participants(&'a [ParticipantSubscription]),
}

impl Subscriptions {
    /// Builds rules, rejecting a participant listed twice or an alias listed twice.
    pub fn new(
        session_id: Option<SessionId>,
        participants: Vec<ParticipantSubscription>,
    ) -> Result<Self, DomainError> {
        let mut seen = std::collections::HashSet::new();
        for p in &participants {
            if !seen.insert(p.participant) {
                return Err(DomainError::new(
                    "participants",
                    format!("participant {} is listed more than once", p.participant),
                ));
            }
            let mut aliases = std::collections::HashSet::new();
            if let Some(dup) = p.stream_aliases.iter().find(|a| !aliases.insert(*a)) {
                return Err(DomainError::new(
                    "streamAliases",
                    format!("alias {:?} is listed more than once", dup.as_str()),
                ));
            }
        }
        Ok(Subscriptions {
            session_id,
            participants,
        })
    }

    /// Whether neither a session nor any participant is set (the rule is then `Nothing`).
    pub fn is_empty(&self) -> bool {
        self.session_id.is_none() && self.participants.is_empty()
    }

    /// What these rules mean, with the precedence of reference §1.6 applied.
    pub fn rule(&self) -> SubscriptionRule<'_> {
        match (self.participants.is_empty(), self.session_id) {
            (false, _) => SubscriptionRule::Participants(&self.participants),
            (true, Some(s)) => SubscriptionRule::WholeSession(s),
            (true, None) => SubscriptionRule::Nothing,
        }
    }

    /// Every publisher these rules name explicitly.
    pub fn named_participants(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.participants.iter().map(|p| p.participant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(p: ParticipantId, aliases: &[&str]) -> ParticipantSubscription {
        ParticipantSubscription {
            participant: p,
            stream_aliases: aliases
                .iter()
                .map(|a| StreamAlias::parse(a).unwrap())
                .collect(),
        }
    }

    #[test]
    fn participants_override_session() {
        let s = SessionId::random();
        let p = ParticipantId::random();
        let subs = Subscriptions::new(Some(s), vec![sub(p, &[])]).unwrap();
        assert!(matches!(subs.rule(), SubscriptionRule::Participants(_)));
        let whole = Subscriptions::new(Some(s), vec![]).unwrap();
        assert_eq!(whole.rule(), SubscriptionRule::WholeSession(s));
        assert_eq!(Subscriptions::default().rule(), SubscriptionRule::Nothing);
    }

    #[test]
    fn duplicates_are_rejected() {
        let p = ParticipantId::random();
        assert!(Subscriptions::new(None, vec![sub(p, &[]), sub(p, &["cam"])]).is_err());
        assert!(Subscriptions::new(None, vec![sub(p, &["cam", "cam"])]).is_err());
    }

    #[test]
    fn wire_form_omits_absent_fields() {
        assert_eq!(
            serde_json::to_string(&Subscriptions::default()).unwrap(),
            "{}"
        );
        let p = ParticipantId::random();
        let json = serde_json::to_value(Subscriptions::new(None, vec![sub(p, &["cam"])]).unwrap())
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"participants":[{"participantId": p.to_string(), "streamAliases":["cam"]}]})
        );
    }

    #[test]
    fn aliases_are_bounded() {
        assert!(StreamAlias::parse("").is_err());
        assert!(StreamAlias::parse("~ref").is_err());
        assert!(StreamAlias::parse(&"a".repeat(65)).is_err());
        assert!(StreamAlias::parse("cam").is_ok());
    }
}
