//! SRTP and SRTCP (RFC 3711) with SDES keying (RFC 4568 `a=crypto`), suites
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2), no MKI.
//!
//! The transforms are written here on the RustCrypto block cipher and MAC (`aes`, `ctr`,
//! `hmac`, `sha1`): AES-CM encryption (§4.1.1), HMAC-SHA1 authentication (§4.2), key derivation
//! with a key derivation rate of 0 (§4.3), the rollover counter estimate (§3.3.1, Appendix A)
//! and a 64-packet replay window (§3.3.2) per source on the receiving side. Packets are
//! transformed into the caller's buffer: nothing is allocated per packet. They are checked
//! against the RFC 3711 test vectors, webrtc-rs `webrtc-srtp` (which this module used before)
//! and libsrtp (tests/srtp_vectors.rs, tests/srtp_libsrtp.rs, the gateway's e2e_secure).

use aes::Aes128;
use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use thiserror::Error;

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

    /// Bytes of the SRTP authentication tag (SRTCP's is always [`SRTCP_TAG`]).
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
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
    /// Not an RTP/RTCP packet this transform can take (too short, bad header).
    #[error("srtp: malformed packet")]
    Malformed,
    /// The authentication tag does not match.
    #[error("srtp: authentication failed")]
    Authentication,
    /// Already received, or older than the replay window.
    #[error("srtp: replayed or too old")]
    Replayed,
    /// The output buffer cannot hold the result.
    #[error("srtp: output buffer too small")]
    BufferTooSmall,
}

/// Bytes of the SRTCP authentication tag (80 bits for both suites, RFC 4568 §6.2).
pub const SRTCP_TAG: usize = 10;

/// Bytes SRTP adds to an RTP packet at most (the 80-bit tag); SRTCP adds 4 + [`SRTCP_TAG`].
pub const MAX_OVERHEAD: usize = 4 + SRTCP_TAG;

/// Sources whose replay state is kept per direction; a further one replaces the least
/// recently seen.
const SOURCES: usize = 4;

/// Replay window, packets (RFC 3711 §3.3.2: at least 64).
const WINDOW: u64 = 64;

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

/// Session keys of one direction of RTP or RTCP (RFC 3711 §4.3).
#[derive(Clone)]
struct Keys {
    enc: [u8; 16],
    salt: [u8; 14],
    /// HMAC-SHA1 keyed with the session authentication key, cloned per packet.
    mac: Hmac<Sha1>,
}

impl Keys {
    /// Labels `first`, `first + 1`, `first + 2`: encryption, authentication, salt.
    fn derive(master: &[u8; 30], first: u8) -> Keys {
        let (key, salt) = master.split_at(16);
        let mut enc = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut session_salt = [0u8; 14];
        prf(key, salt, first, &mut enc);
        prf(key, salt, first + 1, &mut auth);
        prf(key, salt, first + 2, &mut session_salt);
        // HMAC takes a key of any length: this cannot fail.
        let mac = <Hmac<Sha1> as Mac>::new_from_slice(&auth)
            .unwrap_or_else(|_| unreachable!("HMAC accepts 20-byte keys"));
        Keys {
            enc,
            salt: session_salt,
            mac,
        }
    }

    /// XOR `data` with the AES-CM keystream of packet `index` of source `ssrc` (§4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        let mut ctr = ctr::Ctr128BE::<Aes128>::new(&self.enc.into(), &iv.into());
        ctr.apply_keystream(data);
    }

    /// The full HMAC-SHA1 of `parts`.
    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the leading bytes of the HMAC of `parts` (constant time).
    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        m.verify_truncated_left(tag).is_ok()
    }
}

/// The key derivation PRF (§4.3.1, §4.3.3): AES-CM keyed with the master key, IV = (master
/// salt XOR label·2^48)·2^16 (key derivation rate 0, so r = 0).
fn prf(master_key: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label;
    let key: [u8; 16] = master_key.try_into().unwrap_or([0; 16]);
    out.fill(0);
    let mut ctr = ctr::Ctr128BE::<Aes128>::new(&key.into(), &iv.into());
    ctr.apply_keystream(out);
}

/// One source's receive state: the highest index authenticated (its ROC and sequence number)
/// and the replay window below it (bit k: index `highest − k` was received).
#[derive(Debug, Clone, Copy)]
struct Replay {
    ssrc: u32,
    highest: u64,
    window: u64,
    last_used: u64,
}

impl Replay {
    /// Whether `index` may be accepted (new, or within the window and not seen yet).
    fn check(&self, index: u64) -> bool {
        if index > self.highest {
            return true;
        }
        let delta = self.highest - index;
        delta < WINDOW && self.window & (1 << delta) == 0
    }

