//! SDP offer/answer for audio (RFC 4566, RFC 3264, RFC 3605, RFC 4568) with the SDP Twilio sends
//! (TWILIO.md items 10, 11, 23), hold forms, a non-101 telephone-event PT and garbage.
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::net::{IpAddr, SocketAddr};

use trunkline_sip::sdp::{
    Codec, Crypto, Direction, MediaParams, NoMatch, SdpError, SessionDescription, answer,
    build_offer, negotiated,
};

const TWILIO_OFFER: &str = "v=0\r\n\
o=root 1163416599 1163416599 IN IP4 168.86.138.121\r\n\
s=Twilio Media Gateway\r\n\
c=IN IP4 168.86.138.121\r\n\
t=0 0\r\n\
m=audio 14230 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=maxptime:20\r\n\
a=sendrecv\r\n";

fn ours() -> MediaParams {
    MediaParams::g711("203.0.113.5".parse().unwrap(), 40000, 42)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn twilio_offer_parses_and_is_answered_with_pcmu_and_its_dtmf_pt() {
    let offer = SessionDescription::parse(TWILIO_OFFER).unwrap();
    assert_eq!(offer.session_name, "Twilio Media Gateway");
    assert_eq!(offer.origin.username, "root");
    let m = offer.active_audio().unwrap();
    assert_eq!((m.ptime, m.maxptime), (Some(20), Some(20)));
    assert_eq!(m.telephone_event_pt(), Some(101));
    assert_eq!(m.fmtp(101), Some("0-16"));

    let a = answer(&offer, &ours()).unwrap();
    let n = &a.negotiated;
    assert_eq!(n.codec, Codec::pcmu());
    assert_eq!(n.dtmf_pt, Some(101));
    assert_eq!(n.ptime, 20);
    assert_eq!(n.direction, Direction::SendRecv);
    assert_eq!(n.remote_rtp, Some(sa("168.86.138.121:14230")));
    assert_eq!(n.remote_rtcp, Some(sa("168.86.138.121:14231")));
    assert_eq!(n.local_crypto, None);

    let text = a.sdp.to_string();
    assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "{text}");
    assert!(text.contains("c=IN IP4 203.0.113.5\r\n"));
    assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"));
    assert!(text.contains("a=sendrecv\r\n"));
    // and what we emit parses back to the same thing
    assert_eq!(SessionDescription::parse(&text).unwrap(), a.sdp);
}

#[test]
fn codec_choice_follows_offer_order_not_ours() {
    let offer =
        SessionDescription::parse(&TWILIO_OFFER.replace("RTP/AVP 0 8 101", "RTP/AVP 8 0 101"))
            .unwrap();
    let mut p = ours();
    p.codecs = vec![Codec::pcmu(), Codec::pcma()];
    assert_eq!(answer(&offer, &p).unwrap().negotiated.codec, Codec::pcma());
    // we support only PCMU: skip PCMA
    p.codecs = vec![Codec::pcmu()];
    assert_eq!(answer(&offer, &p).unwrap().negotiated.codec, Codec::pcmu());
}

#[test]
fn sip_dtmf2_style_pt_96_is_kept() {
    let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 8000 RTP/AVP 18 0 96\r\na=rtpmap:18 G729/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n";
    let a = answer(&SessionDescription::parse(offer).unwrap(), &ours()).unwrap();
    assert_eq!(a.negotiated.codec, Codec::pcmu(), "G729 skipped");
    assert_eq!(a.negotiated.dtmf_pt, Some(96));
    assert_eq!(a.negotiated.ptime, 20, "default when no a=ptime");
    let text = a.sdp.to_string();
    assert!(
        text.contains("RTP/AVP 0 96\r\n") && text.contains("a=fmtp:96 0-15\r\n"),
        "{text}"
    );
    // without DTMF on our side, telephone-event is not answered
    let mut p = ours();
    p.dtmf_pt = None;
    let a = answer(&SessionDescription::parse(offer).unwrap(), &p).unwrap();
    assert_eq!(a.negotiated.dtmf_pt, None);
    assert!(!a.sdp.to_string().contains("telephone-event"));
}

