//! Call recording: a stereo WAV of the call as the phone heard it — the phone LEFT (what the
//! jitter buffer played out towards the agent), the agent RIGHT (the frames actually sent in RTP
//! to the phone, so barge-in flushes, comfort silence and DTMF ticks are as heard).
//!
//! The call never waits for the disk. [`Call`](crate::Call) hands out one fixed-size
//! [`RecFrame`] (two 20 ms G.711 frames, no allocation) per tick; the runner pushes it with
//! [`Recorder::push`] into a bounded queue (2 s) drained by a writer thread. A full queue drops
//! the frame and counts it ([`RecordingStats::dropped_frames`]); `push` never blocks.
//!
//! The byte layout is pure ([`wav`]): a 44-byte RIFF/WAVE header (PCM, 2 channels, 16 bits)
//! and interleaved little-endian samples. [`WavWriter`] writes into any `Write + Seek` and
//! rewrites the header's two sizes every [`HEADER_EVERY_FRAMES`] frames (one second), then
//! flushes: a file cut by SIGKILL is playable up to the last rewrite, and a normal end
//! ([`WavWriter::finish`]) leaves exact sizes.
//!
//! Not done here: Opus (the gateway refuses `format = "opus"`), resampling (the file is at the
//! trunk's 8 kHz).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use trunkline_media::g711::G711;
use trunkline_media::jitter::FRAME;

/// Sample rate of the recordings (the G.711 trunk's).
pub const RATE: u32 = 8000;
/// Frames between two header rewrites (1 s).
pub const HEADER_EVERY_FRAMES: u64 = 50;
/// Queue between the call and the writer thread, in 20 ms frames (2 s).
pub const QUEUE_FRAMES: usize = 100;
/// Bytes of one stereo 16-bit 20 ms frame in the file.
pub const FRAME_BYTES: usize = FRAME * 4;

/// One 20 ms tick of the call as the phone heard it, in the trunk's law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecFrame {
    /// What the phone sent (played out by the jitter buffer).
    pub phone: [u8; FRAME],
    /// What was sent to the phone (agent audio or silence).
    pub agent: [u8; FRAME],
}

/// What the call record says about its recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingRecord {
    /// Where the file is (on the node that recorded it).
    pub path: String,
    /// `wav`.
    pub format: String,
    /// Audio length in the file.
    pub duration_ms: u64,
    /// Whether the consent prompt (WAV or first message) was played/given.
    pub consent_played: bool,
}

/// Counters shared by every recording (the gateway exports them as metrics).
#[derive(Debug, Default)]
pub struct RecordingStats {
    /// Recordings started.
    pub started: AtomicU64,
    /// Bytes written (audio and headers).
    pub bytes: AtomicU64,
    /// Frames dropped because the writer's queue was full.
    pub dropped_frames: AtomicU64,
    /// Recordings that failed (file could not be created or written).
    pub failed: AtomicU64,
    /// Recordings deleted by retention (the gateway's).
    pub deleted: AtomicU64,
}

/// The pure byte layout of a stereo 16-bit PCM WAV.
pub mod wav {
    use super::{FRAME, FRAME_BYTES, G711, RecFrame};

    /// Header length.
    pub const HEADER_LEN: usize = 44;

