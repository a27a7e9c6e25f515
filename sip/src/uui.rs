//! The participant token carried in `User-to-User` (RFC 7433) header fields: a JWT element
//! (`<jwt>;encoding=jwt`) next to an optional correlation id (`<hex>;encoding=base64`).
//!
//! Accepted forms, across every `User-to-User` / `X-User-to-User` value in order:
//! - one element per value: `eyJ….eyJ….sig;encoding=jwt`;
//! - several comma-separated elements: `93d6…;encoding=base64,eyJ….eyJ….sig;encoding=jwt`;
//! - the form a broken PHP client sends, without the comma:
//!   `93d6…;encoding=base64eyJ….eyJ….sig;encoding=jwt`, where the JWT is the run of
//!   base64url characters and dots right before `;encoding=jwt`.
//!
//! Parameter names and values are matched case-insensitively and whitespace around `;`, `=` and
//! `,` is ignored. A JWT is three non-empty base64url segments separated by dots; the token is
//! returned as found, without verifying it (that is the application's job).

/// Why no participant token could be taken from the header values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UuiError {
    /// No User-to-User value at all.
    #[error("no User-to-User header")]
    Missing,
    /// Values are present but none has `encoding=jwt`.
    #[error("no User-to-User element with encoding=jwt")]
    NoJwt,
    /// An element says `encoding=jwt` but does not hold a JWT.
    #[error("the encoding=jwt element is not a JWT (three base64url segments)")]
    Malformed,
}

/// Whether a header name is one that carries user-to-user data (`User-to-User` or
/// `X-User-to-User`, any letter case).
pub fn is_uui_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("User-to-User") || name.eq_ignore_ascii_case("X-User-to-User")
}

/// The participant token (JWT) from the User-to-User values of a request.
pub fn participant_token(values: &[String]) -> Result<String, UuiError> {
    if values.iter().all(|v| v.trim().is_empty()) {
        return Err(UuiError::Missing);
    }
    let mut malformed = false;
    for element in elements(values) {
        if element.encoding_is("jwt") {
            if is_jwt(element.data) {
                return Ok(element.data.to_string());
            }
            if let Some(jwt) = jwt_before_jwt_param(element.raw) {
                return Ok(jwt.to_string());
            }
            malformed = true;
        }
    }
    Err(if malformed {
        UuiError::Malformed
    } else {
        UuiError::NoJwt
    })
}

/// The correlation id: the data of the first `encoding=base64` element (also in the broken form,
/// where the parameter value runs into the JWT: `encoding=base64eyJ…`).
pub fn correlation_id(values: &[String]) -> Option<String> {
    elements(values)
        .find(|e| {
            e.params.iter().any(|(name, value)| {
                name.eq_ignore_ascii_case("encoding")
                    && value
                        .get(..6)
                        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("base64"))
            })
        })
        .map(|e| e.data.to_string())
        .filter(|data| !data.is_empty())
}

struct Element<'a> {
    raw: &'a str,
    data: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

impl Element<'_> {
    fn encoding_is(&self, wanted: &str) -> bool {
        self.params.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("encoding") && value.eq_ignore_ascii_case(wanted)
        })
    }
}

fn elements(values: &[String]) -> impl Iterator<Item = Element<'_>> {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            let mut parts = raw.split(';');
            let data = parts.next().unwrap_or("").trim();
            let params = parts
                .map(|p| match p.split_once('=') {
                    Some((name, value)) => (name.trim(), value.trim()),
                    None => (p.trim(), ""),
                })
                .collect();
            Element { raw, data, params }
        })
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Three non-empty base64url segments separated by dots.
fn is_jwt(s: &str) -> bool {
    let segments: Vec<&str> = s.split('.').collect();
    segments.len() == 3
        && segments
            .iter()
            .all(|seg| !seg.is_empty() && seg.bytes().all(is_base64url))
}

