//! SDES-SRTP interop with libsrtp2, an implementation we did not write (PyPI `pylibsrtp`, which
//! bundles libsrtp; pinned and installed by `.ci/run`), driven by `tests/srtp_libsrtp.py`:
//! (a) RTP and RTCP protected by our [`SrtpSession`] decrypt in libsrtp with the same key to the
//!     same packets (both suites);
//! (b) packets libsrtp protected are accepted by our [`SrtpSession`] and by a [`MediaSession`],
//!     which plays their audio;
//! (c) tampered packets are rejected both ways and counted (`srtp_failures`).
//!
//! Python or pylibsrtp missing: the test fails when `CI` is set, else it is skipped with a message.
#![allow(clippy::unwrap_used)] // test helpers

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use common::{ms, t0};
use trunkline_media::G711;
use trunkline_media::rtcp::WallClock;
use trunkline_media::rtp::{RtpHeader, write_rtp};
use trunkline_media::session::{MediaConfig, MediaSession};
use trunkline_media::srtp::{SdesKey, SrtpSession, SrtpSuite};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/srtp_libsrtp.py");

fn have_pylibsrtp() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pylibsrtp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with pylibsrtp is missing in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: python3 -c 'import pylibsrtp' failed (pip install pylibsrtp==1.0.0)");
    }
    ok
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtp,
    Rtcp,
}

/// Runs libsrtp over `packets` (`mode`: protect or unprotect); one result per packet.
fn libsrtp(
    mode: &str,
    suite: SrtpSuite,
    key: &SdesKey,
    packets: &[(Kind, Vec<u8>)],
) -> Vec<Result<Vec<u8>, String>> {
    let profile = match suite {
        SrtpSuite::AesCm128HmacSha1_80 => "80",
        SrtpSuite::AesCm128HmacSha1_32 => "32",
    };
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args([mode, profile, &hex(&key.material)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut input = String::new();
    for (kind, p) in packets {
        let k = if *kind == Kind::Rtp { "rtp" } else { "rtcp" };
        input.push_str(&format!("{k} {}\n", hex(p)));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let results: Vec<Result<Vec<u8>, String>> = text
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("ok", h)) => Ok(unhex(h)),
            Some((_, e)) => Err(e.to_owned()),
            None => Err(l.to_owned()),
        })
        .collect();
    assert_eq!(results.len(), packets.len(), "{text}");
    results
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn key(suite: SrtpSuite, seed: u8) -> SdesKey {
    let mut material = [0u8; 30];
    for (i, m) in material.iter_mut().enumerate() {
        *m = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
    }
    SdesKey {
        tag: 1,
        suite,
        material,
    }
}

/// `n` RTP packets of SSRC `ssrc`, 160 bytes of µ-law each (payload byte = packet index).
fn rtp_packets(ssrc: u32, n: u16) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut buf = [0u8; 172];
            let h = RtpHeader {
                marker: i == 0,
                payload_type: 0,
                sequence: 1000 + i,
                timestamp: 160 * u32::from(i),
                ssrc,
            };
            let payload = [(i % 200) as u8 + 1; 160];
            let len = write_rtp(&h, &payload, &mut buf).unwrap();
            buf[..len].to_vec()
        })
        .collect()
}

/// An RTCP receiver report without report blocks, then an SDES CNAME chunk (a compound).
fn rtcp_packet(ssrc: u32, salt: u8) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    // SDES: one chunk, CNAME "tl" + salt, padded to 32 bits.
    let cname = [b't', b'l', b'0' + salt % 10];
    let mut chunk = ssrc.to_be_bytes().to_vec();
    chunk.extend_from_slice(&[1, cname.len() as u8]);
    chunk.extend_from_slice(&cname);
    chunk.push(0);
    while !chunk.len().is_multiple_of(4) {
        chunk.push(0);
    }
    let words = (chunk.len() / 4) as u16;
    p.extend_from_slice(&[0x81, 202]);
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&chunk);
    p
}