    /// A canonical 44-byte header for `data_bytes` of 16-bit PCM.
    pub fn header(channels: u16, rate: u32, data_bytes: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let block = channels * 2;
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&riff_size(data_bytes).to_le_bytes());
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(b"fmt ");
        h[16..20].copy_from_slice(&16u32.to_le_bytes());
        h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
        h[22..24].copy_from_slice(&channels.to_le_bytes());
        h[24..28].copy_from_slice(&rate.to_le_bytes());
        h[28..32].copy_from_slice(&(rate * u32::from(block)).to_le_bytes());
        h[32..34].copy_from_slice(&block.to_le_bytes());
        h[34..36].copy_from_slice(&16u16.to_le_bytes());
        h[36..40].copy_from_slice(b"data");
        h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
        h
    }

    /// The RIFF chunk size for `data_bytes` of audio (at offset 4).
    pub fn riff_size(data_bytes: u32) -> u32 {
        data_bytes.saturating_add(HEADER_LEN as u32 - 8)
    }

    /// Decode a frame into interleaved little-endian samples: phone left, agent right.
    pub fn interleave(law: G711, f: &RecFrame, out: &mut [u8; FRAME_BYTES]) {
        for i in 0..FRAME {
            let l = law.decode(f.phone[i]).to_le_bytes();
            let r = law.decode(f.agent[i]).to_le_bytes();
            out[4 * i..4 * i + 2].copy_from_slice(&l);
            out[4 * i + 2..4 * i + 4].copy_from_slice(&r);
        }
    }
}

/// A stereo WAV being written into `W`.
#[derive(Debug)]
pub struct WavWriter<W: Write + Seek> {
    out: W,
    law: G711,
    data_bytes: u32,
    frames: u64,
    scratch: [u8; FRAME_BYTES],
}

impl<W: Write + Seek> WavWriter<W> {
    /// Write the header (sizes 0) and get ready for frames.
    pub fn new(mut out: W, law: G711) -> io::Result<Self> {
        out.write_all(&wav::header(2, RATE, 0))?;
        Ok(WavWriter {
            out,
            law,
            data_bytes: 0,
            frames: 0,
            scratch: [0; FRAME_BYTES],
        })
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Audio written, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.frames * 20
    }

    /// Append one frame; every [`HEADER_EVERY_FRAMES`] the header's sizes are rewritten and the
    /// output flushed. Returns the bytes written (header rewrites excluded).
    pub fn write_frame(&mut self, f: &RecFrame) -> io::Result<usize> {
        if self.data_bytes as usize + FRAME_BYTES > (u32::MAX as usize - wav::HEADER_LEN) {
            return Ok(0); // a WAV cannot hold more (~37 h at 8 kHz stereo): stop growing.
        }
        wav::interleave(self.law, f, &mut self.scratch);
        self.out.write_all(&self.scratch)?;
        self.data_bytes += FRAME_BYTES as u32;
        self.frames += 1;
        if self.frames.is_multiple_of(HEADER_EVERY_FRAMES) {
            self.sync()?;
        }
        Ok(FRAME_BYTES)
    }

    /// Rewrite the header's sizes for what has been written and flush.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.seek(SeekFrom::Start(4))?;
        self.out
            .write_all(&wav::riff_size(self.data_bytes).to_le_bytes())?;
        self.out.seek(SeekFrom::Start(40))?;
        self.out.write_all(&self.data_bytes.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()
    }

    /// Exact sizes, flushed; the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.sync()?;
        Ok(self.out)
    }
}

/// What a finished recording wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSummary {
    /// The file.
    pub path: PathBuf,
    /// Frames written.
    pub frames: u64,
    /// Audio length.
    pub duration_ms: u64,
}

/// One call's recorder: the queue's sending side and its writer thread.
#[derive(Debug)]
pub struct Recorder {
    tx: SyncSender<RecFrame>,
    stats: Arc<RecordingStats>,
    thread: JoinHandle<RecordingSummary>,
}

impl Recorder {
    /// Start the writer thread, which creates `path` (the call's task never touches the disk:
    /// a file that cannot be created is logged and counted in [`RecordingStats::failed`]).
    pub fn start(path: PathBuf, law: G711, stats: Arc<RecordingStats>) -> io::Result<Recorder> {
        let (tx, rx) = sync_channel(QUEUE_FRAMES);
        stats.started.fetch_add(1, Ordering::Relaxed);
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("trunkline-rec".into())
            .stack_size(64 * 1024)
            .spawn(move || write_file(path, law, rx, thread_stats))?;
        Ok(Recorder { tx, stats, thread })
    }

