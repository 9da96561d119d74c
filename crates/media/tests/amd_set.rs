//! Accuracy and speed of the answering-machine detector on the labelled set `tests/data/amd/`
//! (40 synthesised pickups, see its README). Every file is fed 20 ms frame by frame in virtual
//! time, then silence until the detector is done. Goals (issue 15): ≥ 95 % correct, a human
//! decided ≤ 1.5 s (p50) after the end of their first utterance, a machine ≤ 3 s (p50) after the
//! answer, every beep found and located within ±100 ms, no beep reported where there is none.
//! Prints the confusion matrix, per-file results and the timings:
//! `cargo test -p trunkline-media --test amd_set -- --nocapture`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions
#![allow(clippy::disallowed_methods)] // Instant::now: a fixed origin for virtual time

use std::time::{Duration, Instant};

use trunkline_media::amd::{Amd, AmdConfig, AmdEvent, FRAME, FRAME_SAMPLES, Verdict};
use trunkline_media::capture::wav_ulaw_data;
use trunkline_media::g711::G711;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/amd");

struct Label {
    file: String,
    human: bool,
    speech_start_ms: i64,
    first_end_ms: i64,
    beep_ms: Option<i64>,
}

fn labels() -> Vec<Label> {
    let text = std::fs::read_to_string(format!("{DIR}/labels.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.splitn(7, ',').collect();
            Label {
                file: f[0].to_string(),
                human: match f[1] {
                    "human" => true,
                    "machine" => false,
                    other => panic!("label {other}"),
                },
                speech_start_ms: f[2].parse().unwrap(),
                first_end_ms: f[3].parse().unwrap(),
                beep_ms: f[4].parse().ok(),
            }
        })
        .collect()
}

struct Outcome {
    verdict: Option<Verdict>,
    reason: &'static str,
    at_ms: i64,
    beep_ms: Option<i64>,
    ready_ms: Option<i64>,
}

fn ms(t0: Instant, t: Instant) -> i64 {
    t.saturating_duration_since(t0).as_millis() as i64
}

fn run(pcm: &[i16]) -> Outcome {
    let t0 = Instant::now();
    let mut amd = Amd::new(AmdConfig::default());
    let mut out = Outcome {
        verdict: None,
        reason: "",
        at_ms: -1,
        beep_ms: None,
        ready_ms: None,
    };
    let silence = [0i16; FRAME_SAMPLES];
    for i in 0..3000u32 {
        let start = i as usize * FRAME_SAMPLES;
        let frame = pcm.get(start..start + FRAME_SAMPLES).unwrap_or(&silence);
        amd.push_frame(t0 + FRAME * i, frame);
        while let Some(e) = amd.poll_event() {
            match e {
                AmdEvent::Verdict {
                    verdict,
                    reason,
                    at,
                } => {
                    out.verdict = Some(verdict);
                    out.reason = reason.as_str();
                    out.at_ms = ms(t0, at);
                }
                AmdEvent::Beep { at, end, .. } => {
                    out.beep_ms = Some(ms(t0, at));
                    out.ready_ms = Some(ms(t0, end));
                }
                AmdEvent::GreetingEnd { at } => out.ready_ms = Some(ms(t0, at)),
            }
        }
        if amd.is_done() {
            break;
        }
    }
    out
}

fn load(file: &str) -> Vec<i16> {
    let bytes = std::fs::read(format!("{DIR}/{file}")).unwrap();
    let ulaw = wav_ulaw_data(&bytes).unwrap();
    ulaw.iter().map(|&c| G711::Ulaw.decode(c)).collect()
}

