//! Trunkline media core: everything between an RTP socket and the agent's audio, sans-IO.
//!
//! - [`g711`]: ITU-T G.711 µ-law / A-law.
//! - [`resample`]: streaming polyphase resampling 8 ↔ 16 kHz and 22.05/24/44.1/48 kHz ↔ 8 kHz.
//! - [`amd`]: answering-machine detection (human / machine / unknown, voicemail beep).
//! - [`agent_audio`]: agent formats (µ-law passthrough, PCM16 LE) ↔ 20 ms G.711 frames.
//! - [`rtp`]: zero-copy RTP parsing/serialisation (RFC 3550 §5).
//! - [`jitter`]: pull-based adaptive jitter buffer.
//! - [`pacer`]: drift-free 20 ms playout pacer for bursty agent audio, barge-in flushes.
//! - [`dtmf`]: RFC 4733 telephone-events, receive and send.
//! - [`rtcp`]: RFC 3550 receiver statistics, SR/RR/SDES/BYE.
//! - [`srtp`]: SRTP/SRTCP (RFC 3711) keyed by SDES `a=crypto` (RFC 4568).
//! - [`session`]: [`session::MediaSession`], one per call, combining all of the above.
//! - [`capture`]: pcap/pcapng reading and RTP stream extraction.
//! - [`udp`]: the one I/O helper, `recvmsg` with the kernel's receive stamp (`SO_TIMESTAMPNS`),
//!   shared by the gateway's RTP socket and the trunk emulator.
//!
//! Nothing here reads the clock, sleeps or owns a socket: time comes in as `now: Instant`. [`udp`]
//! reads from a socket it is lent and returns the kernel's stamp; the caller reads the clock.

pub mod agent_audio;
pub mod amd;
pub mod byteq;
pub mod capture;
pub mod dtmf;
#[doc(hidden)]
pub mod fuzzing;
pub mod g711;
pub mod jitter;
pub mod pacer;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod srtp;
pub mod udp;

pub use g711::G711;