    /// Queue one frame; never blocks. False (and counted) when the queue is full or the writer
    /// has stopped.
    pub fn push(&self, f: &RecFrame) -> bool {
        push_frame(&self.tx, &self.stats, f)
    }

    /// Close the queue and wait for the writer to write what is queued and the exact header
    /// (blocking: call it off the async runtime).
    pub fn finish(self) -> Option<RecordingSummary> {
        drop(self.tx);
        self.thread.join().ok()
    }
}

/// [`Recorder::push`] on any bounded sender (tested without a thread).
fn push_frame(tx: &SyncSender<RecFrame>, stats: &RecordingStats, f: &RecFrame) -> bool {
    match tx.try_send(*f) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

fn write_file(
    path: PathBuf,
    law: G711,
    rx: Receiver<RecFrame>,
    stats: Arc<RecordingStats>,
) -> RecordingSummary {
    let w = File::create(&path)
        .and_then(|f| WavWriter::new(BufWriter::with_capacity(16 * 1024, f), law));
    match w {
        Ok(w) => {
            stats
                .bytes
                .fetch_add(wav::HEADER_LEN as u64, Ordering::Relaxed);
            write_loop(w, rx, path, &stats)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "recording file not created");
            stats.failed.fetch_add(1, Ordering::Relaxed);
            while rx.recv().is_ok() {}
            RecordingSummary {
                path,
                frames: 0,
                duration_ms: 0,
            }
        }
    }
}

