//! Talk to an agent with WAV files: a tool for checking an agent set-up before any phone is
//! involved.
//!
//! ```text
//! cargo run -p trunkline-agent --example converse -- \
//!     --url wss://api.elevenlabs.io --agent-id AGENT_ID [--api-key-env ELEVENLABS_API_KEY] \
//!     --input caller.wav --output agent.wav [--var name=value]... [--tail-secs 5]
//! ```
//!
//! Streams `--input` (any rate, mono or stereo, 16-bit or float; resampled with a windowed-sinc
//! filter to the agent's input format) in real time as the caller, 20 ms per message on an
//! absolute schedule; plays the agent's audio into a simulated 20 ms playout clock aligned with
//! the caller's timeline, obeying interruptions (queued audio flushed, `event_id <= N` dropped);
//! writes what would have been heard to `--output` (PCM16 at the agent's output rate); prints
//! the transcript; exits when the agent ends the conversation (after playing out what it
//! received) or `--tail-secs` after the input is over. `--url` may also be a full signed URL.

use std::collections::VecDeque;
use std::error::Error;
use std::time::Duration;

use trunkline_agent::protocol::DynamicVariable;
use trunkline_agent::{
    AgentConfig, AgentEvent, AudioFormat, CloseReason, InterruptionFilter, ToolRegistry, connect,
};

struct Args {
    url: String,
    agent_id: String,
    api_key_env: Option<String>,
    input: String,
    output: String,
    vars: Vec<(String, String)>,
    tail_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut url, mut agent_id, mut api_key_env, mut input, mut output) =
        (None, None, None, None, None);
    let mut vars = Vec::new();
    let mut tail_secs = 5;
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(val()?),
            "--agent-id" => agent_id = Some(val()?),
            "--api-key-env" => api_key_env = Some(val()?),
            "--input" => input = Some(val()?),
            "--output" => output = Some(val()?),
            "--tail-secs" => tail_secs = val()?.parse().map_err(|e| format!("--tail-secs: {e}"))?,
            "--var" => {
                let v = val()?;
                let (k, v) = v.split_once('=').ok_or("--var wants name=value")?;
                vars.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        agent_id: agent_id.ok_or("--agent-id is required")?,
        api_key_env,
        input: input.ok_or("--input is required")?,
        output: output.ok_or("--output is required")?,
        vars,
        tail_secs,
    })
}

/// Reads a WAV as mono f32 samples and its rate.
fn read_wav(path: &str) -> Result<(Vec<f32>, u32), Box<dyn Error>> {
    let mut r = hound::WavReader::open(path)?;
    let spec = r.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    let ch = usize::from(spec.channels.max(1));
    let mono = interleaved
        .chunks(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

/// Windowed-sinc resampler (Blackman window, 16 zero crossings each side, cut-off at the lower
/// Nyquist), so downsampling e.g. 44.1 kHz to 8 kHz does not alias. Offline, so cost is no issue.
fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    const ZEROS: f64 = 16.0;
    let ratio = f64::from(to) / f64::from(from);
    let fc = ratio.min(1.0); // cut-off relative to the input Nyquist
    let half = (ZEROS / fc).ceil() as i64;
    let n = (x.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let p = i as f64 / ratio;
            let c = p.floor() as i64;
            let mut acc = 0.0f64;
            for k in (c - half + 1)..=(c + half) {
                if k < 0 || k as usize >= x.len() {
                    continue;
                }
                let t = (p - k as f64) * fc; // in zero crossings of the low-pass
                if t.abs() >= ZEROS {
                    continue;
                }
                let sinc = if t == 0.0 {
                    1.0
                } else {
                    (std::f64::consts::PI * t).sin() / (std::f64::consts::PI * t)
                };
                let w = 0.42
                    + 0.5 * (std::f64::consts::PI * t / ZEROS).cos()
                    + 0.08 * (2.0 * std::f64::consts::PI * t / ZEROS).cos();
                acc += f64::from(x[k as usize]) * fc * sinc * w;
            }
            acc as f32
        })
        .collect()
}

fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(32_635) + 0x84;
    let exp = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7);
    let mant = (s >> (exp + 3)) & 0x0f;
    !(sign | ((exp as i32) << 4) | mant) as u8
}

fn ulaw_decode(b: u8) -> i16 {
    let u = !b;
    let exp = i32::from((u >> 4) & 7);
    let mag = (((i32::from(u & 0x0f) << 3) + 0x84) << exp) - 0x84;
    if u & 0x80 != 0 {
        -mag as i16
    } else {
        mag as i16
    }
}

fn encode(fmt: AudioFormat, x: &[f32]) -> Vec<u8> {
    let pcm = x.iter().map(|v| (v.clamp(-1.0, 1.0) * 32_767.0) as i16);
    match fmt {
        AudioFormat::Ulaw8000 => pcm.map(ulaw_encode).collect(),
        AudioFormat::Pcm { .. } => pcm.flat_map(i16::to_le_bytes).collect(),
    }
}

