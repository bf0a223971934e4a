//! The frame header of Python's `multiprocessing.connection`, as a pure decoder.
//!
//! A message is a header followed by its payload. The header is a signed 32-bit big-endian length; a
//! payload of 2 GiB or more is announced by `-1` followed by an unsigned 64-bit big-endian length.
//! CPython accepts any other negative length and then desynchronises the stream; here it is a protocol
//! error. The decoder is pure (bytes in, verdict out) so that it can be fuzzed on its own.

use std::fmt;

/// The longest header: `-1` and a 64-bit length.
pub const MAX_HEADER_LEN: usize = 12;

/// Largest length the short header can carry; longer payloads use the `-1` form.
pub const SHORT_MAX: u64 = i32::MAX as u64;

/// What the bytes seen so far say about the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The header is incomplete: this many bytes of header are needed in total.
    NeedMore(usize),
    /// The header is complete: it is `header_len` bytes long and announces `len` payload bytes.
    Complete {
        /// Bytes taken by the header itself (4 or 12).
        header_len: usize,
        /// Payload length announced.
        len: u64,
    },
}

/// A header that no honest peer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A negative length other than `-1`.
    NegativeLength(i32),
    /// A 64-bit length too large to ever be held in memory on this machine.
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NegativeLength(n) => {
                write!(f, "negative message length {n} in frame header")
            }
            FrameError::TooLarge(n) => {
                write!(f, "message length {n} in frame header exceeds isize::MAX")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes a header from the first bytes of a frame (`bytes` may be shorter or longer than the
/// header; bytes past the header are ignored).
///
/// ```
/// use multiprocess::frame::{decode_header, Header};
/// assert_eq!(decode_header(&[0, 0, 1]), Ok(Header::NeedMore(4)));
/// assert_eq!(decode_header(&[0, 0, 1, 0]), Ok(Header::Complete { header_len: 4, len: 256 }));
/// assert_eq!(decode_header(&[255, 255, 255, 255]), Ok(Header::NeedMore(12)));
/// assert!(decode_header(&[255, 255, 255, 254]).is_err());
/// ```
pub fn decode_header(bytes: &[u8]) -> Result<Header, FrameError> {
    let Some(short) = bytes.first_chunk::<4>() else {
        return Ok(Header::NeedMore(4));
    };
    let n = i32::from_be_bytes(*short);
    if n >= 0 {
        return Ok(Header::Complete {
            header_len: 4,
            len: n as u64,
        });
    }
    if n != -1 {
        return Err(FrameError::NegativeLength(n));
    }
    let Some(long) = bytes.get(4..12) else {
        return Ok(Header::NeedMore(MAX_HEADER_LEN));
    };
    let len = u64::from_be_bytes(long.try_into().expect("8 bytes"));
    if len > isize::MAX as u64 {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Header::Complete {
        header_len: MAX_HEADER_LEN,
        len,
    })
}

/// Encodes the header for a payload of `len` bytes into `out`, returning the used prefix.
pub fn encode_header(len: u64, out: &mut [u8; MAX_HEADER_LEN]) -> &[u8] {
    if len <= SHORT_MAX {
        out[..4].copy_from_slice(&(len as i32).to_be_bytes());
        &out[..4]
    } else {
        out[..4].copy_from_slice(&(-1i32).to_be_bytes());
        out[4..].copy_from_slice(&len.to_be_bytes());
        &out[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_short_and_long() {
        for len in [0u64, 1, 255, SHORT_MAX, SHORT_MAX + 1, 1 << 40] {
            let mut buf = [0; MAX_HEADER_LEN];
            let h = encode_header(len, &mut buf).to_vec();
            assert_eq!(
                decode_header(&h),
                Ok(Header::Complete {
                    header_len: h.len(),
                    len
                })
            );
            for cut in 0..h.len() {
                assert!(matches!(decode_header(&h[..cut]), Ok(Header::NeedMore(n)) if n > cut));
            }
        }
    }

    #[test]
    fn rejects_forged_lengths() {
        assert_eq!(
            decode_header(&(-2i32).to_be_bytes()),
            Err(FrameError::NegativeLength(-2))
        );
        assert_eq!(
            decode_header(&i32::MIN.to_be_bytes()),
            Err(FrameError::NegativeLength(i32::MIN))
        );
        let mut long = vec![255; 4];
        long.extend(u64::MAX.to_be_bytes());
        assert_eq!(decode_header(&long), Err(FrameError::TooLarge(u64::MAX)));
    }

    #[test]
    fn python_uses_short_form_up_to_i32_max() {
        // CPython: `if n > 0x7fffffff: pre_header = struct.pack("!i", -1); header = struct.pack("!Q", n)`
        let mut buf = [0; MAX_HEADER_LEN];
        assert_eq!(encode_header(0x7fff_ffff, &mut buf).len(), 4);
        assert_eq!(encode_header(0x8000_0000, &mut buf).len(), 12);
    }
}
