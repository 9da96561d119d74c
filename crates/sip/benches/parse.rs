//! Parse + serialise of a typical Twilio-style INVITE with SDP, and SDP parse alone.
//! `cargo bench -p trunkline-sip --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trunkline_sip::message::{Message, frame};
use trunkline_sip::sdp::{MediaParams, SessionDescription, answer};

const SDP: &str = "v=0\r\no=root 1163416599 1163416599 IN IP4 168.86.138.121\r\ns=Twilio Media Gateway\r\n\
c=IN IP4 168.86.138.121\r\nt=0 0\r\nm=audio 14230 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
a=maxptime:20\r\na=sendrecv\r\n";

fn invite() -> Bytes {
    let head = "INVITE sip:+14155550123@trunkline.example.com:5060;transport=udp SIP/2.0\r\n\
Record-Route: <sip:54.172.60.0:5060;lr;r2=on;ftag=98765432_c3356d0b_9a8b7c6d>\r\n\
Via: SIP/2.0/UDP 54.172.60.0:5060;branch=z9hG4bK1c4a.2d8f9b6a7e5c3d1f0a9b8c7d6e5f4a3b.0\r\n\
Via: SIP/2.0/UDP 172.25.10.217:5060;rport=5060;branch=z9hG4bK8cbd1a7e-4f7a-4d1c-9b5e-2f1e3c4d5a6b_c3356d0b_5812345\r\n\
Max-Forwards: 68\r\n\
From: <sip:+14155550199@example.pstn.twilio.com:5060>;tag=98765432_c3356d0b_9a8b7c6d\r\n\
To: <sip:+14155550123@trunkline.example.com>\r\n\
Call-ID: 6e8a4b1c2d3f4e5a6b7c8d9e0f1a2b3c@0.0.0.0\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+14155550199@172.25.10.217:5060>\r\n\
Allow: ACK,BYE,CANCEL,INVITE,OPTIONS,REFER,NOTIFY\r\n\
P-Asserted-Identity: <sip:+14155550199@172.25.10.217:5060>\r\n\
User-Agent: Twilio Gateway\r\n\
X-Twilio-AccountSid: AC00000000000000000000000000000000\r\n\
X-Twilio-CallSid: CA00000000000000000000000000000000\r\n\
Content-Type: application/sdp\r\n";
    Bytes::from(format!("{head}Content-Length: {}\r\n\r\n{SDP}", SDP.len()))
}

fn bench(c: &mut Criterion) {
    let msg = invite();
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_invite", |b| {
        b.iter(|| Message::parse(black_box(msg.clone())).expect("parses"))
    });
    g.bench_function("parse_validate_serialize_invite", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(msg.clone())).expect("parses");
            m.validate().expect("valid");
            black_box(m.to_bytes())
        })
    });
    g.bench_function("parse_invite_typed_accessors", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(msg.clone())).expect("parses");
            let h = m.headers();
            black_box((
                h.top_via().ok(),
                h.cseq().ok(),
                h.from_tag(),
                h.to_tag(),
                h.call_id().map(str::len),
            ))
        })
    });
    g.bench_function("frame_invite", |b| b.iter(|| frame(black_box(&msg))));
    g.finish();

    let mut g = c.benchmark_group("sdp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_twilio_offer", |b| {
        b.iter(|| SessionDescription::parse(black_box(SDP)).expect("parses"))
    });
    let offer = SessionDescription::parse(SDP).expect("parses");
    let ours = MediaParams::g711([203, 0, 113, 5].into(), 40000, 1);
    g.bench_function("answer_and_print", |b| {
        b.iter(|| {
            answer(black_box(&offer), &ours)
                .expect("answer")
                .sdp
                .to_string()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
