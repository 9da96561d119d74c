//! Criterion benchmarks of the media hot path. Run short:
//! `cargo bench -p trunkline-media --bench media -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use trunkline_media::G711;
use trunkline_media::agent_audio::{AgentFormat, AgentToPhone, PhoneToAgent};
use trunkline_media::jitter::{JitterBuffer, JitterConfig};
use trunkline_media::pacer::{Pacer, PacerConfig};
use trunkline_media::resample::Resampler;
use trunkline_media::rtcp::WallClock;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::session::{MediaConfig, MediaSession};
use trunkline_media::srtp::{SdesKey, SrtpSession, SrtpSuite};

const TICK: Duration = Duration::from_millis(20);

/// The answering-machine detector, per 20 ms frame: loud speech-like frames (VAD + the tone
/// check), a pure tone (beep tracking) and silence. The detector is reset before it would stop.
fn amd(c: &mut Criterion) {
    use trunkline_media::amd::{Amd, AmdConfig, FRAME_SAMPLES};
    let mut seed = 5u32;
    let speech: [i16; FRAME_SAMPLES] = std::array::from_fn(|_| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((seed >> 16) as i32 - 32768) as i16 / 4
    });
    let tone: [i16; FRAME_SAMPLES] = std::array::from_fn(|i| {
        (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin()) as i16
    });
    let silence = [0i16; FRAME_SAMPLES];
    for (name, frame) in [("speech", speech), ("tone", tone), ("silence", silence)] {
        c.bench_function(&format!("amd/{name}/per_frame"), |b| {
            let t0 = Instant::now();
            let mut amd = Amd::new(AmdConfig {
                max_words: u32::MAX,
                greeting: Duration::from_secs(3600),
                initial_silence: Duration::from_secs(3600),
                total_analysis_time: Duration::from_secs(3600),
                max_word_length: Duration::from_secs(3600),
                ..AmdConfig::default()
            });
            let mut i = 0u32;
            b.iter(|| {
                amd.push_frame(t0 + TICK * i, black_box(&frame));
                i = i.wrapping_add(1);
                black_box(amd.poll_event())
            })
        });
    }
}

fn g711(c: &mut Criterion) {
    let pcm: Vec<i16> = (0..160)
        .map(|i| ((i * 811) % 65536 - 32768) as i16)
        .collect();
    let mut codes = [0u8; 160];
    let mut out = [0i16; 160];
    for law in [G711::Ulaw, G711::Alaw] {
        c.bench_function(&format!("g711/{law:?}/encode_160"), |b| {
            b.iter(|| law.encode_slice(black_box(&pcm), &mut codes))
        });
        c.bench_function(&format!("g711/{law:?}/decode_160"), |b| {
            b.iter(|| law.decode_slice(black_box(&codes), &mut out))
        });
    }
}

fn resample(c: &mut Criterion) {
    for (from, to) in [
        (8000, 16000),
        (16000, 8000),
        (22050, 8000),
        (24000, 8000),
        (44100, 8000),
        (48000, 8000),
    ] {
        let mut r = Resampler::new(from, to).unwrap();
        let input: Vec<i16> = (0..from / 50).map(|i| ((i * 97) % 20000) as i16).collect();
        let mut out = Vec::with_capacity(2048);
        c.bench_function(&format!("resample/{from}->{to}/20ms"), |b| {
            b.iter(|| {
                out.clear();
                r.process(black_box(&input), &mut out);
            })
        });
    }
}

fn jitter_and_pacer(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut jb = JitterBuffer::new(G711::Ulaw, JitterConfig::default());
    let payload = [7u8; 160];
    let mut k: u32 = 0;
    c.bench_function("jitter/push+pop", |b| {
        b.iter(|| {
            let now = t0 + TICK * k;
            jb.push(1, k.wrapping_mul(160), false, black_box(&payload), now);
            black_box(jb.pop(now));
            k += 1;
        })
    });
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(t0, 0);
    let mut n: u32 = 0;
    c.bench_function("pacer/push160+tick", |b| {
        b.iter(|| {
            p.push(1, black_box(&payload));
            black_box(p.poll_frame(t0 + TICK * n));
            n += 1;
        })
    });
}

