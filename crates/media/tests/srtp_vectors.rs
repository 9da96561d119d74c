//! SRTP: RFC 3711 Appendix B test vectors (B.2 AES-CM keystream, B.3 key derivation) checked
//! with an independent reference written here from RFC 3711 §4.1.1, §4.2 and §4.3 on top of
//! the raw AES block cipher and HMAC-SHA1; the libsrtp reference packet (SRTP and SRTCP) protected
//! through Trunkline's `SrtpSession`; round trips for both suites across a sequence wrap;
//! tampered and replayed packets rejected.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::srtp::{SdesKey, SrtpError, SrtpSession, SrtpSuite};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// AES-CM keystream (RFC 3711 §4.1.1): counter block = IV + block index, IV given as 16 bytes.
fn aes_cm(key: &[u8], iv: [u8; 16], len: usize) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut out = Vec::with_capacity(len + 16);
    let mut ctr = u128::from_be_bytes(iv);
    while out.len() < len {
        let mut block = GenericArray::clone_from_slice(&ctr.to_be_bytes());
        cipher.encrypt_block(&mut block);
        out.extend_from_slice(&block);
        ctr = ctr.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Key derivation (RFC 3711 §4.3.1) with key_derivation_rate 0: x = label·2^48 XOR salt.
fn kdf(master_key: &[u8], master_salt: &[u8], label: u8, len: usize) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label;
    aes_cm(master_key, iv, len)
}

/// SRTP IV (§4.1.1): (salt·2^16) XOR (SSRC·2^64) XOR (index·2^16).
fn srtp_iv(salt: &[u8], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
        iv[4 + i] ^= b;
    }
    for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
        iv[8 + i] ^= b;
    }
    iv
}

/// Protect an RTP packet (no CSRC/extension) per RFC 3711 §3.1 with AES_CM_128_HMAC_SHA1_80.
fn reference_protect(master: &[u8], rtp: &[u8], roc: u32) -> Vec<u8> {
    let (mk, ms) = master.split_at(16);
    let ke = kdf(mk, ms, 0, 16);
    let ka = kdf(mk, ms, 1, 20);
    let ks = kdf(mk, ms, 2, 14);
    let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
    let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
    let index = ((roc as u64) << 16) | seq as u64;
    let stream = aes_cm(&ke, srtp_iv(&ks, ssrc, index), rtp.len() - 12);
    let mut out = rtp[..12].to_vec();
    out.extend(rtp[12..].iter().zip(stream).map(|(p, k)| p ^ k));
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&ka).unwrap();
    mac.update(&out);
    mac.update(&roc.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag[..10]);
    out
}

const B3_MASTER: &str = "E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6";

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let salt = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD");
    let iv = srtp_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    assert_eq!(
        aes_cm(&key, iv, 48),
        hex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )
    );
}

#[test]
fn rfc3711_b3_key_derivation() {
    let m = hex(B3_MASTER);
    let (mk, ms) = m.split_at(16);
    assert_eq!(kdf(mk, ms, 0, 16), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    assert_eq!(kdf(mk, ms, 2, 14), hex("30CBBC08863D8C85D49DB34A9AE1"));
    assert_eq!(
        kdf(mk, ms, 1, 94),
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
             E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25
             6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
        )
    );
}

fn b3_key(suite: SrtpSuite) -> SdesKey {
    SdesKey {
        tag: 1,
        suite,
        material: hex(B3_MASTER).try_into().unwrap(),
    }
}

#[test]
fn reference_packet_is_protected_identically_by_the_rfc_reference_libsrtp_and_us() {
    let plain = hex("800f1234decafbadcafebabe abababababababababababababababab");
    let libsrtp =
        hex("800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb");
    assert_eq!(reference_protect(&hex(B3_MASTER), &plain, 0), libsrtp);
    let key = b3_key(SrtpSuite::AesCm128HmacSha1_80);
    let mut s = SrtpSession::new(&key, &key).unwrap();
    assert_eq!(s.protect_rtp(&plain).unwrap().to_vec(), libsrtp);
    assert_eq!(s.unprotect_rtp(&libsrtp).unwrap().to_vec(), plain);
    // SRTCP reference packet (index 1, E flag), libsrtp's srtp_validate.
    let rtcp = hex("81c8000bcafebabe abababababababababababababababab");
    let srtcp =
        hex("81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798");
    let mut s = SrtpSession::new(&key, &key).unwrap();
    assert_eq!(s.protect_rtcp(&rtcp).unwrap().to_vec(), srtcp);
    assert_eq!(s.unprotect_rtcp(&srtcp).unwrap().to_vec(), rtcp);
}

fn packet(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 12 + payload.len()];
    write_rtp(
        &RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: seq as u32 * 160,
            ssrc: 0x1234_5678,
        },
        payload,
        &mut b,
    )
    .unwrap();
    b
}

