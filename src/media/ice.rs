//! The ICE identity of a process's engines: the prefix every local ufrag starts with (so a
//! check for a ufrag without it was meant for another process), fresh local credentials for
//! each peer connection, and the signed refusal of a check addressed to a connection another
//! process answered before (a restart).

use str0m::ice::{IceCreds, StunMessageBuilder, TransId};

/// Length of `EngineConfig::ice_prefix`: 62^4 prefixes make two processes in a row sharing
/// one a one-in-fourteen-million event.
pub(super) const PREFIX_LEN: usize = 4;

/// The STUN error a connectivity check addressed to another process gets (see [`refusal`]).
const STALE_CHECK_ERROR: (u16, &str) = (403, "Forbidden: unknown ICE session");

/// `len` random ICE characters (RFC 8445 ice-char, letters and digits only).
pub(super) fn random_chars(len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A local ufrag of this process: its prefix and 8 random characters.
pub(super) fn tagged_ufrag(prefix: &str) -> String {
    format!("{prefix}{}", random_chars(8))
}

/// This process's local ICE credentials for a new peer connection.
pub(super) fn local_credentials(prefix: &str) -> IceCreds {
    IceCreds {
        ufrag: tagged_ufrag(prefix),
        pass: random_chars(24),
    }
}

/// The error response ([`STALE_CHECK_ERROR`]) to the binding request `trans_id`, signed with
/// the password `pwd` of the connection it was meant for. Chrome ignores an unsigned error
/// (measured: it went on checking for 14 s), but takes a signed one other than 401, 420, 487
/// or 500 as "this path is dead" and drops it; with no path left the connection is failed.
/// `None` if the message cannot be written (it always fits).
pub(super) fn refusal(trans_id: TransId, pwd: &str) -> Option<Vec<u8>> {
    let (code, reason) = STALE_CHECK_ERROR;
    let reply = StunMessageBuilder::new()
        .binding()
        .failure()
        .error_code(code, reason)
        .build(trans_id);
    let mut buf = vec![0u8; 128];
    let hmac = |key: &[u8], data: &[&[u8]]| -> [u8; 20] {
        str0m::crypto::from_feature_flags()
            .sha1_hmac_provider
            .sha1_hmac(key, data)
    };
    let len = reply.to_bytes(Some(pwd.as_bytes()), &mut buf, hmac).ok()?;
    buf.truncate(len);
    Some(buf)
}
