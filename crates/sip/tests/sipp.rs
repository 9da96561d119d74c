//! Interop with SIPp (Debian `sip-tester`) on loopback: SIPp's built-in `uac` against the example
//! UAS over UDP and TCP, the example UAC against SIPp UAS scenarios (407/401 digest challenge,
//! re-INVITE and far-end BYE), CANCEL during ringing, re-INVITE and Record-Route echo (a call as
//! if through record-routing proxies) against the example UAS.
//!
//! Skipped with a message when `sipp` is not on PATH (CI installs it). The examples are built once
//! with `cargo build -p trunkline-sip --examples` and run from `target/<profile>/examples/`.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // real processes and sockets: this test is I/O, not sans-IO

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use md5::{Digest, Md5};

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");

fn have_sipp() -> bool {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!(
            "SKIPPED: `sipp` is not on PATH (install Debian `sip-tester`; CI's .ci/run does)"
        );
    } else {
        // Build the examples before any peer starts its clock (SIPp runs with -timeout).
        examples_dir();
    }
    found
}

/// `target/<profile>/examples`, after building the examples once.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/sipp-<hash>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "trunkline-sip", "--examples"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --examples");
        assert!(status.success(), "building the examples failed");
        profile_dir.join("examples")
    })
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && port < 60000 {
            return port;
        }
    }
}

/// Waits (up to 10 s) until some process has bound `port` on loopback (UDP, or a TCP listener when
/// `tcp`). Reads /proc/net so the check never touches the port; falls back to a bind probe elsewhere.
fn wait_bound(port: u16, tcp: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if is_bound(port, tcp) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing bound port {port} within 10 s");
}

fn is_bound(port: u16, tcp: bool) -> bool {
    let (files, listen_state) = if tcp {
        (["/proc/net/tcp", "/proc/net/tcp6"], Some("0A"))
    } else {
        (["/proc/net/udp", "/proc/net/udp6"], None)
    };
    let needle = format!(":{port:04X}");
    let mut readable = false;
    for f in files {
        let Ok(table) = std::fs::read_to_string(f) else {
            continue;
        };
        readable = true;
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 3
                && cols[1].ends_with(&needle)
                && listen_state.is_none_or(|st| cols[3] == st)
            {
                return true;
            }
        }
    }
    if readable {
        return false;
    }
    if tcp {
        TcpListener::bind(("127.0.0.1", port)).is_err()
    } else {
        UdpSocket::bind(("127.0.0.1", port)).is_err()
    }
}

/// Kills the child (by its own handle) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_uas(port: u16, extra: &[&str]) -> Guard {
    let mut cmd = Command::new(examples_dir().join("uas"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("spawn uas example");
    wait_bound(port, extra.contains(&"tcp"));
    Guard(child)
}

/// Runs SIPp to completion and returns (exit status, stdout, stderr).
fn sipp(args: &[String]) -> Output {
    Command::new("sipp")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sipp")
}

fn base_args(local_port: u16) -> Vec<String> {
    vec![
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        local_port.to_string(),
        "-mp".into(),
        free_port().to_string(),
        "-nostdin".into(),
        "-timeout".into(),
        "60s".into(),
    ]
}

/// The cumulative count on SIPp's final-screen line `label` (e.g. "Successful call").
fn sipp_count(stdout: &str, label: &str) -> Option<u64> {
    stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|c| c.trim().parse().ok())
}

fn assert_sipp_ok(out: &Output, calls: u64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        sipp_count(&stdout, "Successful call"),
        Some(calls),
        "successful calls\n{stdout}\n{stderr}"
    );
    assert_eq!(
        sipp_count(&stdout, "Failed call"),
        Some(0),
        "failed calls\n{stdout}\n{stderr}"
    );
    assert!(
        out.status.success(),
        "sipp exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
}

fn builtin_uac_against_example_uas(transport: &str, calls: u64) {
    let port = free_port();
    let extra: &[&str] = if transport == "t1" {
        &["--transport", "tcp"]
    } else {
        &[]
    };
    let _uas = start_uas(port, extra);
    let mut args = vec!["-sn".into(), "uac".into(), format!("127.0.0.1:{port}")];
    args.extend(base_args(free_port()));
    args.extend(["-t".into(), transport.into()]);
    args.extend([
        "-m".into(),
        calls.to_string(),
        "-r".into(),
        "200".into(),
        "-rp".into(),
        "1000".into(),
    ]);
    let out = sipp(&args);
    assert_sipp_ok(&out, calls);
}

#[test]
fn sipp_builtin_uac_200_calls_over_udp_all_succeed() {
    if !have_sipp() {
        return;
    }
    builtin_uac_against_example_uas("u1", 200);
}

#[test]
fn sipp_builtin_uac_200_calls_over_tcp_all_succeed() {
    if !have_sipp() {
        return;
    }
    builtin_uac_against_example_uas("t1", 200);
}