#[test]
fn hold_offers_are_mirrored() {
    // RFC 3264 hold: sendonly → we answer recvonly and do not send
    let hold =
        SessionDescription::parse(&TWILIO_OFFER.replace("a=sendrecv", "a=sendonly")).unwrap();
    let a = answer(&hold, &ours()).unwrap();
    assert_eq!(a.negotiated.direction, Direction::RecvOnly);
    assert!(a.sdp.to_string().contains("a=recvonly\r\n"));
    // session-level direction applies when the media has none
    let sess = TWILIO_OFFER
        .replace("a=sendrecv\r\n", "")
        .replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n");
    let a = answer(&SessionDescription::parse(&sess).unwrap(), &ours()).unwrap();
    assert_eq!(a.negotiated.direction, Direction::Inactive);
    // RFC 2543 hold: c=0.0.0.0 → no address to send to, we only receive
    let old = SessionDescription::parse(
        &TWILIO_OFFER.replace("c=IN IP4 168.86.138.121", "c=IN IP4 0.0.0.0"),
    )
    .unwrap();
    let a = answer(&old, &ours()).unwrap();
    assert_eq!(a.negotiated.remote_rtp, None);
    assert_eq!(a.negotiated.direction, Direction::RecvOnly);
    // recvonly offer → we send only
    let r = SessionDescription::parse(&TWILIO_OFFER.replace("a=sendrecv", "a=recvonly")).unwrap();
    assert_eq!(
        answer(&r, &ours()).unwrap().negotiated.direction,
        Direction::SendOnly
    );
    // we put them on hold: our wish intersects
    let mut p = ours();
    p.direction = Direction::SendOnly;
    let off = SessionDescription::parse(TWILIO_OFFER).unwrap();
    assert_eq!(
        answer(&off, &p).unwrap().negotiated.direction,
        Direction::SendOnly
    );
}

#[test]
fn media_level_connection_overrides_session_level_and_ipv6_works() {
    let offer = TWILIO_OFFER.replace(
        "a=ptime:20\r\n",
        "c=IN IP6 2001:db8::7\r\na=ptime:20\r\na=rtcp:14999 IN IP4 192.0.2.9\r\n",
    );
    let a = answer(&SessionDescription::parse(&offer).unwrap(), &ours()).unwrap();
    assert_eq!(a.negotiated.remote_rtp, Some(sa("[2001:db8::7]:14230")));
    assert_eq!(a.negotiated.remote_rtcp, Some(sa("192.0.2.9:14999")));
    let v6 = MediaParams::g711("2001:db8::1".parse().unwrap(), 4000, 1);
    let text = build_offer(&v6).to_string();
    assert!(text.contains("c=IN IP6 2001:db8::1\r\n") && text.contains("IN IP6 2001:db8::1\r\ns="));
}

#[test]
fn other_streams_are_rejected_with_port_zero_and_nothing_usable_is_488() {
    let offer = TWILIO_OFFER.replace("m=audio", "m=video 5000 RTP/AVP 31\r\nm=audio");
    let a = answer(&SessionDescription::parse(&offer).unwrap(), &ours()).unwrap();
    assert_eq!(a.sdp.media.len(), 2, "same number of m-lines");
    assert_eq!(
        (a.sdp.media[0].media.as_str(), a.sdp.media[0].port),
        ("video", 0)
    );
    assert_eq!(a.sdp.media[1].port, 40000);
    assert!(a.sdp.to_string().contains("m=video 0 RTP/AVP 31\r\n"));

    let g729 = TWILIO_OFFER
        .replace("RTP/AVP 0 8 101", "RTP/AVP 18 101")
        .replace(
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
            "a=rtpmap:18 G729/8000\r\n",
        );
    assert_eq!(
        answer(&SessionDescription::parse(&g729).unwrap(), &ours()),
        Err(NoMatch)
    );
    let disabled = TWILIO_OFFER.replace("m=audio 14230", "m=audio 0");
    assert_eq!(
        answer(&SessionDescription::parse(&disabled).unwrap(), &ours()),
        Err(NoMatch)
    );
}

const KEY_B64: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