    /// Record an authenticated `index`.
    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            let kept = if shift >= WINDOW {
                0
            } else {
                self.window << shift
            };
            self.window = kept | 1;
            self.highest = index;
        } else {
            self.window |= 1 << (self.highest - index);
        }
    }
}

/// Per-source receive states, a few, without allocation.
#[derive(Debug, Clone, Copy, Default)]
struct Sources {
    slots: [Option<Replay>; SOURCES],
    clock: u64,
}

impl Sources {
    fn get(&self, ssrc: u32) -> Option<&Replay> {
        self.slots.iter().flatten().find(|r| r.ssrc == ssrc)
    }

    /// Record `index` of `ssrc` as authenticated (a new source takes the stalest slot).
    fn accept(&mut self, ssrc: u32, index: u64) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(r) = self.slots.iter_mut().flatten().find(|r| r.ssrc == ssrc) {
            r.accept(index);
            r.last_used = clock;
            return;
        }
        let slot = self
            .slots
            .iter_mut()
            .min_by_key(|s| s.map_or(0, |r| r.last_used))
            .unwrap_or_else(|| unreachable!("SOURCES > 0"));
        *slot = Some(Replay {
            ssrc,
            highest: index,
            window: 1,
            last_used: clock,
        });
    }
}

/// The SRTP index of sequence number `seq` given the highest index so far (RFC 3711 §3.3.1
/// and Appendix A: the rollover counter guessed from how far `seq` is from the last one).
/// `None` for a packet from before the first rollover counter.
fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = (highest >> 16) as u32;
    let s_l = highest as u16;
    let seq32 = i64::from(seq);
    let v = if s_l < 32_768 {
        if seq32 - i64::from(s_l) > 32_768 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if i64::from(s_l) - 32_768 > seq32 {
        roc.wrapping_add(1)
    } else {
        roc
    };
    Some(u64::from(v) << 16 | u64::from(seq))
}

/// The length of an RTP packet's header (fixed part, CSRCs, extension), checked against it.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 || packet.len() < 12 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0F);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|x| <[u8; 4]>::try_from(x).ok())
        .map_or(0, u32::from_be_bytes)
}

/// SRTP/SRTCP for one call: our outgoing keys and the peer's incoming ones, the rollover
/// counter and SRTCP index we send, and replay windows for what we receive.
pub struct SrtpSession {
    tx_rtp: Keys,
    tx_rtcp: Keys,
    rx_rtp: Keys,
    rx_rtcp: Keys,
    tx_tag: usize,
    rx_tag: usize,
    /// The highest index sent per source (ours: one).
    tx_sources: Sources,
    /// The last SRTCP index we sent (31 bits).
    tx_rtcp_index: u32,
    rx_rtp_sources: Sources,
    rx_rtcp_sources: Sources,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpSession")
    }
}

