//! Agent-side audio: convert between the agent's formats (`ulaw_8000` passthrough, `alaw_8000`,
//! PCM16 little-endian `pcm_8000` … `pcm_48000`) and 8 kHz G.711 codes for the phone.
//!
//! [`AgentToPhone`] takes agent audio in chunks of any size (odd byte counts included: a split
//! sample is carried to the next chunk) and appends G.711 codes, ready for the pacer.
//! [`PhoneToAgent`] takes 20 ms G.711 frames from the jitter buffer and appends agent bytes.
//! Both reuse their buffers: no allocation per frame after warm-up.

use thiserror::Error;

use crate::g711::G711;
use crate::resample::{Resampler, SUPPORTED_RATES};

/// An agent audio format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentFormat {
    /// G.711 µ-law, 8 kHz.
    Ulaw8000,
    /// G.711 A-law, 8 kHz.
    Alaw8000,
    /// Signed 16-bit little-endian PCM at the given rate.
    Pcm16(u32),
}

/// Unknown format name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unsupported agent audio format {0:?}")]
pub struct UnsupportedFormat(pub String);

impl AgentFormat {
    /// Parse an ElevenLabs format name (`ulaw_8000`, `pcm_16000`, …).
    pub fn parse(name: &str) -> Result<AgentFormat, UnsupportedFormat> {
        let bad = || UnsupportedFormat(name.to_string());
        match name {
            "ulaw_8000" => return Ok(AgentFormat::Ulaw8000),
            "alaw_8000" => return Ok(AgentFormat::Alaw8000),
            _ => {}
        }
        let rate: u32 = name
            .strip_prefix("pcm_")
            .and_then(|r| r.parse().ok())
            .ok_or_else(bad)?;
        if SUPPORTED_RATES.contains(&rate) {
            Ok(AgentFormat::Pcm16(rate))
        } else {
            Err(bad())
        }
    }

    /// The ElevenLabs name.
    pub fn name(self) -> String {
        match self {
            AgentFormat::Ulaw8000 => "ulaw_8000".into(),
            AgentFormat::Alaw8000 => "alaw_8000".into(),
            AgentFormat::Pcm16(r) => format!("pcm_{r}"),
        }
    }

    /// Bytes per 20 ms.
    pub fn bytes_per_20ms(self) -> usize {
        match self {
            AgentFormat::Ulaw8000 | AgentFormat::Alaw8000 => 160,
            AgentFormat::Pcm16(r) => (r as usize / 50) * 2,
        }
    }
}

/// Agent → phone conversion (downlink).
#[derive(Debug)]
pub struct AgentToPhone {
    format: AgentFormat,
    law: G711,
    carry: Option<u8>,
    resampler: Option<Resampler>,
    pcm: Vec<i16>,
    pcm8k: Vec<i16>,
}

impl AgentToPhone {
    /// Convert from `format` to 8 kHz codes of `law`.
    pub fn new(format: AgentFormat, law: G711) -> Self {
        let resampler = match format {
            AgentFormat::Pcm16(r) if r != 8000 => Resampler::new(r, 8000),
            _ => None,
        };
        AgentToPhone {
            format,
            law,
            carry: None,
            resampler,
            pcm: Vec::with_capacity(2048),
            pcm8k: Vec::with_capacity(512),
        }
    }

    /// Convert a chunk, appending codes to `out`.
    pub fn convert(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.format {
            AgentFormat::Ulaw8000 => {
                let at = out.len();
                out.extend_from_slice(bytes);
                G711::Ulaw.transcode_in_place(self.law, &mut out[at..]);
            }
            AgentFormat::Alaw8000 => {
                let at = out.len();
                out.extend_from_slice(bytes);
                G711::Alaw.transcode_in_place(self.law, &mut out[at..]);
            }
            AgentFormat::Pcm16(_) => {
                self.pcm.clear();
                let mut rest = bytes;
                if let Some(lo) = self.carry.take() {
                    if let Some((&hi, r)) = rest.split_first() {
                        self.pcm.push(i16::from_le_bytes([lo, hi]));
                        rest = r;
                    } else {
                        self.carry = Some(lo);
                    }
                }
                let pairs = rest.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    self.carry = Some(*last);
                }
                self.pcm
                    .extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
                let samples: &[i16] = match &mut self.resampler {
                    Some(r) => {
                        self.pcm8k.clear();
                        r.process(&self.pcm, &mut self.pcm8k);
                        &self.pcm8k
                    }
                    None => &self.pcm,
                };
                let at = out.len();
                out.resize(at + samples.len(), 0);
                self.law.encode_slice(samples, &mut out[at..]);
            }
        }
    }
}

