//! The authentication handshake of Python's `multiprocessing.connection`, both forms.
//!
//! A listener and a client that share a key prove it to each other before anything else crosses:
//! the listener sends a challenge (`#CHALLENGE#` and random bytes), the client answers with an HMAC
//! of those bytes under the key, the listener says `#WELCOME#` or `#FAILURE#`; then the roles swap.
//! Six frames in all, each at most 256 bytes, none of them deserialized: the key never travels and a
//! peer without it learns nothing but the failure.
//!
//! Two forms are on the wire. Python 3.12 and later prefix the challenge with the digest to use
//! (`{sha256}` and 40 random bytes) and prefix the answer the same way (the MAC covers the prefix
//! too); Python 3.11 and older send 20 bare random bytes and answer with a bare 16-byte HMAC-MD5.
//! The two interoperate because each side tells the forms apart by length, as CPython does: a
//! 20-byte challenge or a 16-byte answer is the legacy form. A 3.11 peer answering a modern
//! challenge simply MACs all 48 bytes with MD5, which a modern side accepts.
//!
//! Here, unlike CPython: digests are compared in constant time on both forms, the legacy form can
//! be refused ([`AuthPolicy::legacy`]), every step has a deadline (CPython waits forever), and a
//! malformed frame is a typed error, never an assertion. The pure parts (parsing a challenge or an
//! answer, computing and checking a MAC) are separate functions, so that the fuzz target can drive
//! them without sockets.

use crate::connection::Connection;
use crate::error::{AuthError, RecvTimeoutError};
use crate::sync::futex::Wait;
use hmac::{Hmac, Mac};
use std::time::Instant;

/// What a challenge starts with.
pub const CHALLENGE: &[u8] = b"#CHALLENGE#";
/// The answer to a right digest.
pub const WELCOME: &[u8] = b"#WELCOME#";
/// The answer to a wrong digest.
pub const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a modern challenge (CPython's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// Random bytes in a legacy challenge; also the least a challenge may carry.
const LEGACY_MESSAGE_LENGTH: usize = 20;
/// A bare HMAC-MD5.
const LEGACY_ANSWER_LENGTH: usize = 16;
/// The longest frame either side reads during the handshake.
pub const MAX_FRAME: u64 = 256;

/// A digest of the handshake's HMAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Digest {
    /// HMAC-MD5: the only one of Python 3.11 and older.
    Md5,
    /// HMAC-SHA-256: what Python 3.12 and later challenge with, and this crate's default.
    Sha256,
    /// HMAC-SHA-384.
    Sha384,
    /// HMAC-SHA3-256.
    Sha3_256,
    /// HMAC-SHA3-384.
    Sha3_384,
}

impl Digest {
    /// Every digest a modern peer may name (CPython's `_ALLOWED_DIGESTS`).
    pub const ALL: [Digest; 5] = [
        Digest::Md5,
        Digest::Sha256,
        Digest::Sha384,
        Digest::Sha3_256,
        Digest::Sha3_384,
    ];

    /// Its name on the wire, as in `{sha256}`.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha3_256 => "sha3_256",
            Digest::Sha3_384 => "sha3_384",
        }
    }

    fn from_name(name: &[u8]) -> Option<Digest> {
        Digest::ALL
            .into_iter()
            .find(|d| d.name().as_bytes() == name)
    }

    /// The HMAC of `message` under `key`.
    pub fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // An HMAC takes a key of any length (hashed first when longer than a block).
            let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
            Digest::Sha3_256 => run::<Hmac<sha3::Sha3_256>>(key, message),
            Digest::Sha3_384 => run::<Hmac<sha3::Sha3_384>>(key, message),
        }
    }

    /// Whether `mac` is the HMAC of `message` under `key`, compared in constant time.
    fn verify(self, key: &[u8], message: &[u8], mac: &[u8]) -> bool {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
            let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(message);
            m.verify_slice(tag).is_ok()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message, mac),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message, mac),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message, mac),
            Digest::Sha3_256 => run::<Hmac<sha3::Sha3_256>>(key, message, mac),
            Digest::Sha3_384 => run::<Hmac<sha3::Sha3_384>>(key, message, mac),
        }
    }
}

