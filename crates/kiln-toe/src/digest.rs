//! The checksum algorithms AWSTOE names: MD5, SHA1, SHA256 and SHA512.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

pub const ALGORITHMS: &[&str] = &["MD5", "SHA1", "SHA256", "SHA512"];

/// Lower-case hex digest of `data`, or `None` for an unknown algorithm.
pub fn hex_digest(algorithm: &str, data: &[u8]) -> Option<String> {
    Some(match algorithm.to_ascii_uppercase().as_str() {
        "MD5" => hex::encode(Md5::digest(data)),
        "SHA1" => hex::encode(Sha1::digest(data)),
        "SHA256" => hex::encode(Sha256::digest(data)),
        "SHA512" => hex::encode(Sha512::digest(data)),
        _ => return None,
    })
}