#[test]
fn sdes_crypto_is_parsed_answered_and_emitted() {
    let offer = TWILIO_OFFER.replace("RTP/AVP", "RTP/SAVP").replace(
        "a=sendrecv\r\n",
        &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^31\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}\r\na=sendrecv\r\n"),
    );
    let offer = SessionDescription::parse(&offer).unwrap();
    let c = &offer.media[0].crypto[0];
    assert_eq!((c.tag, c.suite.as_str()), (1, "AES_CM_128_HMAC_SHA1_80"));
    assert_eq!(c.key_salt().unwrap().len(), 30);
    assert!(c.is_usable());

    // plain-RTP-only UA cannot accept SAVP
    assert_eq!(answer(&offer, &ours()), Err(NoMatch));

    let mut p = ours();
    let our_key: Vec<u8> = (0..30).collect();
    p.crypto = Some(Crypto::new(1, "AES_CM_128_HMAC_SHA1_32", &our_key));
    let a = answer(&offer, &p).unwrap();
    let n = &a.negotiated;
    assert_eq!(
        n.remote_crypto.as_ref().unwrap().tag,
        2,
        "matches our preferred suite"
    );
    assert_eq!(
        n.local_crypto.as_ref().unwrap().key_salt().unwrap(),
        our_key
    );
    let text = a.sdp.to_string();
    assert!(text.contains("m=audio 40000 RTP/SAVP 0 101\r\n"));
    assert!(
        text.contains(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n"
        ),
        "{text}"
    );

    // MKI is not supported: such a line is skipped
    let mki = SessionDescription::parse(&format!(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 8000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20|1:4\r\n"
    ))
    .unwrap();
    assert!(mki.media[0].crypto[0].has_mki());
    assert_eq!(answer(&mki, &p), Err(NoMatch));
}

