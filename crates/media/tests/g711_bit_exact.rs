//! G.711 bit-exactness against an independent reference: the segment-loop algorithm of the ITU-T
//! G.191 Software Tool Library (`g711.c`: `alaw_compress`, `alaw_expand`, `ulaw_compress`,
//! `ulaw_expand`), transcribed here without tables. Checked over every code and every i16.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use trunkline_media::G711;
use trunkline_media::g711::{alaw_decode, alaw_encode, ulaw_decode, ulaw_encode};

fn ref_alaw_compress(lin: i16) -> u8 {
    let lin = lin as i32;
    let mut ix: i32 = if lin < 0 { (!lin) >> 4 } else { lin >> 4 };
    if ix > 15 {
        let mut iexp = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            iexp += 1;
        }
        ix -= 16;
        ix += iexp << 4;
    }
    if lin >= 0 {
        ix |= 0x0080;
    }
    (ix ^ 0x0055) as u8
}

fn ref_alaw_expand(log: u8) -> i16 {
    let mut ix = (log as i32) ^ 0x0055;
    ix &= 0x007F;
    let iexp = ix >> 4;
    let mut mant = ix & 0x000F;
    if iexp > 0 {
        mant += 16;
    }
    mant = (mant << 4) + 0x0008;
    if iexp > 1 {
        mant <<= iexp - 1;
    }
    (if log > 127 { mant } else { -mant }) as i16
}

fn ref_ulaw_compress(lin: i16) -> u8 {
    let lin = lin as i32;
    let mut absno = if lin < 0 {
        ((!lin) >> 2) + 33
    } else {
        (lin >> 2) + 33
    };
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high = 0x0008 - segno;
    let low = 0x000F - ((absno >> segno) & 0x000F);
    let mut out = (high << 4) | low;
    if lin >= 0 {
        out |= 0x0080;
    }
    out as u8
}

fn ref_ulaw_expand(log: u8) -> i16 {
    let sign: i32 = if log < 0x80 { -1 } else { 1 };
    let mantissa = !(log as i32);
    let exponent = (mantissa >> 4) & 0x0007;
    let segment = exponent + 1;
    let mantissa = mantissa & 0x000F;
    let step = 4 << segment;
    (sign * ((0x0080 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
}

#[test]
fn decoding_all_256_codes_matches_the_itu_reference() {
    for c in 0..=255u8 {
        assert_eq!(ulaw_decode(c), ref_ulaw_expand(c), "µ-law {c:#04x}");
        assert_eq!(alaw_decode(c), ref_alaw_expand(c), "A-law {c:#04x}");
        assert_eq!(G711::Ulaw.decode(c), ref_ulaw_expand(c));
        assert_eq!(G711::Alaw.decode(c), ref_alaw_expand(c));
    }
}

#[test]
fn encoding_every_16_bit_sample_matches_the_itu_reference() {
    for x in i16::MIN..=i16::MAX {
        assert_eq!(ulaw_encode(x), ref_ulaw_compress(x), "µ-law {x}");
        assert_eq!(alaw_encode(x), ref_alaw_compress(x), "A-law {x}");
    }
}

#[test]
fn slice_apis_and_transcoding_agree_with_the_reference() {
    let src: Vec<i16> = (i16::MIN..=i16::MAX).step_by(7).collect();
    for law in [G711::Ulaw, G711::Alaw] {
        let mut enc = vec![0u8; src.len()];
        law.encode_slice(&src, &mut enc);
        let mut dec = vec![0i16; src.len()];
        law.decode_slice(&enc, &mut dec);
        for ((x, c), y) in src.iter().zip(&enc).zip(&dec) {
            let (rc, ry) = match law {
                G711::Ulaw => (
                    ref_ulaw_compress(*x),
                    ref_ulaw_expand(ref_ulaw_compress(*x)),
                ),
                G711::Alaw => (
                    ref_alaw_compress(*x),
                    ref_alaw_expand(ref_alaw_compress(*x)),
                ),
            };
            assert_eq!((*c, *y), (rc, ry));
        }
    }
    // µ-law → A-law transcoding equals decode-then-encode with the reference.
    let mut codes: Vec<u8> = (0..=255).collect();
    G711::Ulaw.transcode_in_place(G711::Alaw, &mut codes);
    for (c, t) in (0..=255u8).zip(&codes) {
        assert_eq!(*t, ref_alaw_compress(ref_ulaw_expand(c)));
    }
    let mut codes: Vec<u8> = (0..=255).collect();
    G711::Alaw.transcode_in_place(G711::Ulaw, &mut codes);
    for (c, t) in (0..=255u8).zip(&codes) {
        assert_eq!(*t, ref_ulaw_compress(ref_alaw_expand(c)));
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Quantisation error stays within one step of the input's segment (G.711 §2, §3:
        /// µ-law steps 8…1024 and A-law 16…1024 in 16-bit units), below the clipping level.
        #[test]
        fn quantisation_error_is_within_half_a_step(x in any::<i16>()) {
            for (law, min_step) in [(G711::Ulaw, 8i32), (G711::Alaw, 16)] {
                let y = law.decode(law.encode(x)) as i32;
                let x = x as i32;
                let mag = x.unsigned_abs() as i32;
                let step = min_step.max((((mag + 132) >> 4) as u32).next_power_of_two() as i32);
                let clip = if law == G711::Ulaw { 32124 } else { 32256 };
                if mag < clip {
                    prop_assert!((y - x).abs() <= step, "{:?} {} -> {} step {}", law, x, y, step);
                }
            }
        }
    }
}
