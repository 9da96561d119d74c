//! Audio between the trunk's G.711 and the agent's formats (ELEVENLABS.md §2.5).
//!
//! - `ulaw_8000` with a PCMU trunk: passthrough — the RTP payload bytes go to the agent unchanged
//!   and the agent's bytes go into RTP unchanged (no decode, no resample).
//! - `ulaw_8000` with a PCMA trunk: a table transcode per byte.
//! - `pcm_<rate>` (16-bit little-endian mono): G.711 decode/encode plus a streaming resampler
//!   (state carried across frames, so no clicks at frame edges); odd bytes split across agent
//!   chunks are carried over.

use bytes::{Bytes, BytesMut};
use trunkline_agent::AudioFormat;
use trunkline_media::g711::G711;
use trunkline_media::jitter::FRAME;
use trunkline_media::resample::Resampler;

/// Phone → agent: 20 ms G.711 frames in, `user_audio_chunk` payloads out.
#[derive(Debug)]
pub struct Uplink {
    format: AudioFormat,
    law: G711,
    resampler: Option<Resampler>,
    pcm8: Vec<i16>,
    pcm_out: Vec<i16>,
    buf: BytesMut,
    frames: usize,
    /// Bytes of one chunk (what the buffer grows by: the chunks split off share it).
    chunk_bytes: usize,
}

impl Uplink {
    /// A converter to `format` from frames of `law`.
    pub fn new(format: AudioFormat, law: G711) -> Self {
        let resampler = match format {
            AudioFormat::Pcm { sample_rate } if sample_rate != 8000 => {
                Resampler::new(8000, sample_rate)
            }
            _ => None,
        };
        Uplink {
            format,
            law,
            resampler,
            pcm8: Vec::new(),
            pcm_out: Vec::new(),
            buf: BytesMut::new(),
            frames: 0,
            chunk_bytes: 0,
        }
        .with_chunk_frames(2)
    }

    /// Size the buffer for chunks of `frames` 20 ms frames (memory: one chunk, not more).
    pub fn with_chunk_frames(mut self, frames: usize) -> Self {
        let per_frame = match self.format {
            AudioFormat::Ulaw8000 => FRAME,
            AudioFormat::Pcm { sample_rate } => (sample_rate as usize / 50) * 2,
        };
        self.chunk_bytes = per_frame * frames.max(1);
        self
    }

    /// The law of the frames pushed from now on.
    pub fn set_law(&mut self, law: G711) {
        self.law = law;
    }

    /// True when the agent takes exactly what RTP carries.
    pub fn is_passthrough(&self) -> bool {
        self.format == AudioFormat::Ulaw8000 && self.law == G711::Ulaw
    }

    /// Add one 20 ms frame.
    pub fn push_frame(&mut self, codes: &[u8; FRAME]) {
        self.frames += 1;
        if self.buf.capacity() - self.buf.len() < FRAME {
            self.buf.reserve(self.chunk_bytes);
        }
        match self.format {
            AudioFormat::Ulaw8000 => {
                if self.law == G711::Ulaw {
                    self.buf.extend_from_slice(codes);
                } else {
                    let start = self.buf.len();
                    self.buf.extend_from_slice(codes);
                    G711::Alaw.transcode_in_place(G711::Ulaw, &mut self.buf[start..]);
                }
            }
            AudioFormat::Pcm { .. } => {
                self.pcm8.resize(FRAME, 0);
                self.law.decode_slice(codes, &mut self.pcm8);
                let samples: &[i16] = match self.resampler.as_mut() {
                    Some(r) => {
                        self.pcm_out.clear();
                        r.process(&self.pcm8, &mut self.pcm_out);
                        &self.pcm_out
                    }
                    None => &self.pcm8,
                };
                self.buf.reserve(samples.len() * 2);
                for s in samples {
                    self.buf.extend_from_slice(&s.to_le_bytes());
                }
            }
        }
    }

    /// A chunk of `frames` frames when that many are buffered (or whatever is left with `all`).
    pub fn take_chunk(&mut self, frames: usize, all: bool) -> Option<Bytes> {
        if self.frames == 0 || (self.frames < frames && !all) {
            return None;
        }
        self.frames = 0;
        Some(self.buf.split().freeze())
    }
}

/// Agent → phone: `audio` event payloads in, G.711 codes out.
#[derive(Debug)]
pub struct Downlink {
    format: AudioFormat,
    law: G711,
    resampler: Option<Resampler>,
    carry: Option<u8>,
    pcm_in: Vec<i16>,
    pcm8: Vec<i16>,
}

