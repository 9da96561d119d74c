//! Call recording: a stereo WAV of the call as the phone heard it — the phone LEFT (what the
//! jitter buffer played out towards the agent), the agent RIGHT (the frames actually sent in RTP
//! to the phone, so barge-in flushes, comfort silence and DTMF ticks are as heard).
//!
//! The call never waits for the disk. [`Call`](crate::Call) hands out one fixed-size
//! [`RecFrame`] (two 20 ms G.711 frames, no allocation) per tick; the runner pushes it with
//! [`Recorder::push`] into the bounded queue of the one [`RecordingWriter`] thread all calls
//! share. A full queue drops the frame and counts it ([`RecordingStats::dropped_frames`]);
//! `push` never blocks. One thread for all: the encoding takes at most one core from the calls
//! (measured, docs/PERFORMANCE.md: a thread per call took both cores with Opus at 250 calls).
//!
//! The byte layout is pure ([`wav`]): a 44-byte RIFF/WAVE header (PCM, 2 channels, 16 bits)
//! and interleaved little-endian samples. [`WavWriter`] writes into any `Write + Seek` and
//! rewrites the header's two sizes every [`HEADER_EVERY_FRAMES`] frames (one second), then
//! flushes: a file cut by SIGKILL is playable up to the last rewrite, and a normal end
//! ([`WavWriter::finish`]) leaves exact sizes.
//!
//! Opus ([`OggOpusWriter`]): the same frames as stereo Opus at 24 kbit/s (libopus through
//! `audiopus`, 8 kHz input, VoIP mode) in Ogg (RFC 7845) written by [`ogg`] (pure: pages, lacing,
//! CRC). One page per second is written and flushed, so a cut file is playable up to it.
//!
//! Not done here: resampling (the file is at the trunk's 8 kHz).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use serde::{Deserialize, Serialize};
use trunkline_media::g711::G711;
use trunkline_media::jitter::FRAME;

/// Sample rate of the recordings (the G.711 trunk's).
pub const RATE: u32 = 8000;
/// Frames between two header rewrites (1 s).
pub const HEADER_EVERY_FRAMES: u64 = 50;
/// A small writer queue, in 20 ms frames (2 s of one call).
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

/// What a recording is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFormat {
    /// Stereo 16-bit PCM WAV.
    Wav,
    /// Stereo Opus (24 kbit/s) in Ogg.
    Opus,
}

impl RecordingFormat {
    /// `wav` / `opus` (the record's `format`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingFormat::Wav => "wav",
            RecordingFormat::Opus => "opus",
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            RecordingFormat::Wav => "wav",
            RecordingFormat::Opus => "ogg",
        }
    }
}

/// Ogg encapsulation of Opus (RFC 3533 pages, RFC 7845 headers), as pure functions.
pub mod ogg {
    /// The Ogg CRC-32 (polynomial 0x04c11db7, not reflected, initial 0).
    pub fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &b in data {
            crc ^= u32::from(b) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// `header_type` flag: first page of the stream.
    pub const BOS: u8 = 0x02;
    /// `header_type` flag: last page of the stream.
    pub const EOS: u8 = 0x04;

    /// Append one page holding whole `packets` (at most 255 lacing values in all) to `out`.
    pub fn page(
        out: &mut Vec<u8>,
        header_type: u8,
        granule: u64,
        serial: u32,
        seq: u32,
        packets: &[&[u8]],
    ) {
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0); // version
        out.push(header_type);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // CRC, filled below
        let mut lacing = Vec::with_capacity(packets.len() * 2);
        for p in packets {
            let mut n = p.len();
            while n >= 255 {
                lacing.push(255);
                n -= 255;
            }
            lacing.push(n as u8);
        }
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        for p in packets {
            out.extend_from_slice(p);
        }
        let crc = crc32(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
    }

    /// The `OpusHead` packet (RFC 7845 §5.1), mapping family 0.
    pub fn opus_head(channels: u8, pre_skip: u16, input_rate: u32) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.push(1);
        h.push(channels);
        h.extend_from_slice(&pre_skip.to_le_bytes());
        h.extend_from_slice(&input_rate.to_le_bytes());
        h.extend_from_slice(&0i16.to_le_bytes()); // output gain
        h.push(0); // mapping family
        h
    }

