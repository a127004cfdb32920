//! The token parsers (`haven_core::tokens`): any text is either refused
//! with an error or parsed into a token that prints back as itself.
#![no_main]

use haven_core::tokens::{ApiToken, JoinToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ApiToken::parse(text) {
        assert_eq!(ApiToken::parse(&t.to_string()).unwrap().to_string(), t.to_string());
    }
    if let Ok(t) = JoinToken::parse(text) {
        let again = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(again, t);
        assert_eq!(t.ca_sha256.len(), 64);
    }
});
