//! The answering-machine detector allocates nothing per frame: a counting global allocator
//! (`stats_alloc`) watches 30 s of frames — noise, speech-like bursts, a beep — through every
//! verdict and event, after construction.
#![allow(clippy::disallowed_methods)] // Instant::now: a fixed origin for virtual time

use std::time::Instant;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use trunkline_media::amd::{Amd, AmdConfig, AmdEvent, FRAME, FRAME_SAMPLES};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn frame(i: u32, seed: &mut u32) -> [i16; FRAME_SAMPLES] {
    let mut f = [0i16; FRAME_SAMPLES];
    for (k, s) in f.iter_mut().enumerate() {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = ((*seed >> 16) as f32 / 65536.0 - 0.5) * 200.0;
        let t = (i as usize * FRAME_SAMPLES + k) as f32 / 8000.0;
        let v = match i {
            20..120 => noise * 40.0, // 2 s of "greeting"
            150..175 => 9000.0 * (2.0 * std::f32::consts::PI * 1000.0 * t).sin(), // a beep
            _ => noise,
        };
        *s = v as i16;
    }
    f
}

#[test]
fn no_allocation_per_frame() {
    let frames: Vec<[i16; FRAME_SAMPLES]> = {
        let mut seed = 9;
        (0..1500).map(|i| frame(i, &mut seed)).collect()
    };
    let t0 = Instant::now();
    let mut amd = Amd::new(AmdConfig::default());
    let mut kinds = [0u32; 3];
    let region = Region::new(GLOBAL);
    for (i, f) in frames.iter().enumerate() {
        amd.push_frame(t0 + FRAME * i as u32, f);
        while let Some(e) = amd.poll_event() {
            kinds[match e {
                AmdEvent::Verdict { .. } => 0,
                AmdEvent::Beep { .. } => 1,
                AmdEvent::GreetingEnd { .. } => 2,
            }] += 1;
        }
    }
    let stats = region.change();
    assert_eq!(kinds, [1, 1, 0], "a verdict and a beep went through");
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "allocations while detecting: {stats:?}"
    );
}