    /// The `OpusTags` packet (RFC 7845 §5.2), no user comments.
    pub fn opus_tags(vendor: &str) -> Vec<u8> {
        let mut t = b"OpusTags".to_vec();
        t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        t.extend_from_slice(vendor.as_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t
    }
}

/// Why `format = "opus"` fails in a build without the `opus` feature (libopus is a C library:
/// Debian `libopus-dev`; the default build needs no C library beyond libc).
pub const OPUS_NOT_BUILT: &str = "this build has no Opus support: build with `--features opus` \
     (needs libopus: Debian libopus-dev and pkg-config), or record as wav";

/// Opus packets per Ogg page (one second).
pub const OPUS_PAGE_PACKETS: usize = 50;
/// The Opus bitrate of recordings. Measured with libopus 1.3.1 (8 kHz stereo, VoIP mode, a
/// 440 Hz tone left and 1 kHz right, decoded by `opusdec`): at 16 kbit/s the encoder collapses
/// the two channels into one (each decoded channel correlates 0.75 with both sources); at
/// 24 kbit/s they stay apart (0.98 / 0.92 with their own source, 0.01 across).
pub const OPUS_BITRATE: i32 = 24_000;
/// libopus encoder complexity (0–10; its default, 10, cost about 0.8 % of a core per call at
/// 250 calls on the project's 2-core machine, saturating it; 1 costs about 0.3 point).
pub const OPUS_COMPLEXITY: u8 = 1;
/// Largest Opus packet kept (far above 24 kbit/s × 20 ms = 60 bytes).
#[cfg(feature = "opus")]
const OPUS_MAX_PACKET: usize = 400;

#[cfg(feature = "opus")]
/// A stereo Ogg Opus stream being written into `W`.
pub struct OggOpusWriter<W: Write> {
    out: W,
    law: G711,
    enc: audiopus::coder::Encoder,
    serial: u32,
    seq: u32,
    frames: u64,
    /// Encoded packets of the page being built (fixed capacity).
    packets: Vec<u8>,
    sizes: Vec<usize>,
    page: Vec<u8>,
    pcm: [i16; FRAME * 2],
    packet: [u8; OPUS_MAX_PACKET],
}

#[cfg(feature = "opus")]
impl<W: Write> std::fmt::Debug for OggOpusWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "opus")]
fn opus_err(e: audiopus::Error) -> io::Error {
    io::Error::other(format!("opus: {e}"))
}

#[cfg(feature = "opus")]
impl<W: Write> OggOpusWriter<W> {
    /// Write the two header pages and get ready for frames.
    pub fn new(mut out: W, law: G711, serial: u32) -> io::Result<Self> {
        use audiopus::{Application, Bitrate, Channels, SampleRate};
        let mut enc =
            audiopus::coder::Encoder::new(SampleRate::Hz8000, Channels::Stereo, Application::Voip)
                .map_err(opus_err)?;
        enc.set_bitrate(Bitrate::BitsPerSecond(OPUS_BITRATE))
            .map_err(opus_err)?;
        enc.set_complexity(OPUS_COMPLEXITY).map_err(opus_err)?;
        // Pre-skip is counted at 48 kHz.
        let pre_skip = enc.lookahead().map_err(opus_err)?.saturating_mul(6);
        let mut page = Vec::with_capacity(4096);
        let head = ogg::opus_head(2, pre_skip.min(u32::from(u16::MAX)) as u16, RATE);
        ogg::page(&mut page, ogg::BOS, 0, serial, 0, &[&head]);
        let tags = ogg::opus_tags("trunkline");
        ogg::page(&mut page, 0, 0, serial, 1, &[&tags]);
        out.write_all(&page)?;
        out.flush()?;
        Ok(OggOpusWriter {
            out,
            law,
            enc,
            serial,
            seq: 2,
            frames: 0,
            packets: Vec::with_capacity(OPUS_PAGE_PACKETS * OPUS_MAX_PACKET),
            sizes: Vec::with_capacity(OPUS_PAGE_PACKETS),
            page,
            pcm: [0; FRAME * 2],
            packet: [0; OPUS_MAX_PACKET],
        })
    }