/// How one side runs the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthPolicy {
    /// The digest this side challenges with (default SHA-256, as Python 3.12+).
    pub digest: Digest,
    /// Whether MD5 is accepted and answered: the legacy form, bare HMAC-MD5, is what Python 3.11
    /// and older speak (default: yes, so that they can connect). With `false`, an MD5 answer (bare
    /// or `{md5}`) is refused with `#FAILURE#` and an MD5 challenge is not answered
    /// ([`AuthError::LegacyRefused`]).
    pub legacy: bool,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            digest: Digest::Sha256,
            legacy: true,
        }
    }
}

/// A frame of the handshake, split into its digest (`None`: the legacy form) and its payload.
///
/// As CPython's `_get_digest_name_and_payload`: a 20- or 16-byte frame is legacy; otherwise it must
/// start with `{name}` (a name of at most 8 bytes, one of [`Digest::ALL`]).
///
/// ```
/// use multiprocess::auth::{split_digest, Digest};
/// assert_eq!(split_digest(b"{sha256}abc").unwrap(), (Some(Digest::Sha256), &b"abc"[..]));
/// assert_eq!(split_digest(&[7; 16]).unwrap(), (None, &[7u8; 16][..]));
/// assert!(split_digest(b"{whirlpool}abc").is_err());
/// ```
pub fn split_digest(frame: &[u8]) -> Result<(Option<Digest>, &[u8]), AuthError> {
    if frame.len() == LEGACY_MESSAGE_LENGTH || frame.len() == LEGACY_ANSWER_LENGTH {
        return Ok((None, frame));
    }
    let unsupported = || {
        AuthError::Protocol(format!(
            "unsupported message length, missing digest prefix, or unsupported digest: {}",
            show(frame)
        ))
    };
    if frame.first() != Some(&b'{') {
        return Err(unsupported());
    }
    // The closing brace within the first 10 bytes: a name of 1 to 8 bytes.
    let close = frame
        .iter()
        .take(10)
        .position(|&b| b == b'}')
        .filter(|&at| at >= 2)
        .ok_or_else(unsupported)?;
    let digest = Digest::from_name(&frame[1..close]).ok_or_else(unsupported)?;
    Ok((Some(digest), &frame[close + 1..]))
}

