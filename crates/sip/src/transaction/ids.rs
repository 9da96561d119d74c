//! Identifiers from an injected random source: branches (RFC 3261 §8.1.1.7, magic cookie
//! `z9hG4bK`), tags (§19.3, ≥ 32 bits of randomness) and Call-IDs (§8.1.1.4).

use std::fmt::Write;

/// A source of random 64-bit values. Tests seed [`SplitMix64`]; the I/O layer seeds it from the OS.
pub trait RandomSource: Send + std::fmt::Debug {
    /// The next value.
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: tiny, fast, seedable, statistically good enough for SIP identifiers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Generates branches, tags and Call-IDs.
#[derive(Debug)]
pub struct IdGen {
    rng: Box<dyn RandomSource>,
}

impl IdGen {
    /// Wraps a random source.
    pub fn new(rng: Box<dyn RandomSource>) -> Self {
        Self { rng }
    }

    /// A seeded generator (deterministic; for tests).
    pub fn seeded(seed: u64) -> Self {
        Self::new(Box::new(SplitMix64::new(seed)))
    }

    /// The next raw random value.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A new RFC 3261 branch: `z9hG4bK` + 64 random bits in hex.
    pub fn branch(&mut self) -> String {
        let mut s = String::with_capacity(23);
        s.push_str("z9hG4bK");
        let _ = write!(s, "{:016x}", self.rng.next_u64());
        s
    }

    /// A new tag: 64 random bits in hex.
    pub fn tag(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
    }

    /// A new Call-ID: 128 random bits in hex, `@host` appended when given.
    pub fn call_id(&mut self, host: Option<&str>) -> String {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        match host {
            Some(h) => format!("{a:016x}{b:016x}@{h}"),
            None => format!("{a:016x}{b:016x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generators_repeat_and_branches_carry_the_magic_cookie() {
        let mut a = IdGen::seeded(7);
        let mut b = IdGen::seeded(7);
        let (ba, bb) = (a.branch(), b.branch());
        assert_eq!(ba, bb);
        assert!(ba.starts_with("z9hG4bK") && ba.len() == 23);
        assert_ne!(a.tag(), a.tag());
        assert!(a.call_id(Some("h")).ends_with("@h"));
    }
}
