//! ITU-T G.711 µ-law and A-law companding (ITU-T Rec. G.711 (11/88), §2–§4).
//!
//! Encoding and decoding are table lookups. The tables are computed at compile time with a
//! leading-zero segment search; `tests/g711_bit_exact.rs` checks them against an independent
//! implementation of the segment-loop algorithm of the ITU-T G.191 Software Tool Library, over all
//! 256 codes and every 16-bit input.
//!
//! Conventions (as in G.191): linear samples are 16-bit two's complement; µ-law uses the top
//! 14 bits, A-law the top 13 bits; negative inputs are quantised in one's complement
//! (`!x`), which is what the ITU reference does. Silence is `0xFF` (µ-law) and `0xD5` (A-law).

/// A G.711 variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711 {
    /// µ-law (PCMU, RTP static payload type 0).
    Ulaw,
    /// A-law (PCMA, RTP static payload type 8).
    Alaw,
}

/// µ-law code of digital silence.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of digital silence.
pub const ALAW_SILENCE: u8 = 0xD5;

impl G711 {
    /// The code of a zero sample.
    #[inline]
    pub const fn silence(self) -> u8 {
        match self {
            G711::Ulaw => ULAW_SILENCE,
            G711::Alaw => ALAW_SILENCE,
        }
    }

    /// Static RTP payload type (RFC 3551 §6).
    #[inline]
    pub const fn payload_type(self) -> u8 {
        match self {
            G711::Ulaw => 0,
            G711::Alaw => 8,
        }
    }

    /// The variant for a static payload type, if any.
    #[inline]
    pub const fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Ulaw),
            8 => Some(G711::Alaw),
            _ => None,
        }
    }

    /// Encode one linear sample.
    #[inline]
    pub fn encode(self, x: i16) -> u8 {
        match self {
            G711::Ulaw => ulaw_encode(x),
            G711::Alaw => alaw_encode(x),
        }
    }

    /// Decode one code.
    #[inline]
    pub fn decode(self, c: u8) -> i16 {
        match self {
            G711::Ulaw => ulaw_decode(c),
            G711::Alaw => alaw_decode(c),
        }
    }

    /// Encode `src` into `dst` (the shorter length wins).
    #[inline]
    pub fn encode_slice(self, src: &[i16], dst: &mut [u8]) {
        match self {
            G711::Ulaw => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = ulaw_encode(s);
                }
            }
            G711::Alaw => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = alaw_encode(s);
                }
            }
        }
    }

    /// Decode `src` into `dst` (the shorter length wins).
    #[inline]
    pub fn decode_slice(self, src: &[u8], dst: &mut [i16]) {
        let table = match self {
            G711::Ulaw => &ULAW_DECODE,
            G711::Alaw => &ALAW_DECODE,
        };
        for (d, &c) in dst.iter_mut().zip(src) {
            *d = table[c as usize];
        }
    }

    /// Convert codes of `self` into codes of `to` in place, as decode then re-encode (a 256-entry
    /// table; this is not the G.711 Table 3/4 direct mapping, which differs for a few codes).
    #[inline]
    pub fn transcode_in_place(self, to: G711, buf: &mut [u8]) {
        if self == to {
            return;
        }
        let table = match self {
            G711::Ulaw => &ULAW_TO_ALAW,
            G711::Alaw => &ALAW_TO_ULAW,
        };
        for b in buf {
            *b = table[*b as usize];
        }
    }
}

/// Decode a µ-law code.
#[inline]
pub fn ulaw_decode(c: u8) -> i16 {
    ULAW_DECODE[c as usize]
}

/// Decode an A-law code.
#[inline]
pub fn alaw_decode(c: u8) -> i16 {
    ALAW_DECODE[c as usize]
}

/// Encode a linear sample to µ-law.
#[inline]
pub fn ulaw_encode(x: i16) -> u8 {
    // Arithmetic shift keeps the one's-complement relation: !(x >> 2) == (!x) >> 2.
    ULAW_ENCODE[((x >> 2) as u16 & 0x3FFF) as usize]
}