/// The answer to a challenge's `message` (the bytes after `#CHALLENGE#`): `{name}` and the HMAC
/// with the digest it names, or, for a legacy challenge, the bare HMAC-MD5.
pub fn answer(key: &[u8], message: &[u8], policy: &AuthPolicy) -> Result<Vec<u8>, AuthError> {
    if message.len() < LEGACY_MESSAGE_LENGTH {
        return Err(AuthError::Protocol(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    match split_digest(message)? {
        (None | Some(Digest::Md5), _) if !policy.legacy => Err(AuthError::LegacyRefused),
        (None, _) => Ok(Digest::Md5.mac(key, message)),
        (Some(d), _) => {
            let mut out = format!("{{{}}}", d.name()).into_bytes();
            out.extend(d.mac(key, message));
            Ok(out)
        }
    }
}

/// Checks the peer's `response` to our challenge's `message`: [`AuthError::DigestWrong`] if the
/// peer's key is not `key`.
///
/// Any allowed digest is accepted in the response, as CPython does (it does not hold the peer to
/// the one it offered); the legacy bare MD5 only with [`AuthPolicy::legacy`].
pub fn check(
    key: &[u8],
    message: &[u8],
    response: &[u8],
    policy: &AuthPolicy,
) -> Result<(), AuthError> {
    let (digest, mac) = split_digest(response)?;
    let digest = match digest {
        None | Some(Digest::Md5) if !policy.legacy => return Err(AuthError::LegacyRefused),
        None => Digest::Md5,
        Some(d) => d,
    };
    if digest.verify(key, message, mac) {
        Ok(())
    } else {
        Err(AuthError::DigestWrong)
    }
}

/// A new challenge message (without `#CHALLENGE#`): `{name}` and 40 random bytes.
pub(crate) fn new_message(digest: Digest) -> Result<Vec<u8>, AuthError> {
    let mut out = format!("{{{}}}", digest.name()).into_bytes();
    let at = out.len();
    out.resize(at + MESSAGE_LENGTH, 0);
    crate::sys::random_bytes(&mut out[at..]).map_err(AuthError::Io)?;
    Ok(out)
}

/// Up to 40 bytes of `frame`, printable, for an error message.
fn show(frame: &[u8]) -> String {
    let head = &frame[..frame.len().min(40)];
    let mut s = String::from("b'");
    s.extend(
        head.iter()
            .flat_map(|&b| std::ascii::escape_default(b).map(char::from)),
    );
    s.push('\'');
    if frame.len() > head.len() {
        s.push_str("...");
    }
    s
}

/// One frame of the handshake, by `deadline` (`None`: as long as it takes).
fn recv(conn: &Connection, deadline: Option<Instant>) -> Result<Vec<u8>, AuthError> {
    let wait = deadline.map_or(Wait::Forever, Wait::Until);
    match conn.recv_frame(wait, Some(MAX_FRAME)) {
        Ok(frame) => Ok(frame.bytes),
        Err(RecvTimeoutError::Timeout) => Err(AuthError::Timeout),
        Err(RecvTimeoutError::Failed(e)) => Err(AuthError::Recv(e)),
    }
}

fn send(conn: &Connection, bytes: &[u8]) -> Result<(), AuthError> {
    conn.send_bytes(bytes).map_err(AuthError::Send)
}

/// The challenge frame for `message`.
pub(crate) fn challenge_frame(message: &[u8]) -> Vec<u8> {
    [CHALLENGE, message].concat()
}

/// The listener's first half, the step after its challenge was sent: checks the peer's response
/// and says welcome or failure.
pub(crate) fn judge(
    conn: &Connection,
    key: &[u8],
    message: &[u8],
    response: &[u8],
    policy: &AuthPolicy,
) -> Result<(), AuthError> {
    match check(key, message, response, policy) {
        Ok(()) => send(conn, WELCOME),
        Err(e) => {
            let _ = send(conn, FAILURE);
            Err(e)
        }
    }
}

/// The answering half, the step after the peer's challenge frame arrived: sends the answer.
pub(crate) fn respond(
    conn: &Connection,
    key: &[u8],
    frame: &[u8],
    policy: &AuthPolicy,
) -> Result<(), AuthError> {
    let Some(message) = frame.strip_prefix(CHALLENGE) else {
        return Err(AuthError::Protocol(format!(
            "expected a challenge, got {}",
            show(frame)
        )));
    };
    send(conn, &answer(key, message, policy)?)
}

/// The last step of the answering half: the peer's verdict.
pub(crate) fn verdict(frame: &[u8]) -> Result<(), AuthError> {
    if frame == WELCOME {
        Ok(())
    } else if frame == FAILURE {
        Err(AuthError::Rejected)
    } else {
        Err(AuthError::Protocol(format!(
            "expected {} or {}, got {}",
            show(WELCOME),
            show(FAILURE),
            show(frame)
        )))
    }
}

/// Challenges the peer (the listener's half, run first on its side: CPython's
/// `deliver_challenge`).
pub(crate) fn deliver_challenge(
    conn: &Connection,
    key: &[u8],
    policy: &AuthPolicy,
    deadline: Option<Instant>,
) -> Result<(), AuthError> {
    let message = new_message(policy.digest)?;
    send(conn, &challenge_frame(&message))?;
    let response = recv(conn, deadline)?;
    judge(conn, key, &message, &response, policy)
}

/// Answers the peer's challenge (the client's half, run first on its side: CPython's
/// `answer_challenge`).
pub(crate) fn answer_challenge(
    conn: &Connection,
    key: &[u8],
    policy: &AuthPolicy,
    deadline: Option<Instant>,
) -> Result<(), AuthError> {
    let frame = recv(conn, deadline)?;
    respond(conn, key, &frame, policy)?;
    verdict(&recv(conn, deadline)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // The vectors of shared/research/python-wire.md, computed by CPython 3.12.1's own functions.
    #[test]
    fn answers_match_cpython() {
        let policy = AuthPolicy::default();
        let mut modern = b"{sha256}".to_vec();
        modern.extend(0..40u8);
        let a = answer(b"secret", &modern, &policy).unwrap();
        assert_eq!(&a[..8], b"{sha256}");
        assert_eq!(
            hex(&a[8..]),
            "fc57fbe650d6124b98215e7b5d197d5807ad69982d275a9735ea2d56f1fa6989"
        );
        let legacy: Vec<u8> = (0..20).collect();
        let a = answer(b"secret", &legacy, &policy).unwrap();
        assert_eq!(hex(&a), "7defa9cc46abc3583325d17ccda75190");
        // A 3.11 peer answering a modern challenge: bare MD5 over all 48 bytes, accepted.
        let md5_of_modern = Digest::Md5.mac(b"secret", &modern);
        assert_eq!(hex(&md5_of_modern), "8e48d2bb349b4b72b9382999ed5b62eb");
        check(b"secret", &modern, &md5_of_modern, &policy).unwrap();
    }

    #[test]
    fn wrong_keys_and_refused_forms_are_typed_errors() {
        let policy = AuthPolicy::default();
        let message = new_message(Digest::Sha256).unwrap();
        let good = answer(b"k", &message, &policy).unwrap();
        check(b"k", &message, &good, &policy).unwrap();
        assert!(matches!(
            check(b"other", &message, &good, &policy),
            Err(AuthError::DigestWrong)
        ));
        // Every digest a peer may pick is checked with that digest.
        for d in Digest::ALL {
            let mut r = format!("{{{}}}", d.name()).into_bytes();
            r.extend(d.mac(b"k", &message));
            check(b"k", &message, &r, &policy).unwrap();
            r.pop();
            assert!(check(b"k", &message, &r, &policy).is_err(), "{d:?}");
        }
        let strict = AuthPolicy {
            legacy: false,
            ..policy
        };
        let md5 = Digest::Md5.mac(b"k", &message);
        assert!(matches!(
            check(b"k", &message, &md5, &strict),
            Err(AuthError::LegacyRefused)
        ));
        // `{md5}` is MD5 too.
        let mut named = b"{md5}".to_vec();
        named.extend(&md5);
        assert!(matches!(
            check(b"k", &message, &named, &strict),
            Err(AuthError::LegacyRefused)
        ));
        check(b"k", &message, &named, &policy).unwrap();
        assert!(matches!(
            answer(b"k", &[1; 20], &strict),
            Err(AuthError::LegacyRefused)
        ));
        assert!(matches!(
            answer(b"k", &[1; 19], &policy),
            Err(AuthError::Protocol(m)) if m.contains("too short")
        ));
        for bad in [
            &b"{sha256"[..],
            b"{}0123456789012345678901",
            b"sha256}xxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(split_digest(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(verdict(b"#FAILURE#"), Err(AuthError::Rejected)));
        assert!(verdict(b"#WELCOME!").is_err());
    }

    #[test]
    fn challenges_are_fresh() {
        let a = new_message(Digest::Sha256).unwrap();
        let b = new_message(Digest::Sha256).unwrap();
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
    }
}