fn session(law: G711, t0: Instant) -> MediaSession {
    let mut cfg = MediaConfig::new(
        law,
        0x1111,
        WallClock {
            instant: t0,
            system: SystemTime::now(),
        },
    );
    cfg.remote_rtp = Some("127.0.0.1:4000".parse().unwrap());
    cfg.rtcp_interval = Duration::from_secs(3600);
    let mut s = MediaSession::new(cfg).unwrap();
    s.start(t0);
    s
}

fn uplink_downlink(c: &mut Criterion) {
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    for (name, fmt) in [
        ("ulaw_passthrough", AgentFormat::Ulaw8000),
        ("pcm_16000", AgentFormat::Pcm16(16000)),
    ] {
        // Uplink: RTP datagram → parse → jitter buffer → pop → agent bytes.
        let t0 = Instant::now();
        let mut s = session(G711::Ulaw, t0);
        let mut up = PhoneToAgent::new(G711::Ulaw, fmt);
        let mut pkt = [0u8; 172];
        let mut agent_bytes = Vec::with_capacity(1024);
        let mut k: u32 = 0;
        c.bench_function(&format!("uplink/{name}/per_packet"), |b| {
            b.iter(|| {
                let now = t0 + TICK * k;
                let h = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: k as u16,
                    timestamp: k.wrapping_mul(160),
                    ssrc: 42,
                };
                write_rtp(&h, &[0x55; 160], &mut pkt).unwrap();
                s.handle_rtp(black_box(&pkt), from, now);
                let f = s.pop_audio(now);
                agent_bytes.clear();
                up.convert(&f.data, &mut agent_bytes);
                black_box(&agent_bytes);
                k += 1;
            })
        });
        // Downlink: agent bytes (20 ms) → G.711 frame → pacer → RTP serialised.
        let t0 = Instant::now();
        let mut s = session(G711::Ulaw, t0);
        let mut down = AgentToPhone::new(fmt, G711::Ulaw);
        let chunk = vec![0x11u8; fmt.bytes_per_20ms()];
        let mut codes = Vec::with_capacity(1024);
        let mut buf = [0u8; 1500];
        let mut n: u32 = 0;
        c.bench_function(&format!("downlink/{name}/per_frame"), |b| {
            b.iter(|| {
                codes.clear();
                down.convert(black_box(&chunk), &mut codes);
                s.push_agent_audio(1, &codes);
                let t = s.poll_transmit(t0 + TICK * n, &mut buf).unwrap();
                black_box(&buf[..t.len]);
                n += 1;
            })
        });
    }
}

fn srtp(c: &mut Criterion) {
    let key = SdesKey {
        tag: 1,
        suite: SrtpSuite::AesCm128HmacSha1_80,
        material: [3u8; 30],
    };
    let mut tx = SrtpSession::new(&key, &key).unwrap();
    let mut rx = SrtpSession::new(&key, &key).unwrap();
    let mut pkt = [0u8; 172];
    let mut k: u16 = 0;
    let (mut wire, mut plain) = ([0u8; 200], [0u8; 200]);
    c.bench_function("srtp/protect+unprotect", |b| {
        b.iter(|| {
            let h = RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: k,
                timestamp: k as u32 * 160,
                ssrc: 9,
            };
            write_rtp(&h, &[0x55; 160], &mut pkt).unwrap();
            let n = tx.protect_rtp_into(&pkt, &mut wire).unwrap();
            black_box(rx.unprotect_rtp_into(&wire[..n], &mut plain).ok());
            k = k.wrapping_add(1);
        })
    });
    let mut pkt = [0u8; 172];
    write_rtp(&RtpHeader::default(), &[1; 160], &mut pkt).unwrap();
    c.bench_function("rtp/parse", |b| {
        b.iter(|| black_box(parse_rtp(black_box(&pkt)).ok()))
    });
    c.bench_function("rtp/parse_webrtc_rs", |b| {
        use webrtc_util::marshal::Unmarshal;
        let bytes = bytes::Bytes::copy_from_slice(&pkt);
        b.iter(|| black_box(rtp::packet::Packet::unmarshal(&mut bytes.clone()).ok()))
    });
}

criterion_group!(
    benches,
    amd,
    g711,
    resample,
    jitter_and_pacer,
    uplink_downlink,
    srtp
);
criterion_main!(benches);