impl Downlink {
    /// A converter from `format` to codes of `law`.
    pub fn new(format: AudioFormat, law: G711) -> Self {
        let resampler = match format {
            AudioFormat::Pcm { sample_rate } if sample_rate != 8000 => {
                Resampler::new(sample_rate, 8000)
            }
            _ => None,
        };
        Downlink {
            format,
            law,
            resampler,
            carry: None,
            pcm_in: Vec::new(),
            pcm8: Vec::new(),
        }
    }

    /// The law to produce from now on.
    pub fn set_law(&mut self, law: G711) {
        self.law = law;
    }

    /// Convert one payload, appending codes to `out`.
    pub fn convert(&mut self, audio: &[u8], out: &mut Vec<u8>) {
        match self.format {
            AudioFormat::Ulaw8000 => {
                let start = out.len();
                out.extend_from_slice(audio);
                if self.law == G711::Alaw {
                    G711::Ulaw.transcode_in_place(G711::Alaw, &mut out[start..]);
                }
            }
            AudioFormat::Pcm { .. } => {
                self.pcm_in.clear();
                let mut bytes = audio;
                if let Some(lo) = self.carry.take()
                    && let Some((&hi, rest)) = bytes.split_first()
                {
                    self.pcm_in.push(i16::from_le_bytes([lo, hi]));
                    bytes = rest;
                }
                let mut pairs = bytes.chunks_exact(2);
                self.pcm_in
                    .extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
                if let [last] = pairs.remainder() {
                    self.carry = Some(*last);
                }
                let samples: &[i16] = match self.resampler.as_mut() {
                    Some(r) => {
                        self.pcm8.clear();
                        r.process(&self.pcm_in, &mut self.pcm8);
                        &self.pcm8
                    }
                    None => &self.pcm_in,
                };
                let start = out.len();
                out.resize(start + samples.len(), 0);
                self.law.encode_slice(samples, &mut out[start..]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_passthrough_is_byte_exact_both_ways() {
        let mut up = Uplink::new(AudioFormat::Ulaw8000, G711::Ulaw);
        assert!(up.is_passthrough());
        let f1: [u8; FRAME] = std::array::from_fn(|i| i as u8);
        let f2: [u8; FRAME] = std::array::from_fn(|i| (255 - i) as u8);
        up.push_frame(&f1);
        assert!(up.take_chunk(2, false).is_none());
        up.push_frame(&f2);
        let chunk = up.take_chunk(2, false).expect("two frames make a chunk");
        assert_eq!(&chunk[..FRAME], &f1[..]);
        assert_eq!(&chunk[FRAME..], &f2[..]);

        let mut down = Downlink::new(AudioFormat::Ulaw8000, G711::Ulaw);
        let mut out = Vec::new();
        down.convert(&chunk, &mut out);
        assert_eq!(&out[..], &chunk[..]);
    }

    #[test]
    fn alaw_trunk_with_ulaw_agent_transcodes() {
        let mut up = Uplink::new(AudioFormat::Ulaw8000, G711::Alaw);
        up.push_frame(&[G711::Alaw.silence(); FRAME]);
        let chunk = up.take_chunk(1, false).expect("chunk");
        assert!(chunk.iter().all(|&c| G711::Ulaw.decode(c).abs() < 16));
    }

    #[test]
    fn pcm16k_uplink_doubles_samples_and_downlink_halves_them() {
        let mut up = Uplink::new(AudioFormat::Pcm { sample_rate: 16000 }, G711::Ulaw);
        for _ in 0..5 {
            up.push_frame(&[0xFF; FRAME]);
        }
        let chunk = up.take_chunk(5, false).expect("chunk");
        // 5 frames × 160 samples × 2 (rate) × 2 bytes, give or take the filter's start-up.
        let expected = 5 * FRAME * 2 * 2;
        assert!(
            chunk.len().abs_diff(expected) <= 8,
            "{} vs {expected}",
            chunk.len()
        );

        let mut down = Downlink::new(AudioFormat::Pcm { sample_rate: 16000 }, G711::Ulaw);
        let mut out = Vec::new();
        // An odd split across two payloads must not lose or shift samples.
        let pcm: Vec<u8> = (0..640).flat_map(|_| 0i16.to_le_bytes()).collect();
        down.convert(&pcm[..301], &mut out);
        down.convert(&pcm[301..], &mut out);
        assert!(out.len().abs_diff(320) <= 4, "{}", out.len());
    }
}