#[test]
fn our_srtp_decrypts_in_libsrtp_to_the_same_packets() {
    if !have_pylibsrtp() {
        return;
    }
    for suite in [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
    ] {
        let (ours, theirs) = (key(suite, 1), key(suite, 2));
        let mut s = SrtpSession::new(&ours, &theirs).unwrap();
        let plain: Vec<(Kind, Vec<u8>)> = rtp_packets(0xA1B2_C3D4, 50)
            .into_iter()
            .map(|p| (Kind::Rtp, p))
            .chain((0..3).map(|i| (Kind::Rtcp, rtcp_packet(0xA1B2_C3D4, i))))
            .collect();
        let protected: Vec<(Kind, Vec<u8>)> = plain
            .iter()
            .map(|(k, p)| {
                let c = match k {
                    Kind::Rtp => s.protect_rtp(p).unwrap(),
                    Kind::Rtcp => s.protect_rtcp(p).unwrap(),
                };
                assert_ne!(&c[..], &p[..]);
                (*k, c.to_vec())
            })
            .collect();
        let decrypted = libsrtp("unprotect", suite, &ours, &protected);
        for ((_, p), d) in plain.iter().zip(&decrypted) {
            assert_eq!(d.as_ref().expect("libsrtp accepted our packet"), p);
        }
        // Tampered (one payload bit): libsrtp refuses it.
        let mut bad = protected[10].1.clone();
        bad[30] ^= 0x01;
        let mut bad_rtcp = protected[51].1.clone();
        bad_rtcp[9] ^= 0x80;
        let mut s2 = SrtpSession::new(&ours, &theirs).unwrap();
        let fresh = s2.protect_rtp(&plain[0].1).unwrap().to_vec();
        let r = libsrtp(
            "unprotect",
            suite,
            &ours,
            &[(Kind::Rtp, fresh), (Kind::Rtp, bad), (Kind::Rtcp, bad_rtcp)],
        );
        assert!(r[0].is_ok());
        assert!(r[1].is_err(), "libsrtp took a tampered RTP packet");
        assert!(r[2].is_err(), "libsrtp took a tampered RTCP packet");
    }
}

#[test]
fn libsrtp_packets_are_accepted_played_and_tampering_is_counted() {
    if !have_pylibsrtp() {
        return;
    }
    let suite = SrtpSuite::AesCm128HmacSha1_80;
    let (ours, theirs) = (key(suite, 3), key(suite, 4));
    let plain = rtp_packets(0x0BAD_CAFE, 30);
    let mut input: Vec<(Kind, Vec<u8>)> = plain.iter().map(|p| (Kind::Rtp, p.clone())).collect();
    input.push((Kind::Rtcp, rtcp_packet(0x0BAD_CAFE, 7)));
    let protected: Vec<Vec<u8>> = libsrtp("protect", suite, &theirs, &input)
        .into_iter()
        .map(|r| r.expect("libsrtp protects"))
        .collect();

    // Our SrtpSession: every packet decrypts to what libsrtp was given.
    let mut s = SrtpSession::new(&ours, &theirs).unwrap();
    for (p, c) in plain.iter().zip(&protected) {
        assert_eq!(&s.unprotect_rtp(c).unwrap()[..], &p[..]);
    }
    assert_eq!(
        &s.unprotect_rtcp(&protected[30]).unwrap()[..],
        &input[30].1[..]
    );
    // A replay is refused.
    assert!(s.unprotect_rtp(&protected[5]).is_err());

    // A MediaSession keyed from SDP: libsrtp's packets play, tampered ones are counted.
    let start = t0();
    let wall = WallClock {
        instant: start,
        system: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
    };
    let mut cfg = MediaConfig::new(G711::Ulaw, 0x1111, wall);
    cfg.srtp = Some((ours.clone(), theirs.clone()));
    let mut m = MediaSession::new(cfg).unwrap();
    m.start(start);
    let from: SocketAddr = "192.0.2.7:30000".parse().unwrap();
    let mut heard = Vec::new();
    for (i, c) in protected[..30].iter().enumerate() {
        let now = start + ms(20 * i as u64);
        let mut tampered = c.clone();
        tampered[40] ^= 0x04;
        m.handle_rtp(&tampered, from, now);
        m.handle_rtp(c, from, now);
        let f = m.pop_audio(now);
        if f.data.iter().all(|b| *b == f.data[0]) && f.data[0] != 0xFF {
            heard.push(f.data[0]);
        }
    }
    let mut tampered_rtcp = protected[30].clone();
    tampered_rtcp[12] ^= 0x10;
    m.handle_rtcp(&tampered_rtcp, from, start + ms(600));
    m.handle_rtcp(&protected[30], from, start + ms(600));
    let st = m.stats();
    assert_eq!(st.rtp_received, 30, "every libsrtp packet accepted");
    assert_eq!(
        st.srtp_failures, 31,
        "every tampered packet refused and counted"
    );
    // The played frames are libsrtp's payloads (packet k carries byte k + 1), in order.
    assert!(heard.len() >= 15, "{heard:?}");
    assert!(heard.windows(2).all(|w| w[1] == w[0] + 1), "{heard:?}");
}