#[test]
fn round_trip_both_suites_across_sequence_wrap_and_rejects_tampering_and_replay() {
    for (suite, tag_len) in [
        (SrtpSuite::AesCm128HmacSha1_80, 10),
        (SrtpSuite::AesCm128HmacSha1_32, 4),
    ] {
        let a = SdesKey {
            tag: 1,
            suite,
            material: core::array::from_fn(|i| i as u8 * 3 + 1),
        };
        let b = SdesKey {
            tag: 1,
            suite,
            material: core::array::from_fn(|i| 200 - i as u8),
        };
        let attr = a.to_attribute();
        assert_eq!(SdesKey::parse(&attr).unwrap(), a);
        let mut alice = SrtpSession::new(&a, &b).unwrap();
        let mut bob = SrtpSession::new(&b, &a).unwrap();
        for seq in (65_500u16..=65_535).chain(0..40) {
            let payload: Vec<u8> = (0..160).map(|i| (i as u16 ^ seq) as u8).collect();
            let p = packet(seq, &payload);
            let wire = alice.protect_rtp(&p).unwrap();
            assert_eq!(wire.len(), p.len() + tag_len);
            assert_ne!(&wire[12..172], &payload[..]);
            let back = bob.unprotect_rtp(&wire).unwrap();
            assert_eq!(parse_rtp(&back).unwrap().payload, &payload[..], "seq {seq}");
            assert!(bob.unprotect_rtp(&wire).is_err(), "replay of {seq}");
            let mut bad = wire.to_vec();
            bad[30] ^= 0x40;
            assert!(bob.unprotect_rtp(&bad).is_err(), "tampered {seq}");
        }
        let rr = hex("80c90001 12345678");
        let wire = bob.protect_rtcp(&rr).unwrap();
        assert_eq!(alice.unprotect_rtcp(&wire).unwrap().to_vec(), rr);
        // The wrong key fails authentication.
        let mut eve = SrtpSession::new(&b, &b).unwrap();
        assert!(
            eve.unprotect_rtp(&alice.protect_rtp(&packet(1, &[0; 160])).unwrap())
                .is_err()
        );
    }
}

/// webrtc-rs `webrtc-srtp` (the implementation this crate used before its own) as an
/// independent peer, both ways, both suites: RTP across a sequence-number wrap (the rollover
/// counter), with reordering inside the replay window and two sources interleaved, and SRTCP.
#[test]
fn interoperates_with_webrtc_srtp_both_ways() {
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile;
    for (suite, profile) in [
        (
            SrtpSuite::AesCm128HmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
        (
            SrtpSuite::AesCm128HmacSha1_32,
            ProtectionProfile::Aes128CmHmacSha1_32,
        ),
    ] {
        let key = SdesKey {
            tag: 1,
            suite,
            material: core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5A),
        };
        let context = || {
            Context::new(
                &key.material[..16],
                &key.material[16..],
                profile,
                None,
                None,
            )
            .unwrap()
        };
        let (mut theirs_tx, mut theirs_rx) = (context(), context());
        let mut ours = SrtpSession::new(&key, &key).unwrap();
        // Two sources, the second starting just below the wrap, packets 5 and 6 of each
        // swapped (reordered within the window).
        let mut order: Vec<(u32, u16)> = Vec::new();
        for k in 0..200u16 {
            order.push((0x1111_1111, 65_400u16.wrapping_add(k)));
            order.push((0x2222_2222, 65_530u16.wrapping_add(k)));
        }
        order.swap(10, 12);
        order.swap(11, 13);
        for (ssrc, seq) in order {
            let payload: Vec<u8> = (0..160).map(|i| (i as u16 ^ seq) as u8).collect();
            let mut p = packet(seq, &payload);
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            // Ours → theirs.
            let wire = ours.protect_rtp(&p).unwrap();
            assert_eq!(
                theirs_rx.decrypt_rtp(&wire).unwrap().to_vec(),
                p,
                "{suite:?} ours→theirs {ssrc:x} seq {seq}"
            );
            // Theirs → ours.
            let wire = theirs_tx.encrypt_rtp(&p).unwrap();
            assert_eq!(
                ours.unprotect_rtp(&wire).unwrap(),
                p,
                "{suite:?} theirs→ours {ssrc:x} seq {seq}"
            );
            assert_eq!(ours.unprotect_rtp(&wire), Err(SrtpError::Replayed));
        }
        for k in 0..5u8 {
            let rr = hex(&format!("80c90001 1234567{k}"));
            let wire = ours.protect_rtcp(&rr).unwrap();
            assert_eq!(theirs_rx.decrypt_rtcp(&wire).unwrap().to_vec(), rr);
            let wire = theirs_tx.encrypt_rtcp(&rr).unwrap();
            assert_eq!(ours.unprotect_rtcp(&wire).unwrap(), rr);
            assert_eq!(ours.unprotect_rtcp(&wire), Err(SrtpError::Replayed));
            let mut bad = wire.to_vec();
            bad[9] ^= 1;
            assert_eq!(ours.unprotect_rtcp(&bad), Err(SrtpError::Authentication));
        }
    }
}

#[test]
fn packets_older_than_the_window_and_short_ones_are_refused() {
    let key = b3_key(SrtpSuite::AesCm128HmacSha1_80);
    let mut tx = SrtpSession::new(&key, &key).unwrap();
    let mut rx = SrtpSession::new(&key, &key).unwrap();
    let wires: Vec<Vec<u8>> = (0..100u16)
        .map(|seq| tx.protect_rtp(&packet(seq, &[7; 160])).unwrap())
        .collect();
    assert!(rx.unprotect_rtp(&wires[99]).is_ok());
    // 99 − 35 = 64 behind the highest: outside the 64-packet window; 36 is inside.
    assert_eq!(rx.unprotect_rtp(&wires[35]), Err(SrtpError::Replayed));
    assert!(rx.unprotect_rtp(&wires[36]).is_ok());
    assert_eq!(rx.unprotect_rtp(&wires[36]), Err(SrtpError::Replayed));
    for len in [0, 5, 11, 21] {
        assert_eq!(
            rx.unprotect_rtp(&wires[50][..len]),
            Err(SrtpError::Malformed),
            "{len}"
        );
    }
    assert_eq!(rx.unprotect_rtcp(&[0x80; 21]), Err(SrtpError::Malformed));
    let mut out = [0u8; 100];
    assert_eq!(
        tx.protect_rtp_into(&packet(100, &[7; 160]), &mut out),
        Err(SrtpError::BufferTooSmall)
    );
}