    /// Frames encoded.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Encode one frame; a page is written and flushed every [`OPUS_PAGE_PACKETS`]. Returns the
    /// bytes written to `W` by this call.
    pub fn write_frame(&mut self, f: &RecFrame) -> io::Result<usize> {
        for i in 0..FRAME {
            self.pcm[2 * i] = self.law.decode(f.phone[i]);
            self.pcm[2 * i + 1] = self.law.decode(f.agent[i]);
        }
        let n = self
            .enc
            .encode(&self.pcm, &mut self.packet)
            .map_err(opus_err)?;
        self.packets.extend_from_slice(&self.packet[..n]);
        self.sizes.push(n);
        self.frames += 1;
        if self.sizes.len() == OPUS_PAGE_PACKETS {
            return self.write_page(0);
        }
        Ok(0)
    }

    fn write_page(&mut self, flags: u8) -> io::Result<usize> {
        let mut parts: [&[u8]; OPUS_PAGE_PACKETS] = [&[]; OPUS_PAGE_PACKETS];
        let mut at = 0;
        for (i, &n) in self.sizes.iter().enumerate() {
            parts[i] = &self.packets[at..at + n];
            at += n;
        }
        self.page.clear();
        // 960 samples at 48 kHz per 20 ms packet.
        ogg::page(
            &mut self.page,
            flags,
            self.frames * 960,
            self.serial,
            self.seq,
            &parts[..self.sizes.len()],
        );
        self.seq += 1;
        self.packets.clear();
        self.sizes.clear();
        self.out.write_all(&self.page)?;
        self.out.flush()?;
        Ok(self.page.len())
    }

