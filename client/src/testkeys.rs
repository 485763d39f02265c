//! RSA keys shared by the tests of this crate: generation is the slow part.

use std::sync::OnceLock;
use stockade_proto::identity::ClientKey;

/// Client 1 in most tests.
pub fn key_a() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| ClientKey::generate(2048).expect("key generation"))
}

/// Client 30 in most tests.
pub fn key_b() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| ClientKey::generate(2048).expect("key generation"))
}

/// A third party (the tampering relay).
pub fn key_c() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| ClientKey::generate(2048).expect("key generation"))
}