fn write_loop(
    mut w: WavWriter<BufWriter<File>>,
    rx: Receiver<RecFrame>,
    path: PathBuf,
    stats: &RecordingStats,
) -> RecordingSummary {
    let mut failed = false;
    while let Ok(f) = rx.recv() {
        if failed {
            continue; // keep draining so the call's pushes never see a stale full queue
        }
        match w.write_frame(&f) {
            Ok(n) => {
                stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "recording write failed");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                failed = true;
            }
        }
    }
    let frames = w.frames();
    let duration_ms = w.duration_ms();
    if !failed && let Err(e) = w.finish() {
        tracing::warn!(path = %path.display(), error = %e, "recording could not be finished");
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    RecordingSummary {
        path,
        frames,
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frame(law: G711, l: i16, r: i16) -> RecFrame {
        RecFrame {
            phone: [law.encode(l); FRAME],
            agent: [law.encode(r); FRAME],
        }
    }

    #[test]
    fn header_is_canonical_stereo_pcm() {
        let h = wav::header(2, 8000, 640);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 640 + 36);
        assert_eq!(&h[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 2);
        assert_eq!(u32::from_le_bytes(h[24..28].try_into().unwrap()), 8000);
        assert_eq!(u32::from_le_bytes(h[28..32].try_into().unwrap()), 32_000);
        assert_eq!(u16::from_le_bytes([h[32], h[33]]), 4);
        assert_eq!(u16::from_le_bytes([h[34], h[35]]), 16);
        assert_eq!(&h[36..40], b"data");
        assert_eq!(u32::from_le_bytes(h[40..44].try_into().unwrap()), 640);
    }

    #[test]
    fn phone_is_left_and_agent_right() {
        let law = G711::Ulaw;
        let f = frame(law, 1000, -8000);
        let mut out = [0u8; FRAME_BYTES];
        wav::interleave(law, &f, &mut out);
        let l = i16::from_le_bytes([out[0], out[1]]);
        let r = i16::from_le_bytes([out[2], out[3]]);
        assert_eq!(l, law.decode(law.encode(1000)));
        assert_eq!(r, law.decode(law.encode(-8000)));
        assert!(l > 900 && r < -7000);
        assert_eq!(&out[0..4], &out[4 * 159..4 * 160]);
    }

    #[test]
    fn finished_file_reads_back_exactly() {
        let law = G711::Alaw;
        let mut w = WavWriter::new(Cursor::new(Vec::new()), law).unwrap();
        for i in 0..73 {
            w.write_frame(&frame(law, i * 100, -i * 100)).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(bytes.len(), 44 + 73 * FRAME_BYTES);
        let r = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(r.spec().sample_rate, 8000);
        assert_eq!(r.spec().bits_per_sample, 16);
        assert_eq!(r.duration(), 73 * 160);
        let s: Vec<i16> = r.into_samples().map(|s| s.unwrap()).collect();
        // frame 72: left ≈ 7200, right ≈ -7200
        let last = &s[s.len() - 2..];
        assert_eq!(last[0], law.decode(law.encode(7200)));
        assert_eq!(last[1], law.decode(law.encode(-7200)));
    }

    #[test]
    fn a_file_cut_mid_way_is_playable_up_to_the_last_header_rewrite() {
        let law = G711::Ulaw;
        let mut w = WavWriter::new(Cursor::new(Vec::new()), law).unwrap();
        // 2.4 s written, never finished (as under SIGKILL): the header says 2 s.
        for i in 0..120 {
            w.write_frame(&frame(law, (i % 7) * 500, 300)).unwrap();
        }
        w.out.flush().unwrap();
        let mut bytes = w.out.into_inner();
        // Cut in the middle of a frame after the last rewrite.
        bytes.truncate(44 + 110 * FRAME_BYTES + 37);
        let r = hound::WavReader::new(Cursor::new(bytes.clone())).unwrap();
        assert_eq!(r.spec().channels, 2);
        assert_eq!(u64::from(r.duration()), 2 * HEADER_EVERY_FRAMES * 160);
        let n = r.into_samples::<i16>().filter(Result::is_ok).count();
        assert_eq!(n as u64, 2 * HEADER_EVERY_FRAMES * 320);
        // Cut before the first rewrite: the header's sizes are still 0, a valid empty file.
        let mut w = WavWriter::new(Cursor::new(Vec::new()), law).unwrap();
        for _ in 0..10 {
            w.write_frame(&frame(law, 100, 100)).unwrap();
        }
        w.out.flush().unwrap();
        let r = hound::WavReader::new(Cursor::new(w.out.into_inner())).unwrap();
        assert_eq!(r.duration(), 0);
    }

    #[test]
    fn a_full_queue_counts_the_drop_and_never_blocks() {
        let (tx, rx) = sync_channel(QUEUE_FRAMES);
        let stats = RecordingStats::default();
        let f = frame(G711::Ulaw, 0, 0);
        for _ in 0..QUEUE_FRAMES {
            assert!(push_frame(&tx, &stats, &f));
        }
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 0);
        // Nobody reads: these return at once, counted.
        for _ in 0..25 {
            assert!(!push_frame(&tx, &stats, &f));
        }
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 25);
        drop(rx);
        assert!(!push_frame(&tx, &stats, &f));
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 26);
    }

    #[test]
    fn the_recorder_thread_writes_a_file() {
        let dir = std::env::temp_dir().join(format!("trunkline-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        let stats = Arc::new(RecordingStats::default());
        let rec = Recorder::start(path.clone(), G711::Ulaw, stats.clone()).unwrap();
        let f = frame(G711::Ulaw, 2000, -2000);
        let mut pushed = 0;
        for _ in 0..60 {
            if rec.push(&f) {
                pushed += 1;
            }
        }
        let s = rec.finish().unwrap();
        let dropped = stats.dropped_frames.load(Ordering::Relaxed);
        assert_eq!(pushed + dropped, 60);
        assert_eq!(s.frames, pushed);
        let r = hound::WavReader::open(&path).unwrap();
        assert_eq!(u64::from(r.duration()), pushed * 160);
        assert_eq!(stats.started.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.bytes.load(Ordering::Relaxed),
            44 + pushed * FRAME_BYTES as u64
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
