//! Audio helpers for the agent emulator: G.711 µ-law (ITU-T G.711 §A.2 companding, bias 0x84),
//! naïve resampling (2-tap average + decimation for 2:1, linear interpolation otherwise), the
//! embedded speech phrase, and a frame-energy VAD that runs on *caller-audio time* (20 ms frames
//! counted from the audio itself), so turn detection does not depend on the wall clock.

use trunkline_agent::AudioFormat;

/// The agent's phrase: 16 kHz mono PCM16, made once with espeak-ng (see `assets/README.md`).
pub const PHRASE_WAV: &[u8] = include_bytes!("../../assets/agent_phrase_16k.wav");

/// Encodes one linear PCM16 sample as G.711 µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | ((exponent as i32) << 4) | mantissa) as u8
}

/// Decodes one G.711 µ-law byte to linear PCM16.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Resamples mono PCM16 from `from` Hz to `to` Hz.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    if from == to * 2 {
        return samples
            .chunks(2)
            .map(|p| ((i32::from(p[0]) + i32::from(*p.get(1).unwrap_or(&p[0]))) / 2) as i16)
            .collect();
    }
    let out_len = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let idx = pos as usize;
            let frac = pos - idx as f64;
            let a = f64::from(samples[idx.min(samples.len() - 1)]);
            let b = f64::from(samples[(idx + 1).min(samples.len() - 1)]);
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// Encodes 16 kHz PCM16 into `format`'s wire bytes.
pub fn encode_for(format: AudioFormat, pcm16k: &[i16]) -> Vec<u8> {
    match format {
        AudioFormat::Ulaw8000 => resample(pcm16k, 16_000, 8_000)
            .into_iter()
            .map(ulaw_encode)
            .collect(),
        AudioFormat::Pcm { sample_rate } => resample(pcm16k, 16_000, sample_rate)
            .into_iter()
            .flat_map(i16::to_le_bytes)
            .collect(),
    }
}

/// Decodes wire bytes in `format` into PCM16 samples (at the format's rate).
pub fn decode_from(format: AudioFormat, bytes: &[u8]) -> Vec<i16> {
    match format {
        AudioFormat::Ulaw8000 => bytes.iter().map(|&b| ulaw_decode(b)).collect(),
        AudioFormat::Pcm { .. } => bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    }
}

/// The embedded phrase as 16 kHz samples.
pub fn phrase_16k() -> Vec<i16> {
    match hound::WavReader::new(PHRASE_WAV) {
        Ok(r) => r.into_samples::<i16>().filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

/// Settings of the energy VAD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// A 20 ms frame with RMS above this (linear PCM16 units) is speech. 500 ≈ -36 dBFS.
    pub threshold_rms: f64,
    /// Consecutive speech frames before speech starts (3 = 60 ms).
    pub start_frames: u32,
    /// Consecutive non-speech frames before speech ends (20 = 400 ms).
    pub end_frames: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            threshold_rms: 500.0,
            start_frames: 3,
            end_frames: 20,
        }
    }
}

/// What the VAD saw in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began.
    SpeechStart,
    /// Speech ended; its duration in ms of caller audio.
    SpeechEnd {
        /// Length of the utterance.
        duration_ms: u64,
    },
}

/// Frame-energy VAD over caller audio; time is the amount of audio fed (20 ms per frame).
#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    frame_len: usize,
    pending: Vec<i16>,
    speech_run: u32,
    silence_run: u32,
    speaking: bool,
    speech_frames: u64,
    /// Caller audio received so far, ms.
    pub audio_ms: u64,
}

impl Vad {
    /// A VAD for audio at `sample_rate`.
    pub fn new(cfg: VadConfig, sample_rate: u32) -> Self {
        Vad {
            cfg,
            frame_len: (sample_rate / 50) as usize,
            pending: Vec::new(),
            speech_run: 0,
            silence_run: 0,
            speaking: false,
            speech_frames: 0,
            audio_ms: 0,
        }
    }

    /// True while the caller is speaking.
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Feeds samples; returns the events in order.
    pub fn feed(&mut self, samples: &[i16], out: &mut Vec<VadEvent>) {
        self.pending.extend_from_slice(samples);
        let mut start = 0;
        while self.pending.len() - start >= self.frame_len {
            let frame = &self.pending[start..start + self.frame_len];
            start += self.frame_len;
            self.audio_ms += 20;
            let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            let rms = (energy / frame.len() as f64).sqrt();
            if rms >= self.cfg.threshold_rms {
                self.speech_run += 1;
                self.silence_run = 0;
            } else {
                self.silence_run += 1;
                self.speech_run = 0;
            }
            if self.speaking {
                self.speech_frames += 1;
                if self.silence_run >= self.cfg.end_frames {
                    self.speaking = false;
                    let frames = self
                        .speech_frames
                        .saturating_sub(u64::from(self.cfg.end_frames));
                    out.push(VadEvent::SpeechEnd {
                        duration_ms: frames * 20,
                    });
                }
            } else if self.speech_run >= self.cfg.start_frames {
                self.speaking = true;
                self.speech_frames = u64::from(self.speech_run);
                out.push(VadEvent::SpeechStart);
            }
        }
        self.pending.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_within_quantisation() {
        for s in [-32768i16, -1000, -1, 0, 1, 100, 1000, 8000, 32767] {
            let d = ulaw_decode(ulaw_encode(s));
            let err = (i32::from(d) - i32::from(s)).abs();
            assert!(err <= (i32::from(s).abs() / 16).max(8) + 64, "{s} -> {d}");
        }
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_decode(0xff), 0);
    }

    #[test]
    fn phrase_is_embedded_and_converts() {
        let p = phrase_16k();
        assert!(p.len() > 16_000 * 2, "phrase too short: {}", p.len());
        let ulaw = encode_for(AudioFormat::Ulaw8000, &p);
        assert_eq!(ulaw.len(), p.len().div_ceil(2));
        let pcm44 = encode_for(
            AudioFormat::Pcm {
                sample_rate: 44_100,
            },
            &p,
        );
        assert!((pcm44.len() / 2).abs_diff(p.len() * 44_100 / 16_000) <= 1);
    }

    #[test]
    fn vad_detects_speech_start_and_end_on_audio_time() {
        let mut vad = Vad::new(VadConfig::default(), 8_000);
        let mut ev = Vec::new();
        let tone: Vec<i16> = (0..8_000)
            .map(|i| ((i as f64 * 0.3).sin() * 8_000.0) as i16)
            .collect();
        vad.feed(&vec![0; 1_600], &mut ev); // 200 ms silence
        assert!(ev.is_empty());
        vad.feed(&tone, &mut ev); // 1 s speech
        assert_eq!(ev, vec![VadEvent::SpeechStart]);
        vad.feed(&vec![0; 8_000], &mut ev); // 1 s silence
        assert_eq!(ev.len(), 2);
        let VadEvent::SpeechEnd { duration_ms } = ev[1] else {
            panic!()
        };
        assert!((940..=1_060).contains(&duration_ms), "{duration_ms}");
    }
}
