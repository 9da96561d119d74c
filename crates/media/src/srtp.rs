//! SRTP and SRTCP (RFC 3711) with SDES keying (RFC 4568 `a=crypto`), suites
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2), no MKI.
//!
//! The cryptography is webrtc-rs `webrtc-srtp` 0.17 (checked against libsrtp2); this module parses
//! and formats the SDP attribute and keeps one context per direction, with replay protection
//! (RFC 3711 §3.3.2) on the receiving side.

use bytes::Bytes;
use thiserror::Error;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// SDES crypto suites supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpSuite {
    /// 80-bit authentication tag.
    AesCm128HmacSha1_80,
    /// 32-bit authentication tag (RTP; SRTCP still uses 80 bits).
    AesCm128HmacSha1_32,
}

impl SrtpSuite {
    /// The SDP name.
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// Errors of SDES parsing and SRTP processing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SrtpError {
    /// The `a=crypto` value is malformed.
    #[error("malformed crypto attribute")]
    BadAttribute,
    /// Suite not supported.
    #[error("unsupported crypto suite")]
    UnsupportedSuite,
    /// MKI is not supported.
    #[error("mki not supported")]
    MkiNotSupported,
    /// Key material is not 30 bytes of base64.
    #[error("bad key material")]
    BadKey,
    /// Authentication failed, replayed, or malformed packet.
    #[error("srtp: {0}")]
    Crypto(String),
}

/// One `a=crypto` line's keying material.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    /// The crypto tag.
    pub tag: u32,
    /// The suite.
    pub suite: SrtpSuite,
    /// 16-byte master key followed by the 14-byte master salt.
    pub material: [u8; 30],
}

impl std::fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesKey")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("material", &"<redacted>")
            .finish()
    }
}

impl SdesKey {
    /// Parse the value of an `a=crypto:` attribute (without the `a=crypto:` prefix), e.g.
    /// `1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:32`.
    pub fn parse(value: &str) -> Result<SdesKey, SrtpError> {
        let mut it = value.split_ascii_whitespace();
        let tag = it
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or(SrtpError::BadAttribute)?;
        let suite = match it.next().ok_or(SrtpError::BadAttribute)? {
            "AES_CM_128_HMAC_SHA1_80" => SrtpSuite::AesCm128HmacSha1_80,
            "AES_CM_128_HMAC_SHA1_32" => SrtpSuite::AesCm128HmacSha1_32,
            _ => return Err(SrtpError::UnsupportedSuite),
        };
        let params = it.next().ok_or(SrtpError::BadAttribute)?;
        // Only the first key-param is used (RFC 4568 allows several joined by ';').
        let first = params.split(';').next().unwrap_or_default();
        let inline = first
            .strip_prefix("inline:")
            .ok_or(SrtpError::BadAttribute)?;
        let mut parts = inline.split('|');
        let key_b64 = parts.next().ok_or(SrtpError::BadAttribute)?;
        for p in parts {
            if p.contains(':') {
                return Err(SrtpError::MkiNotSupported);
            }
        }
        let raw = base64_decode(key_b64).ok_or(SrtpError::BadKey)?;
        let material: [u8; 30] = raw.try_into().map_err(|_| SrtpError::BadKey)?;
        Ok(SdesKey {
            tag,
            suite,
            material,
        })
    }

    /// The attribute value for our SDP, e.g. `1 AES_CM_128_HMAC_SHA1_80 inline:…`.
    pub fn to_attribute(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64_encode(&self.material)
        )
    }
}

/// SRTP/SRTCP for one call: our outgoing context and the peer's incoming one.
pub struct SrtpSession {
    tx: Context,
    rx: Context,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpSession")
    }
}

fn context(key: &SdesKey, replay: bool) -> Result<Context, SrtpError> {
    let (rtp_opt, rtcp_opt) = if replay {
        (
            Some(srtp_replay_protection(64)),
            Some(srtcp_replay_protection(64)),
        )
    } else {
        (None, None)
    };
    Context::new(
        &key.material[..16],
        &key.material[16..],
        key.suite.profile(),
        rtp_opt,
        rtcp_opt,
    )
    .map_err(|e| SrtpError::Crypto(e.to_string()))
}

impl SrtpSession {
    /// `local` keys what we send (the key in our SDP), `remote` what we receive.
    pub fn new(local: &SdesKey, remote: &SdesKey) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            tx: context(local, false)?,
            rx: context(remote, true)?,
        })
    }

    /// Encrypt and authenticate an RTP packet.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.tx
            .encrypt_rtp(packet)
            .map_err(|e| SrtpError::Crypto(e.to_string()))
    }

    /// Authenticate (with replay check) and decrypt an SRTP packet.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.rx
            .decrypt_rtp(packet)
            .map_err(|e| SrtpError::Crypto(e.to_string()))
    }

    /// Encrypt and authenticate an RTCP compound packet.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.tx
            .encrypt_rtcp(packet)
            .map_err(|e| SrtpError::Crypto(e.to_string()))
    }

    /// Authenticate and decrypt an SRTCP packet.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Bytes, SrtpError> {
        self.rx
            .decrypt_rtcp(packet)
            .map_err(|e| SrtpError::Crypto(e.to_string()))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Standard base64 (padding optional). `None` on bad characters.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..40usize {
            let d: Vec<u8> = (0..n as u8).map(|x| x.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&d)).unwrap(), d);
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn parses_rfc4568_example_and_rejects_mki() {
        let k = SdesKey::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .unwrap();
        assert_eq!(k.tag, 1);
        assert_eq!(k.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(SdesKey::parse(&k.to_attribute()).unwrap(), k);
        assert_eq!(
            SdesKey::parse(
                "1 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"
            ),
            Err(SrtpError::MkiNotSupported)
        );
        assert_eq!(
            SdesKey::parse("1 F8_128_HMAC_SHA1_80 inline:x"),
            Err(SrtpError::UnsupportedSuite)
        );
    }
}