/// Phone → agent conversion (uplink).
#[derive(Debug)]
pub struct PhoneToAgent {
    format: AgentFormat,
    law: G711,
    resampler: Option<Resampler>,
    pcm8k: Vec<i16>,
    pcm: Vec<i16>,
}

impl PhoneToAgent {
    /// Convert 8 kHz codes of `law` to `format`.
    pub fn new(law: G711, format: AgentFormat) -> Self {
        let resampler = match format {
            AgentFormat::Pcm16(r) if r != 8000 => Resampler::new(8000, r),
            _ => None,
        };
        PhoneToAgent {
            format,
            law,
            resampler,
            pcm8k: Vec::with_capacity(256),
            pcm: Vec::with_capacity(2048),
        }
    }

    /// Convert codes, appending agent bytes to `out`.
    pub fn convert(&mut self, codes: &[u8], out: &mut Vec<u8>) {
        match self.format {
            AgentFormat::Ulaw8000 => {
                let at = out.len();
                out.extend_from_slice(codes);
                self.law.transcode_in_place(G711::Ulaw, &mut out[at..]);
            }
            AgentFormat::Alaw8000 => {
                let at = out.len();
                out.extend_from_slice(codes);
                self.law.transcode_in_place(G711::Alaw, &mut out[at..]);
            }
            AgentFormat::Pcm16(_) => {
                self.pcm8k.resize(codes.len(), 0);
                self.law.decode_slice(codes, &mut self.pcm8k);
                let samples: &[i16] = match &mut self.resampler {
                    Some(r) => {
                        self.pcm.clear();
                        r.process(&self.pcm8k, &mut self.pcm);
                        &self.pcm
                    }
                    None => &self.pcm8k,
                };
                out.reserve(samples.len() * 2);
                for s in samples {
                    out.extend_from_slice(&s.to_le_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names() {
        assert_eq!(AgentFormat::parse("ulaw_8000"), Ok(AgentFormat::Ulaw8000));
        assert_eq!(
            AgentFormat::parse("pcm_22050"),
            Ok(AgentFormat::Pcm16(22050))
        );
        assert!(AgentFormat::parse("pcm_11025").is_err());
        assert!(AgentFormat::parse("mp3_44100").is_err());
        assert_eq!(AgentFormat::Pcm16(16000).name(), "pcm_16000");
        assert_eq!(AgentFormat::Pcm16(16000).bytes_per_20ms(), 640);
    }

    #[test]
    fn ulaw_passthrough_is_a_copy() {
        let mut d = AgentToPhone::new(AgentFormat::Ulaw8000, G711::Ulaw);
        let mut out = Vec::new();
        d.convert(&[1, 2, 3], &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        let mut u = PhoneToAgent::new(G711::Ulaw, AgentFormat::Ulaw8000);
        let mut out = Vec::new();
        u.convert(&[9; 160], &mut out);
        assert_eq!(out, vec![9; 160]);
    }

    #[test]
    fn odd_chunk_boundaries_do_not_corrupt_pcm() {
        let samples: Vec<i16> = (0..400).map(|i| (i * 37 - 7000) as i16).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut whole = Vec::new();
        AgentToPhone::new(AgentFormat::Pcm16(8000), G711::Alaw).convert(&bytes, &mut whole);
        let mut split = Vec::new();
        let mut d = AgentToPhone::new(AgentFormat::Pcm16(8000), G711::Alaw);
        for c in bytes.chunks(7) {
            d.convert(c, &mut split);
        }
        assert_eq!(whole, split);
        let expect: Vec<u8> = samples.iter().map(|s| G711::Alaw.encode(*s)).collect();
        assert_eq!(whole, expect);
    }
}