fn decode(fmt: AudioFormat, b: &[u8]) -> Vec<i16> {
    match fmt {
        AudioFormat::Ulaw8000 => b.iter().map(|&v| ulaw_decode(v)).collect(),
        AudioFormat::Pcm { .. } => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: converse --url URL --agent-id ID [--api-key-env VAR] --input caller.wav --output agent.wav [--var k=v]... [--tail-secs N]"
            );
            std::process::exit(2);
        }
    };
    let mut config = AgentConfig::new(args.agent_id.clone());
    if args.url.contains("/v1/convai/conversation") {
        config.signed_url = Some(args.url.clone());
    } else {
        config = config.with_base_url(args.url.clone());
    }
    if let Some(var) = &args.api_key_env {
        config.api_key = Some(std::env::var(var).map_err(|_| format!("${var} is not set"))?);
    }
    for (k, v) in &args.vars {
        config
            .initiation
            .dynamic_variables
            .insert(k.clone(), DynamicVariable::from(v.as_str()));
    }
    config.audio_queue_chunks = 250; // 5 s

    let (input, in_rate) = read_wav(&args.input)?;
    let session = connect(config, ToolRegistry::new()).await?;
    let in_fmt = session.input_format();
    let out_fmt = session.output_format();
    eprintln!(
        "connected: conversation {} (input {in_fmt}, output {out_fmt})",
        session.conversation_id()
    );
    let caller = encode(in_fmt, &resample(&input, in_rate, in_fmt.sample_rate()));
    let frame_in = in_fmt.bytes_for_ms(20);
    let frame_out_samples = (out_fmt.sample_rate() / 50) as usize;
    let silence_in = encode(in_fmt, &vec![0.0; frame_in / in_fmt.bytes_per_sample()]);
    let (handle, mut events) = session.into_parts();

    let mut playout: VecDeque<(i64, i16)> = VecDeque::new();
    let mut filter = InterruptionFilter::new();
    let mut heard: Vec<i16> = Vec::new();
    let mut agent_ended = false;
    let total_frames = caller.len().div_ceil(frame_in) as u64;
    let tail_frames = args.tail_secs * 50;
    let start = tokio::time::Instant::now();
    let mut n: u64 = 0;
    'call: loop {
        // One 20 ms tick on an absolute schedule: send caller audio, play 20 ms of agent audio.
        tokio::time::sleep_until(start + Duration::from_millis(20 * n)).await;
        if !agent_ended {
            let off = n as usize * frame_in;
            let frame = if off < caller.len() {
                caller[off..(off + frame_in).min(caller.len())].to_vec()
            } else {
                silence_in.clone()
            };
            let _ = handle.send_audio(frame);
        }
        for _ in 0..frame_out_samples {
            heard.push(match playout.pop_front() {
                Some((id, s)) if filter.admits(id) => s,
                _ => 0,
            });
        }
        n += 1;
        while let Ok(ev) = events.try_recv() {
            match ev {
                AgentEvent::Audio { event_id, audio } if filter.admits(event_id) => {
                    playout.extend(decode(out_fmt, &audio).into_iter().map(|s| (event_id, s)));
                }
                AgentEvent::Interruption { event_id } => {
                    filter.interrupt(event_id);
                    playout.clear();
                    println!("[interrupted agent turn {event_id}]");
                }
                AgentEvent::UserTranscript { text, .. } => println!("caller: {text}"),
                AgentEvent::AgentResponse { text, .. } => println!("agent:  {text}"),
                AgentEvent::AgentResponseCorrection(c) => {
                    println!("agent (as heard): {}", c.corrected)
                }
                AgentEvent::ToolCall { call, .. } => {
                    println!("[client tool call {} {}]", call.tool_name, call.parameters);
                    let _ = handle.send_tool_result(&call.tool_call_id, "not available here", true);
                }
                AgentEvent::AgentToolResponse(r) => println!("[agent tool {}]", r.tool_name),
                AgentEvent::Error(e) => eprintln!("[error event: {e:?}]"),
                AgentEvent::Closed(c) => {
                    match &c.reason {
                        CloseReason::AgentEnded | CloseReason::MaxDuration => {
                            eprintln!("agent ended the conversation; playing out what is queued")
                        }
                        other => eprintln!("closed: {other:?} (code {:?})", c.code),
                    }
                    agent_ended = true;
                }
                _ => {}
            }
        }
        if agent_ended && playout.is_empty() {
            break 'call;
        }
        if !agent_ended && n >= total_frames + tail_frames {
            eprintln!("input over; closing");
            handle.close();
            break 'call;
        }
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: out_fmt.sample_rate(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&args.output, spec)?;
    for s in &heard {
        w.write_sample(*s)?;
    }
    w.finalize()?;
    let st = handle.stats();
    eprintln!(
        "wrote {} ({:.1} s); sent {} chunks ({} dropped), {} pings answered, last ping {} ms",
        args.output,
        heard.len() as f64 / f64::from(out_fmt.sample_rate()),
        st.audio_chunks_sent,
        st.audio_chunks_dropped,
        st.pings_answered,
        st.last_ping_ms
    );
    Ok(())
}