#[test]
fn offer_build_reoffer_and_negotiated_on_the_offerer_side() {
    let mut p = ours();
    p.rtcp_port = Some(40005);
    p.maxptime = Some(40);
    let mut offer = build_offer(&p);
    let text = offer.to_string();
    assert!(text.starts_with("v=0\r\no=trunkline 42 1 IN IP4 203.0.113.5\r\ns=trunkline\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"), "{text}");
    assert!(text.contains("m=audio 40000 RTP/AVP 0 8 101\r\n"));
    assert!(text.contains("a=ptime:20\r\na=maxptime:40\r\na=rtcp:40005\r\n"));
    assert_eq!(SessionDescription::parse(&text).unwrap(), offer);

    // Twilio-like answer: picks PCMA
    let ans = "v=0\r\no=root 1 1 IN IP4 168.86.138.121\r\ns=Twilio Media Gateway\r\nc=IN IP4 168.86.138.121\r\nt=0 0\r\n\
m=audio 17000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    let n = negotiated(&offer, &SessionDescription::parse(ans).unwrap()).unwrap();
    assert_eq!((n.codec.pt, n.dtmf_pt, n.ptime), (8, Some(101), 20));
    assert_eq!(n.remote_rtp, Some(sa("168.86.138.121:17000")));
    assert_eq!(n.direction, Direction::SendRecv);
    // an answer that rejects audio
    let rej = ans.replace("m=audio 17000", "m=audio 0");
    assert_eq!(
        negotiated(&offer, &SessionDescription::parse(&rej).unwrap()),
        Err(NoMatch)
    );
    // re-offer for hold: version +1, sendonly
    offer.bump_version();
    offer.media[0].direction = Some(Direction::SendOnly);
    assert!(offer.to_string().contains("o=trunkline 42 2 IN IP4"));
    let held = ans.replace("a=sendrecv", "a=recvonly");
    let n = negotiated(&offer, &SessionDescription::parse(&held).unwrap()).unwrap();
    assert_eq!(n.direction, Direction::SendOnly);
    // answer choosing a PT we never offered
    let wrong = ans
        .replace("RTP/AVP 8 101", "RTP/AVP 3")
        .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:3 GSM/8000");
    assert_eq!(
        negotiated(&offer, &SessionDescription::parse(&wrong).unwrap()),
        Err(NoMatch)
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert_eq!(SessionDescription::parse(""), Err(SdpError::BadVersion));
    assert_eq!(
        SessionDescription::parse("hello"),
        Err(SdpError::BadVersion)
    );
    assert_eq!(
        SessionDescription::parse("v=0\r\ns=-\r\n"),
        Err(SdpError::BadOrigin)
    );
    assert_eq!(
        SessionDescription::parse("v=0\r\no=x\r\n"),
        Err(SdpError::BadOrigin)
    );
    let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n";
    for (extra, err) in [
        ("m=audio\r\n", SdpError::BadMedia),
        ("m=audio 99999 RTP/AVP 0\r\n", SdpError::BadMedia),
        ("m=audio 1 RTP/AVP\r\n", SdpError::BadMedia),
        ("c=IN IP9 x\r\n", SdpError::BadConnection),
        (
            "m=audio 1 RTP/AVP 0\r\na=rtpmap:300 X/8000\r\n",
            SdpError::BadAttribute("rtpmap"),
        ),
        (
            "m=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
            SdpError::BadAttribute("rtpmap"),
        ),
        (
            "m=audio 1 RTP/AVP 0\r\na=ptime:abc\r\n",
            SdpError::BadAttribute("ptime"),
        ),
        (
            "m=audio 1 RTP/AVP 0\r\na=rtcp:\r\n",
            SdpError::BadAttribute("rtcp"),
        ),
        (
            "m=audio 1 RTP/AVP 0\r\na=crypto:1\r\n",
            SdpError::BadAttribute("crypto"),
        ),
        ("garbage\r\n", SdpError::BadLine(5)),
        ("é=1\r\n", SdpError::BadLine(5)),
    ] {
        assert_eq!(
            SessionDescription::parse(&format!("{base}{extra}")),
            Err(err),
            "{extra:?}"
        );
    }
    // unknown lines and attributes are tolerated and kept
    let sd = SessionDescription::parse(&format!(
        "{base}i=info\r\nm=audio 1 RTP/AVP 0\r\na=x-foo:bar\r\na=rtcp-mux\r\n"
    ))
    .unwrap();
    assert_eq!(sd.media[0].attributes.len(), 2);
    assert!(sd.to_string().contains("a=x-foo:bar\r\na=rtcp-mux\r\n"));
    // no connection anywhere: answered, but nowhere to send
    let a = answer(&sd, &ours()).unwrap();
    assert_eq!(a.negotiated.remote_rtp, None);
    let _ = IpAddr::from([0, 0, 0, 0]);
}

/// What we emit is read the same way by an independent SDP implementation (ezk-sdp-types).
#[test]
fn our_offer_and_answer_parse_in_ezk_sdp_types() {
    let mut p = ours();
    p.rtcp_port = Some(40003);
    p.crypto = Some(Crypto::new(1, "AES_CM_128_HMAC_SHA1_80", &[7u8; 30]));
    let offer = build_offer(&p);
    let ezk =
        ezk_sdp_types::SessionDescription::parse(&bytesstr::BytesStr::from(offer.to_string()))
            .unwrap();
    assert_eq!(ezk.origin.session_version.to_string(), "1");
    let m = &ezk.media_descriptions[0];
    assert_eq!(m.media.port, 40000);
    assert_eq!(m.media.fmts, [0, 8, 101]);
    assert_eq!(m.media.proto, ezk_sdp_types::TransportProtocol::RtpSavp);
    assert_eq!(m.rtcp.as_ref().unwrap().port, 40003);
    assert_eq!(m.crypto[0].tag, 1);
    assert_eq!(
        m.crypto[0].keys[0].key_and_salt.as_ref(),
        trunkline_sip::sdp::base64_encode(&[7u8; 30])
    );
    assert_eq!(
        m.rtpmap.iter().map(|r| r.payload).collect::<Vec<_>>(),
        [0, 8, 101]
    );
    assert_eq!(m.direction, ezk_sdp_types::Direction::SendRecv);

    let a = answer(&SessionDescription::parse(TWILIO_OFFER).unwrap(), &ours()).unwrap();
    let ezk =
        ezk_sdp_types::SessionDescription::parse(&bytesstr::BytesStr::from(a.sdp.to_string()))
            .unwrap();
    assert_eq!(ezk.media_descriptions[0].media.fmts, [0, 101]);
}
