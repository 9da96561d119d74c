//! Encode one 20 ms `user_audio_chunk` and decode one `audio` event (JSON + base64).
//!
//! `cargo bench -p trunkline-agent --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use trunkline_agent::protocol::{ServerEvent, encode_user_audio_chunk};

fn audio_event(len: usize) -> String {
    let audio: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(audio);
    format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{b64}","event_id":7}}}}"#)
}

fn bench(c: &mut Criterion) {
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