impl SrtpSession {
    /// `local` keys what we send (the key in our SDP), `remote` what we receive.
    pub fn new(local: &SdesKey, remote: &SdesKey) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            tx_rtp: Keys::derive(&local.material, 0),
            tx_rtcp: Keys::derive(&local.material, 3),
            rx_rtp: Keys::derive(&remote.material, 0),
            rx_rtcp: Keys::derive(&remote.material, 3),
            tx_tag: local.suite.rtp_tag_len(),
            rx_tag: remote.suite.rtp_tag_len(),
            tx_sources: Sources::default(),
            tx_rtcp_index: 0,
            rx_rtp_sources: Sources::default(),
            rx_rtcp_sources: Sources::default(),
        })
    }

    /// Encrypt and authenticate an RTP packet into `out` (room for the packet + 10 bytes);
    /// returns the SRTP packet's length.
    pub fn protect_rtp_into(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let hlen = rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
        let n = packet.len();
        let dst = out
            .get_mut(..n + self.tx_tag)
            .ok_or(SrtpError::BufferTooSmall)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = be32(packet, 8);
        let index = match self.tx_sources.get(ssrc) {
            Some(r) => estimate_index(r.highest, seq).unwrap_or(u64::from(seq)),
            None => u64::from(seq),
        };
        let roc = (index >> 16) as u32;
        dst[..n].copy_from_slice(packet);
        self.tx_rtp.crypt(ssrc, index, &mut dst[hlen..n]);
        let tag = self.tx_rtp.tag(&[&dst[..n], &roc.to_be_bytes()]);
        dst[n..].copy_from_slice(&tag[..self.tx_tag]);
        self.tx_sources.accept(ssrc, index);
        Ok(n + self.tx_tag)
    }

    /// Authenticate (with replay check) and decrypt an SRTP packet into `out`; returns the RTP
    /// packet's length.
    pub fn unprotect_rtp_into(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SrtpError> {
        let n = packet
            .len()
            .checked_sub(self.rx_tag)
            .ok_or(SrtpError::Malformed)?;
        let (authed, tag) = packet.split_at(n);
        let hlen = rtp_header_len(authed).ok_or(SrtpError::Malformed)?;
        let seq = u16::from_be_bytes([authed[2], authed[3]]);
        let ssrc = be32(authed, 8);
        let known = self.rx_rtp_sources.get(ssrc).copied();
        let index = match known {
            Some(r) => estimate_index(r.highest, seq).ok_or(SrtpError::Replayed)?,
            None => u64::from(seq),
        };
        if known.is_some_and(|r| !r.check(index)) {
            return Err(SrtpError::Replayed);
        }
        let roc = (index >> 16) as u32;
        if !self.rx_rtp.verify(&[authed, &roc.to_be_bytes()], tag) {
            return Err(SrtpError::Authentication);
        }
        let dst = out.get_mut(..n).ok_or(SrtpError::BufferTooSmall)?;
        dst.copy_from_slice(authed);
        self.rx_rtp.crypt(ssrc, index, &mut dst[hlen..]);
        self.rx_rtp_sources.accept(ssrc, index);
        Ok(n)
    }

    /// Encrypt and authenticate an RTCP compound packet into `out` (room for the packet + 14
    /// bytes: the E flag and SRTCP index, and the tag); returns the SRTCP packet's length.
    pub fn protect_rtcp_into(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        if packet.len() < 8 || packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let n = packet.len();
        let dst = out
            .get_mut(..n + 4 + SRTCP_TAG)
            .ok_or(SrtpError::BufferTooSmall)?;
        let ssrc = be32(packet, 4);
        // Counted from 1, as libsrtp and webrtc-srtp do (libsrtp's srtp_validate vector).
        let index = (self.tx_rtcp_index + 1) & 0x7FFF_FFFF;
        dst[..n].copy_from_slice(packet);
        self.tx_rtcp.crypt(ssrc, u64::from(index), &mut dst[8..n]);
        dst[n..n + 4].copy_from_slice(&(0x8000_0000 | index).to_be_bytes());
        let tag = self.tx_rtcp.tag(&[&dst[..n + 4]]);
        dst[n + 4..].copy_from_slice(&tag[..SRTCP_TAG]);
        self.tx_rtcp_index = index;
        Ok(n + 4 + SRTCP_TAG)
    }

    /// Authenticate (with replay check) and decrypt an SRTCP packet into `out`; returns the
    /// RTCP packet's length.
    pub fn unprotect_rtcp_into(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SrtpError> {
        let n = packet
            .len()
            .checked_sub(4 + SRTCP_TAG)
            .filter(|n| *n >= 8)
            .ok_or(SrtpError::Malformed)?;
        if packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let (authed, tag) = packet.split_at(n + 4);
        let e_index = be32(authed, n);
        let index = u64::from(e_index & 0x7FFF_FFFF);
        let ssrc = be32(authed, 4);
        if self
            .rx_rtcp_sources
            .get(ssrc)
            .is_some_and(|r| !r.check(index))
        {
            return Err(SrtpError::Replayed);
        }
        if !self.rx_rtcp.verify(&[authed], tag) {
            return Err(SrtpError::Authentication);
        }
        let dst = out.get_mut(..n).ok_or(SrtpError::BufferTooSmall)?;
        dst.copy_from_slice(&authed[..n]);
        if e_index & 0x8000_0000 != 0 {
            self.rx_rtcp.crypt(ssrc, index, &mut dst[8..]);
        }
        self.rx_rtcp_sources.accept(ssrc, index);
        Ok(n)
    }

    /// [`SrtpSession::protect_rtp_into`] into a new vector (tests and tools).
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.vec_from(packet, MAX_OVERHEAD, Self::protect_rtp_into)
    }

    /// [`SrtpSession::unprotect_rtp_into`] into a new vector (tests and tools).
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.vec_from(packet, 0, Self::unprotect_rtp_into)
    }

    /// [`SrtpSession::protect_rtcp_into`] into a new vector (tests and tools).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.vec_from(packet, MAX_OVERHEAD, Self::protect_rtcp_into)
    }

    /// [`SrtpSession::unprotect_rtcp_into`] into a new vector (tests and tools).
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.vec_from(packet, 0, Self::unprotect_rtcp_into)
    }

    /// One of the `_into` transforms into a new vector of the packet's length + `grow`.
    fn vec_from(
        &mut self,
        packet: &[u8],
        grow: usize,
        transform: Transform,
    ) -> Result<Vec<u8>, SrtpError> {
        let mut out = vec![0; packet.len() + grow];
        let n = transform(self, packet, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

/// One of [`SrtpSession`]'s `_into` transforms: a packet in, its length written to `out`.
pub type Transform = fn(&mut SrtpSession, &[u8], &mut [u8]) -> Result<usize, SrtpError>;

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