#[test]
fn sipp_cancel_during_ringing_gets_200_then_487() {
    if !have_sipp() {
        return;
    }
    for (transport, flag) in [("u1", None), ("t1", Some("tcp"))] {
        let port = free_port();
        let mut extra = vec!["--ring-ms", "5000"];
        if let Some(f) = flag {
            extra.extend(["--transport", f]);
        }
        let _uas = start_uas(port, &extra);
        let mut args = vec![
            "-sf".into(),
            format!("{SCENARIOS}/uac_cancel.xml"),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(base_args(free_port()));
        args.extend(["-t".into(), transport.into(), "-m".into(), "3".into()]);
        assert_sipp_ok(&sipp(&args), 3);
    }
}

#[test]
fn sipp_options_ping_is_answered_with_allow_accept_supported() {
    if !have_sipp() {
        return;
    }
    let port = free_port();
    let _uas = start_uas(port, &[]);
    let mut args = vec![
        "-sf".into(),
        format!("{SCENARIOS}/uac_options.xml"),
        format!("127.0.0.1:{port}"),
    ];
    args.extend(base_args(free_port()));
    args.extend(["-m".into(), "20".into(), "-r".into(), "50".into()]);
    assert_sipp_ok(&sipp(&args), 20);
}

#[test]
fn sipp_reinvite_hold_and_unhold_mid_call_against_example_uas() {
    if !have_sipp() {
        return;
    }
    for (transport, flag) in [("u1", None), ("t1", Some("tcp"))] {
        let port = free_port();
        let extra: Vec<&str> = flag.map(|f| vec!["--transport", f]).unwrap_or_default();
        let _uas = start_uas(port, &extra);
        let mut args = vec![
            "-sf".into(),
            format!("{SCENARIOS}/uac_reinvite.xml"),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(base_args(free_port()));
        args.extend(["-t".into(), transport.into(), "-m".into(), "3".into()]);
        assert_sipp_ok(&sipp(&args), 3);
    }
}

#[test]
fn sipp_through_a_record_routing_proxy_gets_its_record_route_back_in_18x_and_200() {
    // RFC 3261 §12.1.1, checked by SIPp (not by our own parser): the INVITE carries two
    // Record-Route lines (one with two values); the 180 and the 200 must echo them verbatim and
    // in order, the 100 none; ACK and BYE then carry SIPp's route set.
    if !have_sipp() {
        return;
    }
    for (transport, flag) in [("u1", None), ("t1", Some("tcp"))] {
        let port = free_port();
        let extra: Vec<&str> = flag.map(|f| vec!["--transport", f]).unwrap_or_default();
        let _uas = start_uas(port, &extra);
        let mut args = vec![
            "-sf".into(),
            format!("{SCENARIOS}/uac_record_route.xml"),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(base_args(free_port()));
        args.extend(["-t".into(), transport.into(), "-m".into(), "3".into()]);
        assert_sipp_ok(&sipp(&args), 3);
    }
}

/// Starts a one-call SIPp UAS scenario in the background and returns it with its port.
fn spawn_sipp_uas(scenario: &str, transport: &str, message_log: Option<&Path>) -> (Child, u16) {
    let port = free_port();
    let mut args = vec!["-sf".into(), format!("{SCENARIOS}/{scenario}")];
    args.extend(base_args(port));
    args.extend(["-t".into(), transport.into(), "-m".into(), "1".into()]);
    if let Some(log) = message_log {
        args.extend([
            "-trace_msg".into(),
            "-message_file".into(),
            log.display().to_string(),
        ]);
    }
    // Output to a file, not a pipe nobody drains while the call runs (SIPp would block on a full pipe).
    let out = std::fs::File::create(sipp_output(port)).expect("sipp output file");
    let child = Command::new("sipp")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp uas");
    wait_bound(port, transport == "t1");
    (child, port)
}

/// Where the background SIPp listening on `port` writes its screen.
fn sipp_output(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("trunkline-sipp-{}-{port}.out", std::process::id()))
}

fn run_uac(args: &[&str]) -> Output {
    Command::new(examples_dir().join("uac"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run uac example")
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn auth_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let k = k.trim().trim_start_matches("Digest").trim();
        (k == name).then(|| v.trim().trim_matches('"'))
    })
}

fn uac_through_407(transport_flag: &str, sipp_transport: &str) {
    let dir = std::env::temp_dir().join(format!(
        "trunkline-sipp-407-{}-{sipp_transport}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let log = dir.join("messages.log");
    let (child, port) = spawn_sipp_uas("uas_auth_407.xml", sipp_transport, Some(&log));
    let sipp_guard = Guard(child);
    let target = format!("sip:+15551234567@127.0.0.1:{port}");
    let out = run_uac(&[
        "--target",
        &target,
        "--user",
        "alice",
        "--password",
        "s3cret",
        "--hold",
        "0.3",
        "--transport",
        transport_flag,
        "--timeout",
        "20",
    ]);
    let uac_stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "uac failed: {uac_stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = sipp_guard;
    let status = child.0.wait().expect("sipp uas exit");
    let stdout = std::fs::read_to_string(sipp_output(port)).unwrap_or_default();
    assert!(status.success(), "sipp uas failed:\n{stdout}");
    assert_eq!(sipp_count(&stdout, "Successful call"), Some(1), "{stdout}");

    // Recompute the digest SIPp received (RFC 2617 §3.2.2.1 with qop=auth) independently.
    let trace = std::fs::read_to_string(&log).expect("sipp message log");
    let header = trace
        .lines()
        .find_map(|l| l.strip_prefix("Proxy-Authorization:"))
        .expect("a Proxy-Authorization header reached SIPp")
        .trim();
    let p = |n| auth_param(header, n).unwrap_or_else(|| panic!("{n} missing in {header}"));
    assert_eq!(p("username"), "alice");
    assert_eq!(p("realm"), "sip.twilio.com");
    assert_eq!(p("opaque"), "0pa9ue");
    assert_eq!(p("qop"), "auth");
    assert_eq!(p("nc"), "00000001");
    let ha1 = md5_hex("alice:sip.twilio.com:s3cret");
    let ha2 = md5_hex(&format!("INVITE:{}", p("uri")));
    let expected = md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        p("nonce"),
        p("nc"),
        p("cnonce")
    ));
    assert_eq!(p("response"), expected, "digest response");
    // The retry is a new transaction with CSeq 2 and the same Call-ID/From tag (RFC 3261 §22.2).
    let invites: Vec<&str> = trace.split("\nINVITE ").skip(1).collect();
    assert_eq!(
        invites.len(),
        2,
        "one challenged and one authenticated INVITE"
    );
    let field = |msg: &str, name: &str| -> String {
        msg.lines()
            .find(|l| l.starts_with(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(field(invites[0], "Call-ID:"), field(invites[1], "Call-ID:"));
    assert_eq!(field(invites[0], "From:"), field(invites[1], "From:"));
    assert_eq!(field(invites[0], "CSeq:"), "CSeq: 1 INVITE");
    assert_eq!(field(invites[1], "CSeq:"), "CSeq: 2 INVITE");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_uac_answers_a_407_challenge_and_completes_the_call_over_udp() {
    if !have_sipp() {
        return;
    }
    uac_through_407("udp", "u1");
}

#[test]
fn example_uac_answers_a_407_challenge_and_completes_the_call_over_tcp() {
    if !have_sipp() {
        return;
    }
    uac_through_407("tcp", "t1");
}

#[test]
fn example_uac_digest_is_verified_by_sipp_on_a_401_challenge() {
    if !have_sipp() {
        return;
    }
    let (child, port) = spawn_sipp_uas("uas_auth_401.xml", "u1", None);
    let mut g = Guard(child);
    let target = format!("sip:bob@127.0.0.1:{port}");
    let out = run_uac(&[
        "--target",
        &target,
        "--user",
        "alice",
        "--password",
        "s3cret",
        "--hold",
        "0.2",
        "--timeout",
        "20",
    ]);
    assert!(
        out.status.success(),
        "uac: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        g.0.wait().expect("sipp").success(),
        "SIPp's verifyauth rejected our digest or the call failed"
    );
}

#[test]
fn example_uac_with_a_wrong_password_exits_nonzero() {
    if !have_sipp() {
        return;
    }
    let (child, port) = spawn_sipp_uas("uas_auth_401.xml", "u1", None);
    let _g = Guard(child);
    let target = format!("sip:bob@127.0.0.1:{port}");
    let out = run_uac(&[
        "--target",
        &target,
        "--user",
        "alice",
        "--password",
        "wrong",
        "--hold",
        "0.2",
        "--timeout",
        "10",
    ]);
    assert!(
        !out.status.success(),
        "a 403 must not count as a clean call"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_uac_answers_a_mid_call_reinvite_and_the_far_end_bye() {
    if !have_sipp() {
        return;
    }
    for (flag, t) in [("udp", "u1"), ("tcp", "t1")] {
        let (child, port) = spawn_sipp_uas("uas_reinvite_bye.xml", t, None);
        let mut g = Guard(child);
        let target = format!("sip:+15551234567@127.0.0.1:{port}");
        let started = std::time::Instant::now();
        // --hold 30: the call must end through SIPp's BYE long before that.
        let out = run_uac(&[
            "--target",
            &target,
            "--hold",
            "30",
            "--transport",
            flag,
            "--timeout",
            "25",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "uac over {flag}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("INVITE in dialog → 200"), "{stdout}");
        assert!(stdout.contains("RemoteBye"), "{stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "far-end BYE ended the call"
        );
        assert!(
            g.0.wait().expect("sipp").success(),
            "SIPp scenario failed over {flag}"
        );
    }
}
