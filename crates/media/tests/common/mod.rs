//! Shared helpers for the integration tests: a seeded PRNG and a virtual clock.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// xorshift64*: deterministic, seedable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A fixed origin for virtual time (the only clock read in the tests).
#[allow(clippy::disallowed_methods)]
pub fn t0() -> Instant {
    Instant::now()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
