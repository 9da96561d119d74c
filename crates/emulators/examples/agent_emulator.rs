//! Runs the agent emulator until Ctrl-C (a stand-in for `trunkline emulate agent` until the
//! gateway binary exists).
//!
//! ```text
//! cargo run -p trunkline-emulators --example agent_emulator -- --listen 127.0.0.1:9000 \
//!     [--input-format ulaw_8000] [--output-format ulaw_8000] [--end-after-turns N] \
//!     [--api-key KEY] [--record-dir DIR]
//! ```
//! With `--record-dir`, each finished conversation is written as `<conversation_id>.wav`
//! (caller audio) and `<conversation_id>.jsonl` (messages received).

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut cfg = AgentEmulatorConfig::default();
    let mut listen = "127.0.0.1:9000".to_owned();
    let mut record_dir: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--listen" => listen = v,
            "--input-format" => cfg.input_format = v.parse()?,
            "--output-format" => cfg.output_format = v.parse()?,
            "--end-after-turns" => cfg.script.end_after_turns = Some(v.parse()?),
            "--api-key" => cfg.api_key = Some(v),
            "--record-dir" => record_dir = Some(PathBuf::from(v)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let emu = AgentEmulator::start(listen.parse()?, cfg).await?;
    eprintln!(
        "agent emulator on {} (signed URLs at {})",
        emu.ws_base_url(),
        emu.http_base_url()
    );
    let mut written = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let recs = emu.records();
        for r in recs.iter().skip(written).take_while(|r| r.finished) {
            written += 1;
            let id = r
                .conversation_id
                .clone()
                .unwrap_or_else(|| format!("conn_{written}"));
            eprintln!(
                "{id}: {:.1} s caller audio, {} turns, {} interruptions, close {:?}",
                r.caller_seconds(),
                r.turns,
                r.interruptions,
                r.close_code
            );
            if let Some(dir) = &record_dir {
                r.write_caller_wav(&dir.join(format!("{id}.wav")))?;
                std::fs::write(dir.join(format!("{id}.jsonl")), r.messages_jsonl())?;
            }
        }
    }
    Ok(())
}