/// The broken form: the JWT is the run of base64url characters and dots right before the
/// `;encoding=jwt` parameter; a `base64` prefix glued to it by the missing comma is removed.
fn jwt_before_jwt_param(raw: &str) -> Option<&str> {
    let jwt_param = raw.split(';').skip(1).enumerate().find_map(|(i, p)| {
        let (name, value) = p.split_once('=')?;
        (name.trim().eq_ignore_ascii_case("encoding") && value.trim().eq_ignore_ascii_case("jwt"))
            .then_some(i)
    })?;
    // Byte offset of the `;` that starts the jwt parameter.
    let semicolon = raw
        .match_indices(';')
        .nth(jwt_param)
        .map(|(offset, _)| offset)?;
    let before = raw.get(..semicolon)?.trim_end();
    let start = before
        .bytes()
        .rposition(|b| !(is_base64url(b) || b == b'.'))
        .map_or(0, |p| p + 1);
    let mut run = before.get(start..)?;
    let glued = before.get(..start)?.trim_end().ends_with('=');
    if glued
        && run
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("base64"))
    {
        run = run.get(6..)?;
    }
    is_jwt(run).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJhIjoiYWNjIn0.c2ln";
    const HEX: &str = "93d6f3c0be5845960b744fa28015d8ede84bd1a4";

    fn v(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn jwt_alone() {
        assert_eq!(
            participant_token(&v(&[&format!("{JWT};encoding=jwt")])),
            Ok(JWT.into())
        );
        assert_eq!(correlation_id(&v(&[&format!("{JWT};encoding=jwt")])), None);
    }

    #[test]
    fn comma_separated_with_correlation_id() {
        let values = v(&[&format!("{HEX};encoding=base64,{JWT};encoding=jwt")]);
        assert_eq!(participant_token(&values), Ok(JWT.into()));
        assert_eq!(correlation_id(&values), Some(HEX.into()));
    }

    #[test]
    fn case_and_whitespace_tolerant() {
        let values = v(&[&format!(
            " {HEX} ; Encoding = BASE64 , {JWT} ;ENCODING= JWT "
        )]);
        assert_eq!(participant_token(&values), Ok(JWT.into()));
        assert_eq!(correlation_id(&values), Some(HEX.into()));
    }

    #[test]
    fn broken_php_form_without_comma() {
        let values = v(&[&format!("{HEX};encoding=base64{JWT};encoding=jwt")]);
        assert_eq!(participant_token(&values), Ok(JWT.into()));
        assert_eq!(correlation_id(&values), Some(HEX.into()));
    }

    #[test]
    fn several_headers_in_order() {
        let values = v(&[
            &format!("{HEX};encoding=base64"),
            &format!("{JWT};encoding=jwt;purpose=call"),
        ]);
        assert_eq!(participant_token(&values), Ok(JWT.into()));
        assert_eq!(correlation_id(&values), Some(HEX.into()));
    }

    #[test]
    fn errors() {
        assert_eq!(participant_token(&[]), Err(UuiError::Missing));
        assert_eq!(participant_token(&v(&["  "])), Err(UuiError::Missing));
        assert_eq!(
            participant_token(&v(&[&format!("{HEX};encoding=base64")])),
            Err(UuiError::NoJwt)
        );
        assert_eq!(
            participant_token(&v(&["not-a-jwt;encoding=jwt"])),
            Err(UuiError::Malformed)
        );
        assert_eq!(
            participant_token(&v(&["a.b.;encoding=jwt"])),
            Err(UuiError::Malformed)
        );
        assert_eq!(
            participant_token(&v(&["a.b.c.d;encoding=jwt"])),
            Err(UuiError::Malformed)
        );
    }

    #[test]
    fn header_names() {
        assert!(is_uui_header("User-To-User"));
        assert!(is_uui_header("user-to-user"));
        assert!(is_uui_header("X-User-To-User"));
        assert!(!is_uui_header("X-UUI"));
    }
}
