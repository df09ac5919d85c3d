//! TURN REST API credentials, as coturn's `use-auth-secret` (`static-auth-secret`) checks them.
//!
//! - `username` = `<expiry>:<user>`, where `<expiry>` is the Unix time (seconds) when the
//!   credential stops being valid: `now + ttl`;
//! - `password` = base64(HMAC-SHA1(secret, username)), standard alphabet with padding.
//!
//! coturn recomputes the password from the username and its own copy of the secret, and refuses
//! the credential once `<expiry>` has passed. The same functions let sigmesh check a username
//! it sees on the TURN path ([`verify`]) and find the user it was issued to ([`parse_username`]).
//!
//! Time is an argument (`now_unix`), like everywhere in core.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::Serialize;

/// Longest user ID accepted in a credential request, in bytes.
pub const MAX_USER_LEN: usize = 256;

/// A TURN REST credential: the JSON the endpoint and `sigmesh turn-credentials` print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnCredential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Lifetime in seconds.
    pub ttl: u64,
    /// The TURN/STUN URIs to use it with.
    pub uris: Vec<String>,
}

/// Why a user ID cannot be given a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Missing or empty.
    #[error("missing or empty user")]
    Empty,
    /// Longer than [`MAX_USER_LEN`] bytes.
    #[error("user longer than {MAX_USER_LEN} bytes")]
    TooLong,
    /// Has a control character (they do not survive STUN's USERNAME and logs intact).
    #[error("user has a control character")]
    Control,
}

/// Checks a user ID for [`credential`].
pub fn check_user(user: &str) -> Result<(), UserError> {
    if user.is_empty() {
        Err(UserError::Empty)
    } else if user.len() > MAX_USER_LEN {
        Err(UserError::TooLong)
    } else if user.chars().any(char::is_control) {
        Err(UserError::Control)
    } else {
        Ok(())
    }
}

/// A credential for `user`, valid from `now_unix` for `ttl` (whole seconds; at least 1).
pub fn credential(
    secret: &str,
    user: &str,
    now_unix: u64,
    ttl: Duration,
    uris: &[String],
) -> Result<TurnCredential, UserError> {
    check_user(user)?;
    let ttl = ttl.as_secs().max(1);
    let username = format!("{}:{user}", now_unix.saturating_add(ttl));
    Ok(TurnCredential {
        password: password(secret, &username),
        username,
        ttl,
        uris: uris.to_vec(),
    })
}

/// base64(HMAC-SHA1(secret, username)).
pub fn password(secret: &str, username: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(secret.as_bytes(), username.as_bytes()))
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // HMAC takes keys of any length (long ones are hashed first), so this cannot fail.
    let Ok(mut mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key) else {
        return [0; 20];
    };
    mac.update(data);
    let mut out = [0u8; 20];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// The expiry and user of a `<expiry>:<user>` username (`None` if it is not of that form).
pub fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, user) = username.split_once(':')?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((expiry.parse().ok()?, user))
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification<'a> {
    /// The password matches and the credential has not expired.
    Valid {
        /// The user it was issued to.
        user: &'a str,
        /// Its expiry (Unix seconds).
        expiry: u64,
    },
    /// The password matches but the expiry has passed.
    Expired,
    /// The username is not `<expiry>:<user>`, or the password does not match.
    Invalid,
}

/// Checks a username/password pair the way coturn does with `use-auth-secret`.
pub fn verify<'a>(
    secret: &str,
    username: &'a str,
    password_b64: &str,
    now_unix: u64,
) -> Verification<'a> {
    let Some((expiry, user)) = parse_username(username) else {
        return Verification::Invalid;
    };
    let want = password(secret, username);
    // Constant time in the password length: no early exit on the first difference.
    let same = want.len() == password_b64.len()
        && want
            .bytes()
            .zip(password_b64.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        Verification::Invalid
    } else if expiry < now_unix {
        Verification::Expired
    } else {
        Verification::Valid { user, expiry }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_hmac_sha1_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(hmac_sha1(&[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
        assert_eq!(
            hex(hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        // A key longer than the block size is hashed first.
        assert_eq!(
            hex(hmac_sha1(
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn credential_shape_and_verification() {
        let c = credential(
            "s3cret",
            "alice",
            1_000,
            Duration::from_secs(3600),
            &["turn:x:3478".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.username, "4600:alice");
        assert_eq!(c.ttl, 3600);
        assert_eq!(c.password, password("s3cret", "4600:alice"));
        assert_eq!(
            verify("s3cret", &c.username, &c.password, 4600),
            Verification::Valid {
                user: "alice",
                expiry: 4600
            }
        );
        assert_eq!(
            verify("s3cret", &c.username, &c.password, 4601),
            Verification::Expired
        );
        assert_eq!(
            verify("other", &c.username, &c.password, 1),
            Verification::Invalid
        );
        assert_eq!(
            verify("s3cret", "alice", &c.password, 1),
            Verification::Invalid
        );
        assert_eq!(parse_username("12:a:b"), Some((12, "a:b")));
        assert_eq!(parse_username(":a"), None);
        assert_eq!(check_user(""), Err(UserError::Empty));
        assert_eq!(check_user(&"x".repeat(257)), Err(UserError::TooLong));
        assert_eq!(check_user("a\nb"), Err(UserError::Control));
        assert_eq!(
            credential("s", "u", 0, Duration::ZERO, &[]).map(|c| c.ttl),
            Ok(1)
        );
    }
}