/// Encode a linear sample to A-law.
#[inline]
pub fn alaw_encode(x: i16) -> u8 {
    ALAW_ENCODE[((x >> 4) as u16 & 0x0FFF) as usize]
}

/// µ-law encoder of a 14-bit sample (`x >> 2`, range -8192..=8191).
const fn ulaw_encode14(v: i32) -> u8 {
    let (mag, sign) = if v < 0 { (!v, 0x00) } else { (v, 0x80) };
    // Bias by 33 (G.711 µ-law offset in 14-bit units), clip to the 13-bit magnitude range.
    let mut biased = mag + 33;
    if biased > 0x1FFF {
        biased = 0x1FFF;
    }
    // Segment: position of the leading one above bit 5 (biased is >= 33, so >= bit 5).
    let seg = (31 - (biased as u32).leading_zeros()) as i32 - 5; // 0..=7
    let mant = (biased >> (seg + 1)) & 0x0F;
    let code = ((seg << 4) | mant) as u8;
    (!code & 0x7F) | sign
}

/// A-law encoder of a 12-bit magnitude sample (`x >> 4`, range -2048..=2047).
const fn alaw_encode12(v: i32) -> u8 {
    let (mag, sign) = if v < 0 { (!v, 0x00) } else { (v, 0x80) };
    let code = if mag < 32 {
        // Segments 0 and 1 share the step size: the code is the magnitude itself.
        mag
    } else {
        let seg = (31 - (mag as u32).leading_zeros()) as i32 - 3; // 2..=7
        (seg << 4) | ((mag >> (seg - 1)) & 0x0F)
    };
    ((code as u8) | sign) ^ 0x55
}

const fn ulaw_decode_formula(c: u8) -> i16 {
    let c = !c;
    let sign = c & 0x80;
    let exp = ((c >> 4) & 0x07) as i32;
    let mant = (c & 0x0F) as i32;
    let mag = (((mant << 3) + 0x84) << exp) - 0x84;
    (if sign != 0 { -mag } else { mag }) as i16
}

const fn alaw_decode_formula(c: u8) -> i16 {
    let c = c ^ 0x55;
    let exp = ((c >> 4) & 0x07) as i32;
    let mant = (c & 0x0F) as i32;
    let mag = if exp == 0 {
        (mant << 4) + 8
    } else {
        ((mant << 4) + 0x108) << (exp - 1)
    };
    (if c & 0x80 != 0 { mag } else { -mag }) as i16
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_formula(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_formula(i as u8);
        i += 1;
    }
    t
};

static ULAW_ENCODE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        // Index is the low 14 bits of (x >> 2); sign-extend back.
        let v = if i >= 8192 {
            i as i32 - 16384
        } else {
            i as i32
        };
        t[i] = ulaw_encode14(v);
        i += 1;
    }
    t
};

static ALAW_ENCODE: [u8; 4096] = {
    let mut t = [0u8; 4096];
    let mut i = 0;
    while i < 4096 {
        let v = if i >= 2048 { i as i32 - 4096 } else { i as i32 };
        t[i] = alaw_encode12(v);
        i += 1;
    }
    t
};

static ULAW_TO_ALAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let x = ulaw_decode_formula(i as u8) as i32;
        t[i] = alaw_encode12(x >> 4);
        i += 1;
    }
    t
};

static ALAW_TO_ULAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let x = alaw_decode_formula(i as u8) as i32;
        t[i] = ulaw_encode14(x >> 2);
        i += 1;
    }
    t
};

/// Scale a G.711 code by `num/den` (used for concealment fades); stays in the code domain.
#[inline]
pub fn scale_code(law: G711, c: u8, num: i32, den: i32) -> u8 {
    let x = law.decode(c) as i32 * num / den;
    law.encode(x as i16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_codes_round_trip_to_zero_ish() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
    }

    #[test]
    fn extremes() {
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn decode_encode_is_identity_on_codes() {
        for c in 0..=255u8 {
            // µ-law has two zero codes (0x7F and 0xFF); both decode to 0, which encodes to 0xFF.
            if c != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(c)), c, "ulaw {c:#x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "alaw {c:#x}");
        }
    }
}
