//! The xenstore wire decoder, on whatever a peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xbh_xenstore::wire::{split_nul, Message, HEADER_LEN, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(m) = Message::read_from(&mut rest) {
        assert!(m.payload.len() <= PAYLOAD_MAX);
        // Encoding gives back exactly the bytes decoded.
        let used = data.len() - rest.len();
        let bytes = m.encode();
        assert!(used >= bytes.len());
        let start = used - bytes.len();
        assert_eq!(data.get(start..used), Some(bytes.as_slice()));
        assert_eq!(bytes.len(), HEADER_LEN + m.payload.len());
        let back = Message::read_from(&mut bytes.as_slice()).ok();
        assert_eq!(back.as_ref(), Some(&m));
        // The payload helpers never panic and keep every byte but NULs.
        let _ = m.payload_str();
        let parts = split_nul(&m.payload);
        let kept: usize = parts.iter().map(|p| p.len()).sum();
        assert!(kept <= m.payload.len());
        let _ = m.payload_list();
        let _ = m.op();
    }
});