    /// The last page (end of stream), flushed; the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_page(ogg::EOS)?;
        Ok(self.out)
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

/// Frames the shared writer's queue holds (about 1.3 s of 250 calls; ~5.5 MB).
pub const SHARED_QUEUE_FRAMES: usize = 16_384;

/// What goes to the writer thread.
#[allow(clippy::large_enum_variant)] // frames are the traffic: inline, no allocation per frame
enum Msg {
    Start {
        id: u64,
        path: PathBuf,
        format: RecordingFormat,
        law: G711,
    },
    Frame {
        id: u64,
        frame: RecFrame,
    },
    Finish {
        id: u64,
        reply: std::sync::mpsc::Sender<RecordingSummary>,
    },
}

/// The one writer thread every recording of a gateway goes through: a bounded queue of
/// fixed-size frames in front of it, so the calls never wait for the disk or the encoder, and
/// the encoding (Opus) takes at most one core from the calls.
#[derive(Debug, Clone)]
pub struct RecordingWriter {
    tx: SyncSender<Msg>,
    stats: Arc<RecordingStats>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl RecordingWriter {
    /// Start the writer thread with a queue of `queue_frames`.
    pub fn start(queue_frames: usize, stats: Arc<RecordingStats>) -> io::Result<RecordingWriter> {
        let (tx, rx) = sync_channel(queue_frames);
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("trunkline-rec".into())
            .spawn(move || hub(rx, &thread_stats))?;
        Ok(RecordingWriter {
            tx,
            stats,
            next_id: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<RecordingStats> {
        &self.stats
    }

    /// Start recording into `path` (created by the writer thread; a file that cannot be
    /// created is logged and counted in [`RecordingStats::failed`]). Never blocks: `None`
    /// (counted as failed) when the queue is full.
    pub fn begin(&self, path: PathBuf, format: RecordingFormat, law: G711) -> Option<Recorder> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Start {
            id,
            path,
            format,
            law,
        }) {
            Ok(()) => {
                self.stats.started.fetch_add(1, Ordering::Relaxed);
                Some(Recorder {
                    writer: self.clone(),
                    id,
                })
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// One call's recording on the shared [`RecordingWriter`].
#[derive(Debug)]
pub struct Recorder {
    writer: RecordingWriter,
    id: u64,
}

impl Recorder {
    /// Queue one frame; never blocks. False (and counted) when the queue is full or the writer
    /// has stopped.
    pub fn push(&self, f: &RecFrame) -> bool {
        push_frame(
            &self.writer.tx,
            &self.writer.stats,
            Msg::Frame {
                id: self.id,
                frame: *f,
            },
        )
    }

    /// Wait for the writer to write what is queued and close the file (exact header / last
    /// page). Blocking: call it off the async runtime.
    pub fn finish(self) -> Option<RecordingSummary> {
        let (reply, done) = std::sync::mpsc::channel();
        self.writer
            .tx
            .send(Msg::Finish { id: self.id, reply })
            .ok()?;
        done.recv().ok()
    }
}

/// A non-blocking send on a bounded queue; a full (or closed) queue counts a dropped frame.
fn push_frame<T>(tx: &SyncSender<T>, stats: &RecordingStats, msg: T) -> bool {
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// One open recording in the writer thread.
struct Open {
    sink: Option<Sink>,
    path: PathBuf,
    frames: u64,
}

fn hub(rx: Receiver<Msg>, stats: &RecordingStats) {
    let mut open: std::collections::HashMap<u64, Open> = std::collections::HashMap::new();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Start {
                id,
                path,
                format,
                law,
            } => {
                let sink = match Sink::create(&path, format, law) {
                    Ok(sink) => {
                        if format == RecordingFormat::Wav {
                            stats
                                .bytes
                                .fetch_add(wav::HEADER_LEN as u64, Ordering::Relaxed);
                        }
                        Some(sink)
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "recording file not created");
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                open.insert(
                    id,
                    Open {
                        sink,
                        path,
                        frames: 0,
                    },
                );
            }
            Msg::Frame { id, frame } => {
                let Some(o) = open.get_mut(&id) else { continue };
                let Some(sink) = o.sink.as_mut() else {
                    continue;
                };
                match sink.write_frame(&frame) {
                    Ok(n) => {
                        o.frames += 1;
                        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(path = %o.path.display(), error = %e, "recording write failed");
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        o.sink = None;
                    }
                }
            }
            Msg::Finish { id, reply } => {
                if let Some(o) = open.remove(&id) {
                    let _ = reply.send(close(o, stats));
                }
            }
        }
    }
    // Every writer handle is gone: close what is still open.
    for (_, o) in open.drain() {
        close(o, stats);
    }
}

fn close(o: Open, stats: &RecordingStats) -> RecordingSummary {
    if let Some(sink) = o.sink
        && let Err(e) = sink.finish()
    {
        tracing::warn!(path = %o.path.display(), error = %e, "recording could not be finished");
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    RecordingSummary {
        path: o.path,
        frames: o.frames,
        duration_ms: o.frames * 20,
    }
}

/// The encoder a recording's frames go through.
enum Sink {
    Wav(Box<WavWriter<BufWriter<File>>>),
    #[cfg(feature = "opus")]
    Opus(Box<OggOpusWriter<BufWriter<File>>>),
}

impl Sink {
    fn create(path: &std::path::Path, format: RecordingFormat, law: G711) -> io::Result<Sink> {
        let f = BufWriter::with_capacity(16 * 1024, File::create(path)?);
        Ok(match format {
            RecordingFormat::Wav => Sink::Wav(Box::new(WavWriter::new(f, law)?)),
            #[cfg(feature = "opus")]
            RecordingFormat::Opus => {
                // Any serial will do; one derived from the file name keeps runs reproducible.
                let serial = ogg::crc32(path.as_os_str().as_encoded_bytes());
                Sink::Opus(Box::new(OggOpusWriter::new(f, law, serial)?))
            }
            #[cfg(not(feature = "opus"))]
            RecordingFormat::Opus => return Err(io::Error::other(OPUS_NOT_BUILT)),
        })
    }

    fn write_frame(&mut self, f: &RecFrame) -> io::Result<usize> {
        match self {
            Sink::Wav(w) => w.write_frame(f),
            #[cfg(feature = "opus")]
            Sink::Opus(w) => w.write_frame(f),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Sink::Wav(w) => w.finish().map(drop),
            #[cfg(feature = "opus")]
            Sink::Opus(w) => w.finish().map(drop),
        }
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
            assert!(push_frame(&tx, &stats, f));
        }
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 0);
        // Nobody reads: these return at once, counted.
        for _ in 0..25 {
            assert!(!push_frame(&tx, &stats, f));
        }
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 25);
        drop(rx);
        assert!(!push_frame(&tx, &stats, f));
        assert_eq!(stats.dropped_frames.load(Ordering::Relaxed), 26);
    }

    #[test]
    fn the_recorder_thread_writes_a_file() {
        let dir = std::env::temp_dir().join(format!("trunkline-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        let stats = Arc::new(RecordingStats::default());
        let writer = RecordingWriter::start(QUEUE_FRAMES, stats.clone()).unwrap();
        let rec = writer
            .begin(path.clone(), RecordingFormat::Wav, G711::Ulaw)
            .unwrap();
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

    /// Decode an Ogg Opus file with `opusdec` (Debian `opus-tools`, an independent decoder) at
    /// 8 kHz: (left, right).
    #[cfg(feature = "opus")]
    fn opusdec(ogg: &[u8], name: &str) -> (Vec<i16>, Vec<i16>) {
        let dir =
            std::env::temp_dir().join(format!("trunkline-opus-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("in.ogg"), dir.join("out.wav"));
        std::fs::write(&src, ogg).unwrap();
        let out = std::process::Command::new("opusdec")
            .args(["--quiet", "--rate", "8000"])
            .arg(&src)
            .arg(&dst)
            .output()
            .expect("opusdec (Debian opus-tools) must be installed: .ci/run installs it");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = hound::WavReader::open(&dst).unwrap();
        assert_eq!(r.spec().channels, 2);
        let s: Vec<i16> = r.into_samples().map(|s| s.unwrap()).collect();
        let _ = std::fs::remove_dir_all(&dir);
        (
            s.iter().step_by(2).copied().collect(),
            s.iter().skip(1).step_by(2).copied().collect(),
        )
    }

    /// Best normalised correlation of `b` against `a` over lags 0..max_lag (b delayed).
    #[cfg(feature = "opus")]
    fn correlation(a: &[f64], b: &[i16], max_lag: usize) -> f64 {
        let b: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
        (0..max_lag)
            .map(|lag| {
                let n = a.len().min(b.len().saturating_sub(lag));
                let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
                for i in 0..n {
                    ab += a[i] * b[i + lag];
                    aa += a[i] * a[i];
                    bb += b[i + lag] * b[i + lag];
                }
                if aa == 0.0 || bb == 0.0 {
                    0.0
                } else {
                    ab / (aa * bb).sqrt()
                }
            })
            .fold(0.0, f64::max)
    }

    /// Two tones, 440 Hz on the phone side and 1 kHz on the agent side, for `frames` × 20 ms.
    #[cfg(feature = "opus")]
    fn tones(law: G711, frames: usize) -> (Vec<RecFrame>, Vec<f64>, Vec<f64>) {
        let tone = |hz: f64, i: usize| {
            (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin() * 8000.0
        };
        let mut out = Vec::new();
        let (mut l, mut r) = (Vec::new(), Vec::new());
        for k in 0..frames {
            let mut f = RecFrame {
                phone: [0; FRAME],
                agent: [0; FRAME],
            };
            for i in 0..FRAME {
                let n = k * FRAME + i;
                f.phone[i] = law.encode(tone(440.0, n) as i16);
                f.agent[i] = law.encode(tone(1000.0, n) as i16);
                l.push(f64::from(law.decode(f.phone[i])));
                r.push(f64::from(law.decode(f.agent[i])));
            }
            out.push(f);
        }
        (out, l, r)
    }

    #[test]
    fn ogg_crc_and_lacing() {
        // The CRC of "OggS" pages as libogg computes it (check value of CRC-32/MPEG-2 without
        // the final XOR and initial 0: "123456789" -> 0x89a1897f).
        assert_eq!(ogg::crc32(b"123456789"), 0x89a1_897f);
        let mut page = Vec::new();
        let big = [1u8; 300];
        ogg::page(&mut page, ogg::EOS, 960, 7, 3, &[&big, &[2u8; 10]]);
        assert_eq!(&page[..4], b"OggS");
        assert_eq!(page[5], ogg::EOS);
        assert_eq!(u64::from_le_bytes(page[6..14].try_into().unwrap()), 960);
        assert_eq!(page[26], 3, "300 = 255 + 45, then 10");
        assert_eq!(&page[27..30], &[255, 45, 10]);
        assert_eq!(page.len(), 27 + 3 + 310);
        let crc = u32::from_le_bytes(page[22..26].try_into().unwrap());
        let mut zeroed = page.clone();
        zeroed[22..26].copy_from_slice(&[0; 4]);
        assert_eq!(ogg::crc32(&zeroed), crc);
    }

    #[test]
    #[cfg(feature = "opus")]
    fn opus_recording_decodes_with_opusdec_and_keeps_the_channels() {
        let law = G711::Ulaw;
        let (frames, l, r) = tones(law, 100);
        let mut w = OggOpusWriter::new(Vec::new(), law, 1).unwrap();
        for f in &frames {
            w.write_frame(f).unwrap();
        }
        let ogg = w.finish().unwrap();
        // About 24 kbit/s: 2 s in about 6 kB.
        assert!(ogg.len() < 7_000, "{} bytes for 2 s", ogg.len());
        let (dl, dr) = opusdec(&ogg, "tones");
        assert!(
            (15_000..=16_100).contains(&dl.len()),
            "{} samples",
            dl.len()
        );
        // Skip the codec's start-up, then correlate each side with what was sent.
        let (l, r) = (&l[800..12_000], &r[800..12_000]);
        let ll = correlation(l, &dl[800..], 80);
        let rr = correlation(r, &dr[800..], 80);
        let lr = correlation(l, &dr[800..], 80);
        assert!(ll > 0.9, "left: {ll}");
        assert!(rr > 0.85, "right: {rr}");
        assert!(lr < 0.2, "the channels are not mixed: {lr}");
    }

    #[test]
    #[cfg(feature = "opus")]
    fn a_cut_opus_recording_plays_up_to_its_last_page() {
        let law = G711::Alaw;
        let (frames, _, _) = tones(law, 120);
        let mut w = OggOpusWriter::new(Vec::new(), law, 2).unwrap();
        for f in &frames {
            w.write_frame(f).unwrap();
        }
        // Killed: no final page; 2 whole pages (2 s) written, 20 frames still in memory.
        let mut ogg = w.out.clone();
        ogg.truncate(ogg.len() - 7); // and the last page cut short
        let (dl, _) = opusdec(&ogg, "cut");
        assert!(dl.len() >= 7_000, "at least the first second: {}", dl.len());
    }
}
