//! Resampler quality: 1 kHz through 8→16→8 kHz keeps SNR ≥ 40 dB; frame-by-frame processing of a
//! swept sine equals one-shot processing (no discontinuity at frame edges); content above 4 kHz is
//! attenuated ≥ 40 dB going down to 8 kHz from every supported rate; images of the telephone band
//! are attenuated ≥ 40 dB going up; the telephone band passes flat.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::f64::consts::PI;

use trunkline_media::resample::{Resampler, SUPPORTED_RATES};

fn tone(rate: u32, hz: f64, secs: f64, amp: f64) -> Vec<i16> {
    let n = (rate as f64 * secs) as usize;
    (0..n)
        .map(|i| (amp * (2.0 * PI * hz * i as f64 / rate as f64).sin()).round() as i16)
        .collect()
}

fn in_frames(r: &mut Resampler, input: &[i16], frame: usize) -> Vec<i16> {
    let mut out = Vec::new();
    for c in input.chunks(frame) {
        r.process(c, &mut out);
    }
    out
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Least-squares fit of a sinusoid at `hz`; returns (amplitude, SNR in dB of the residual).
fn fit(x: &[i16], rate: u32, hz: f64) -> (f64, f64) {
    let w = 2.0 * PI * hz / rate as f64;
    let (mut ss, mut cc, mut sc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        ss += s * s;
        cc += c * c;
        sc += s * c;
        xs += v as f64 * s;
        xc += v as f64 * c;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let mut sig = 0.0;
    let mut err = 0.0;
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        let model = a * s + b * c;
        sig += model * model;
        err += (v as f64 - model).powi(2);
    }
    ((a * a + b * b).sqrt(), 10.0 * (sig / err).log10())
}

#[test]
fn a_1khz_tone_through_8_16_8_keeps_40_db_snr() {
    let input = tone(8000, 1000.0, 2.0, 12000.0);
    let mut up = Resampler::new(8000, 16000).unwrap();
    let mut down = Resampler::new(16000, 8000).unwrap();
    let mut wide = Vec::new();
    let mut back = Vec::new();
    for frame in input.chunks(160) {
        wide.clear();
        up.process(frame, &mut wide);
        down.process(&wide, &mut back);
    }
    assert_eq!(back.len(), input.len());
    let steady = &back[800..back.len() - 800];
    let (amp, snr) = fit(steady, 8000, 1000.0);
    assert!(snr >= 40.0, "SNR {snr:.1} dB");
    assert!((20.0 * (amp / 12000.0).log10()).abs() < 0.5, "gain {amp}");
    eprintln!("8→16→8 kHz, 1 kHz: SNR {snr:.1} dB, amplitude {amp:.0}/12000");
}

fn chirp(rate: u32, f0: f64, f1: f64, secs: f64) -> Vec<i16> {
    let n = (rate as f64 * secs) as usize;
    let k = (f1 - f0) / secs;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (10000.0 * (2.0 * PI * (f0 * t + k * t * t / 2.0)).sin()).round() as i16
        })
        .collect()
}

#[test]
fn a_swept_sine_has_no_discontinuity_at_frame_edges() {
    let pairs: Vec<(u32, u32)> = SUPPORTED_RATES[1..]
        .iter()
        .flat_map(|&r| [(r, 8000), (8000, r)])
        .collect();
    for (from, to) in pairs {
        let input = chirp(from, 100.0, 3300.0, 1.0);
        let frame = (from / 50) as usize;
        let one_shot = in_frames(&mut Resampler::new(from, to).unwrap(), &input, input.len());
        let framed = in_frames(&mut Resampler::new(from, to).unwrap(), &input, frame);
        let odd = in_frames(&mut Resampler::new(from, to).unwrap(), &input, 37);
        // State carries over exactly: chunking changes nothing.
        assert_eq!(framed, one_shot, "{from}->{to}");
        assert_eq!(odd, one_shot, "{from}->{to}");
        // And the output is smooth everywhere: no sample step larger than a 3.4 kHz sine allows.
        let max_step = 10000.0 * 2.0 * PI * 3400.0 / to as f64 * 1.1;
        let worst = framed
            .windows(2)
            .map(|w| (w[1] as f64 - w[0] as f64).abs())
            .fold(0.0, f64::max);
        assert!(worst <= max_step, "{from}->{to}: step {worst} > {max_step}");
    }
}

#[test]
fn content_above_4khz_is_attenuated_by_40_db_when_going_to_8khz() {
    for &rate in &SUPPORTED_RATES[1..] {
        let nyq = rate as f64 / 2.0;
        let mut f = 4000.0;
        let mut worst = f64::NEG_INFINITY;
        while f < nyq - 50.0 {
            let input = tone(rate, f, 0.5, 12000.0);
            let out = in_frames(
                &mut Resampler::new(rate, 8000).unwrap(),
                &input,
                (rate / 50) as usize,
            );
            let steady = &out[400..out.len() - 400];
            let att = 20.0 * (rms(steady) / rms(&input)).log10();
            assert!(att <= -40.0, "{rate} Hz input, {f} Hz tone: {att:.1} dB");
            worst = worst.max(att);
            f += 250.0;
        }
        eprintln!("{rate} → 8000: worst attenuation above 4 kHz {worst:.1} dB");
    }
}

#[test]
fn images_of_the_telephone_band_are_attenuated_by_40_db_when_going_up() {
    for &rate in &SUPPORTED_RATES[1..] {
        // A tone at f (≤ 3.4 kHz) at 8 kHz must not leave its image at 8000 − f at the higher rate.
        for f in [1000.0, 2000.0, 3000.0, 3400.0] {
            let input = tone(8000, f, 0.5, 12000.0);
            let out = in_frames(&mut Resampler::new(8000, rate).unwrap(), &input, 160);
            let steady = &out[rate as usize / 20..out.len() - rate as usize / 20];
            let (image, _) = fit(steady, rate, 8000.0 - f);
            let (main, _) = fit(steady, rate, f);
            let att = 20.0 * (image / main).log10();
            assert!(att <= -40.0, "8000 → {rate}: {f} Hz image {att:.1} dB");
        }
    }
}

#[test]
fn the_telephone_band_passes_flat() {
    for &rate in &SUPPORTED_RATES[1..] {
        for f in [300.0, 1000.0, 2000.0, 3000.0, 3400.0] {
            let input = tone(rate, f, 0.5, 12000.0);
            let out = in_frames(
                &mut Resampler::new(rate, 8000).unwrap(),
                &input,
                (rate / 50) as usize,
            );
            let (amp, snr) = fit(&out[400..out.len() - 400], 8000, f);
            let gain = 20.0 * (amp / 12000.0).log10();
            assert!(gain.abs() < 1.0, "{rate}: {f} Hz gain {gain:.2} dB");
            assert!(snr > 40.0, "{rate}: {f} Hz SNR {snr:.1} dB");
        }
    }
}
