//! `cargo run -p trunkline-media --example rtp-inspect -- FILE`
//!
//! Prints each RTP stream of a pcap/pcapng capture (SSRC, addresses, payload types, packets,
//! start, duration, loss, jitter), then every RFC 4733 DTMF digit as `dtmf <digit> <seconds>`
//! (seconds from the start of the capture, 3 decimals). See
//! [`trunkline_media::capture::inspect_report`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: rtp-inspect FILE");
        return ExitCode::from(2);
    };
    match trunkline_media::capture::inspect_report(&path) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtp-inspect: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
