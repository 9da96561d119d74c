//! Encode one 20 ms `user_audio_chunk` and decode one `audio` event (JSON + base64); encode
//! 20 and 40 ms chunks (40 ms is the default uplink chunk) as the writer task does: into its
//! reused buffer, then checked as a WebSocket text payload (no allocation once warm).
//!
//! `cargo bench -p trunkline-agent --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use base64::Engine as _;
use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use trunkline_agent::protocol::{
    ServerEvent, encode_user_audio_chunk, encode_user_audio_chunk_into,
};

fn audio_event(len: usize) -> String {
    let audio: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(audio);
    format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{b64}","event_id":7}}}}"#)
}

fn bench(c: &mut Criterion) {
    for (name, len) in [("20ms ulaw_8000", 160usize), ("40ms ulaw_8000", 320)] {
        let chunk: Vec<u8> = (0..len).map(|i| i as u8).collect();
        // What the writer did before: a new `String` per chunk, made a payload (a second
        // allocation: `Bytes` from a `Vec` whose capacity is not its length).
        c.bench_function(&format!("encode user_audio_chunk {name} (String)"), |b| {
            b.iter(|| Utf8Bytes::from(encode_user_audio_chunk(black_box(&chunk))))
        });
        let mut buf = BytesMut::new();
        c.bench_function(
            &format!("encode user_audio_chunk {name} (writer's buffer)"),
            |b| {
                b.iter(|| {
                    let bytes = encode_user_audio_chunk_into(black_box(&chunk), &mut buf);
                    Utf8Bytes::try_from(bytes).expect("ASCII")
                })
            },
        );
    }
    for (name, len) in [("ulaw_8000", 160usize), ("pcm_16000", 640)] {
        let chunk: Vec<u8> = (0..len).map(|i| i as u8).collect();
        c.bench_function(&format!("encode user_audio_chunk 20ms {name}"), |b| {
            b.iter(|| encode_user_audio_chunk(black_box(&chunk)))
        });
        let ev = audio_event(len);
        c.bench_function(&format!("decode audio event 20ms {name}"), |b| {
            b.iter(|| {
                let d = ServerEvent::decode(black_box(&ev)).expect("valid");
                match d.event {
                    ServerEvent::Audio(a) => a.decode_audio().expect("b64"),
                    _ => Vec::new(),
                }
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
