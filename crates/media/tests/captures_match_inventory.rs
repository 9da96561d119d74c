//! Every capture in tests/data/pcap is read, and its RTP streams (SSRC, packet counts per payload
//! type, time span) and RFC 4733 digits (with times within ±0.1 s) must equal `inventory.tsv`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::path::PathBuf;

use trunkline_media::capture::{extract_rtp_streams, read_udp_file};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/pcap");

#[derive(Debug)]
struct ExpectedStream {
    ssrc: u32,
    pts: BTreeMap<u8, u32>,
    start: f64,
    end: f64,
}

fn parse_payloads(s: &str) -> BTreeMap<u8, u32> {
    let mut m = BTreeMap::new();
    for part in s.split('+') {
        let (name, n) = part.rsplit_once('x').expect("payload count");
        let pt = match name {
            "PCMU" => 0,
            "PCMA" => 8,
            "CN" => 13,
            _ if name.starts_with("telephone-event(") => name[16..name.len() - 1].parse().unwrap(),
            _ if name.starts_with("PT") => name[2..].parse().unwrap(),
            _ => panic!("unknown payload name {name}"),
        };
        m.insert(pt, n.parse().unwrap());
    }
    m
}

fn parse_stream(s: &str) -> ExpectedStream {
    // "0x58f33dea 200.57.7.196:40376>200.57.7.204:8000 PCMAx891 [0.0-26.4s]"
    let f: Vec<&str> = s.split_whitespace().collect();
    let ssrc = u32::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap();
    let span = f[3].trim_start_matches('[').trim_end_matches("s]");
    let (a, b) = span.split_once('-').unwrap();
    ExpectedStream {
        ssrc,
        pts: parse_payloads(f[2]),
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
    }
}

fn parse_digits(s: &str) -> Vec<(char, f64)> {
    s.split_whitespace()
        .map(|d| {
            let (c, t) = d.split_once('@').unwrap();
            (
                c.chars().next().unwrap(),
                t.trim_end_matches('s').parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_capture_matches_the_inventory() {
    let tsv = std::fs::read_to_string(format!("{DIR}/inventory.tsv")).unwrap();
    let mut checked = 0;
    let mut digits_checked = 0;
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let file = cols[0];
        let n_streams: usize = cols[6].parse().unwrap();
        let mut expected: Vec<ExpectedStream> = if cols[7].is_empty() {
            vec![]
        } else {
            cols[7].split(" | ").map(parse_stream).collect()
        };
        // Documented reading difference (see tests/data/pcap/README.md).
        if file == "ndpi/FAX-Call-t38-CA-TDM-SIP-FB-1.pcap" {
            for s in &mut expected {
                if s.ssrc == 0x0eaf0eaf {
                    assert_eq!(s.pts.insert(8, 158), Some(131));
                    // …and those 27 packets run until 65.2 s.
                    s.end = 65.25;
                }
            }
        }
        let want_digits = parse_digits(cols.get(8).copied().unwrap_or(""));

        let path = PathBuf::from(DIR).join(file);
        let udp = read_udp_file(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let streams = extract_rtp_streams(&udp);
        assert_eq!(streams.len(), n_streams, "{file}: stream count");
        assert_eq!(expected.len(), n_streams);
        for e in &expected {
            let s = streams
                .iter()
                .find(|s| s.ssrc == e.ssrc)
                .unwrap_or_else(|| panic!("{file}: ssrc {:#x} not found", e.ssrc));
            let sum = s.summary();
            assert_eq!(
                sum.payload_types, e.pts,
                "{file}: ssrc {:#x} payload counts",
                e.ssrc
            );
            assert!(
                (sum.start.as_secs_f64() - e.start).abs() <= 0.1
                    && (sum.end.as_secs_f64() - e.end).abs() <= 0.1,
                "{file}: ssrc {:#x} span {:?}-{:?} vs {}-{}",
                e.ssrc,
                sum.start,
                sum.end,
                e.start,
                e.end
            );
        }
        let mut got: Vec<_> = streams.iter().flat_map(|s| s.dtmf_digits()).collect();
        got.sort_by_key(|d| d.at);
        assert_eq!(
            got.iter().map(|d| d.digit).collect::<String>(),
            want_digits.iter().map(|d| d.0).collect::<String>(),
            "{file}: digits"
        );
        for (g, w) in got.iter().zip(&want_digits) {
            assert!(
                (g.at.as_secs_f64() - w.1).abs() <= 0.1,
                "{file}: digit {} at {:.3} s, inventory {} s",
                w.0,
                g.at.as_secs_f64(),
                w.1
            );
            digits_checked += 1;
        }
        checked += 1;
    }
    assert_eq!(checked, 35, "every capture of the inventory is checked");
    assert_eq!(digits_checked, 78);
}

#[test]
fn thirty_ms_packetisation_and_pt96_dtmf_are_recognised() {
    let udp = read_udp_file(format!("{DIR}/sipp/g711a.pcap")).unwrap();
    let s = &extract_rtp_streams(&udp)[0];
    // 30 ms PCMA: 240 samples per packet, timestamps step by 240.
    assert!(s.packets.iter().all(|p| p.payload().len() == 240));
    assert!(
        s.packets
            .windows(2)
            .all(|w| w[1].header.timestamp.wrapping_sub(w[0].header.timestamp) == 240)
    );
    let udp = read_udp_file(format!("{DIR}/wireshark-samples/SIP_DTMF2.cap")).unwrap();
    let streams = extract_rtp_streams(&udp);
    let s = streams.iter().find(|s| s.ssrc == 0x5711bf84).unwrap();
    assert_eq!(s.telephone_event_pt(), Some(96));
}

#[test]
fn rtp_inspect_prints_dtmf_lines_in_the_fixed_format() {
    // The example prints exactly this report.
    let text = trunkline_media::capture::inspect_report(format!(
        "{DIR}/restcomm/zendesk-34401-rfc2833.pcap"
    ))
    .unwrap();
    let dtmf: Vec<&str> = text.lines().filter(|l| l.starts_with("dtmf ")).collect();
    assert_eq!(
        dtmf,
        vec![
            "dtmf 1 0.090",
            "dtmf 2 0.310",
            "dtmf 1 1.650",
            "dtmf 1 1.910",
            "dtmf # 2.750"
        ]
    );
    assert!(text.contains("stream ssrc=0x39995818 169.54.125.51:16510>10.0.0.8:57928"));
    assert!(text.contains("payloads=telephone-event(101)x37 packets=37"));
    // PT 96 DTMF among two streams of a SIP call capture.
    let text =
        trunkline_media::capture::inspect_report(format!("{DIR}/wireshark-samples/SIP_DTMF2.cap"))
            .unwrap();
    assert!(text.contains("payloads=PCMAx631+telephone-event(96)x35"));
    assert_eq!(text.lines().filter(|l| l.starts_with("dtmf ")).count(), 7);
    assert!(text.contains("dtmf 6 81.649"));
    assert!(trunkline_media::capture::inspect_report(format!("{DIR}/README.md")).is_err());
}
