//! Fuzzes the frame-header decoder with arbitrary bytes.
//!
//! The decoder reads what another process wrote, so no input may make it panic, and its verdict must
//! be consistent: a complete header is 4 or 12 bytes long and fits in the input, a request for more
//! bytes asks for more than the input holds, and the announced length round-trips through the encoder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use multiprocess::frame::{Header, MAX_HEADER_LEN, SHORT_MAX, decode_header, encode_header};

fuzz_target!(|data: &[u8]| {
    match decode_header(data) {
        Ok(Header::Complete { header_len, len }) => {
            assert!(header_len == 4 || header_len == MAX_HEADER_LEN);
            assert!(header_len <= data.len());
            assert!(len <= isize::MAX as u64);
            // Decoding only the header gives the same verdict as decoding it with trailing bytes.
            assert_eq!(
                decode_header(&data[..header_len]),
                Ok(Header::Complete { header_len, len })
            );
            // The encoder produces the canonical form: the same bytes unless a short length was
            // (legally) sent in the long form.
            let mut buf = [0u8; MAX_HEADER_LEN];
            let canonical = encode_header(len, &mut buf);
            if header_len == 4 || len > SHORT_MAX {
                assert_eq!(canonical, &data[..header_len]);
            }
            assert_eq!(
                decode_header(canonical),
                Ok(Header::Complete {
                    header_len: canonical.len(),
                    len
                })
            );
        }
        Ok(Header::NeedMore(n)) => {
            assert!(n > data.len());
            assert!(n == 4 || n == MAX_HEADER_LEN);
        }
        Err(e) => {
            // Errors only ever come from a complete short header (a negative length) or a complete
            // long one (a length too large); both are final.
            assert!(data.len() >= 4);
            let _ = e.to_string();
        }
    }
});