fn p50(v: &mut [i64]) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn amd_set_accuracy_speed_and_beeps() {
    let labels = labels();
    assert_eq!(labels.len(), 40, "the set has 40 files");
    // Confusion: rows truth (human, machine), columns verdict (human, machine, unknown).
    let mut confusion = [[0u32; 3]; 2];
    let mut human_after_word = Vec::new();
    let mut machine_after_answer = Vec::new();
    let mut machine_after_speech = Vec::new();
    let mut beep_errors = Vec::new();
    let mut beeps_missed = Vec::new();
    let mut false_beeps = Vec::new();
    println!(
        "{:<24} {:>7} {:>7} {:<22} {:>7} {:>7} {:>7} {:>7}",
        "file", "truth", "verdict", "reason", "at_ms", "beep", "label", "ready"
    );
    for l in &labels {
        let pcm = load(&l.file);
        let o = run(&pcm);
        let col = match o.verdict {
            Some(Verdict::Human) => 0,
            Some(Verdict::Machine) => 1,
            _ => 2,
        };
        confusion[usize::from(!l.human)][col] += 1;
        let correct = (l.human && col == 0) || (!l.human && col == 1);
        if correct && l.human {
            human_after_word.push(o.at_ms - l.first_end_ms);
        }
        if correct && !l.human {
            machine_after_answer.push(o.at_ms);
            machine_after_speech.push(o.at_ms - l.speech_start_ms);
        }
        match (l.beep_ms, o.beep_ms) {
            (Some(want), Some(got)) => beep_errors.push((l.file.clone(), got - want)),
            (Some(_), None) if !l.human => beeps_missed.push(l.file.clone()),
            (None, Some(got)) => false_beeps.push((l.file.clone(), got)),
            _ => {}
        }
        let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<24} {:>7} {:>7} {:<22} {:>7} {:>7} {:>7} {:>7}{}",
            l.file,
            if l.human { "human" } else { "machine" },
            o.verdict.map_or("none", |v| v.as_str()),
            o.reason,
            o.at_ms,
            opt(o.beep_ms),
            opt(l.beep_ms),
            opt(o.ready_ms),
            if correct { "" } else { "   <-- WRONG" }
        );
    }
    let total = labels.len() as u32;
    let right = confusion[0][0] + confusion[1][1];
    println!("\nconfusion (rows: truth; columns: verdict)");
    println!("{:<9} {:>6} {:>8} {:>8}", "", "human", "machine", "unknown");
    for (name, row) in ["human", "machine"].iter().zip(confusion) {
        println!("{name:<9} {:>6} {:>8} {:>8}", row[0], row[1], row[2]);
    }
    let accuracy = f64::from(right) / f64::from(total);
    let h50 = p50(&mut human_after_word);
    let m50 = p50(&mut machine_after_answer);
    let ms50 = p50(&mut machine_after_speech);
    let max_beep_err = beep_errors.iter().map(|(_, e)| e.abs()).max().unwrap_or(0);
    println!(
        "accuracy {right}/{total} = {:.1} %; human decided p50 {h50} ms after the first utterance \
         ends (max {}); machine decided p50 {m50} ms after answer, {ms50} ms after speech start \
         (max {}); beeps located {} (max error {max_beep_err} ms), missed {beeps_missed:?}, \
         false {false_beeps:?}",
        accuracy * 100.0,
        human_after_word.last().unwrap(),
        machine_after_answer.last().unwrap(),
        beep_errors.len(),
    );
    println!("beep errors (ms): {beep_errors:?}");
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    assert!(h50 <= 1500, "human p50 {h50} ms");
    assert!(m50 <= 3000, "machine p50 {m50} ms");
    assert!(beeps_missed.is_empty(), "missed beeps {beeps_missed:?}");
    assert!(false_beeps.is_empty(), "false beeps {false_beeps:?}");
    assert!(max_beep_err <= 100, "beep error {beep_errors:?}");
}

/// The same set twice gives the same verdicts at the same times (no hidden state, no clock).
#[test]
fn amd_set_is_deterministic() {
    for l in labels().iter().step_by(7) {
        let pcm = load(&l.file);
        let (a, b) = (run(&pcm), run(&pcm));
        assert_eq!(
            (a.verdict, a.at_ms, a.beep_ms, a.ready_ms),
            (b.verdict, b.at_ms, b.beep_ms, b.ready_ms),
            "{}",
            l.file
        );
    }
}

/// A call's first frames are often digital silence (no packet yet): 100 ms of it before every
/// file must not change any verdict (line noise after it is not voice).
#[test]
fn leading_digital_silence_changes_no_verdict() {
    for l in labels() {
        let pcm = load(&l.file);
        let mut padded = vec![0i16; 100 * 8];
        padded.extend_from_slice(&pcm);
        let (a, b) = (run(&pcm), run(&padded));
        assert_eq!(a.verdict, b.verdict, "{}", l.file);
    }
}

/// The config's durations are honoured: a longer `after_greeting_silence` decides a human later.
#[test]
fn after_greeting_silence_moves_the_human_verdict() {
    let pcm = load("h01_hello.wav");
    let decide = |after: u64| {
        let t0 = Instant::now();
        let mut amd = Amd::new(AmdConfig {
            after_greeting_silence: Duration::from_millis(after),
            ..AmdConfig::default()
        });
        for (i, f) in pcm.chunks_exact(FRAME_SAMPLES).enumerate() {
            amd.push_frame(t0 + FRAME * i as u32, f);
        }
        let (v, _, at) = amd.verdict().unwrap();
        (v, ms(t0, at))
    };
    let (v1, t1) = decide(800);
    let (v2, t2) = decide(1200);
    assert_eq!((v1, v2), (Verdict::Human, Verdict::Human));
    assert_eq!(t2 - t1, 400);
}
