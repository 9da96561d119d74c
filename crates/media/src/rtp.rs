//! Zero-copy RTP header parsing and serialisation (RFC 3550 §5.1, §5.3.1 header extension,
//! padding), plus RTP/RTCP demultiplexing (RFC 5761 §4).
//!
//! Parsing borrows the payload from the input; writing goes into a caller-provided buffer, so the
//! hot path allocates nothing.

use thiserror::Error;

/// RTP fixed header length.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the fixed header or than what the header announces.
    #[error("packet too short")]
    TooShort,
    /// Version field is not 2.
    #[error("rtp version is not 2")]
    BadVersion,
    /// Padding count is zero or larger than the payload.
    #[error("invalid padding")]
    BadPadding,
    /// Output buffer too small.
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// The fields of an RTP header that the media path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader {
    /// Marker bit (talkspurt start for audio, RFC 3551 §4.1).
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A parsed RTP packet borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The header.
    pub header: RtpHeader,
    /// The payload, without CSRCs, header extension or padding.
    pub payload: &'a [u8],
}

/// True when a datagram looks like RTCP rather than RTP (RFC 5761 §4: second byte 192..=223).
#[inline]
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 8 && buf[0] >> 6 == 2 && (192..=223).contains(&buf[1])
}

/// Parse an RTP packet (RFC 3550 §5.1), without copying.
pub fn parse_rtp(buf: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort);
    }
    let b0 = buf[0];
    if b0 >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let cc = (b0 & 0x0F) as usize;
    let b1 = buf[1];
    let header = RtpHeader {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    };
    let mut start = RTP_HEADER_LEN + 4 * cc;
    if buf.len() < start {
        return Err(RtpError::TooShort);
    }
    if extension {
        if buf.len() < start + 4 {
            return Err(RtpError::TooShort);
        }
        let words = u16::from_be_bytes([buf[start + 2], buf[start + 3]]) as usize;
        start += 4 + 4 * words;
        if buf.len() < start {
            return Err(RtpError::TooShort);
        }
    }
    let mut end = buf.len();
    if padding {
        let pad = buf[end - 1] as usize;
        if pad == 0 || pad > end - start {
            return Err(RtpError::BadPadding);
        }
        end -= pad;
    }
    Ok(RtpPacket {
        header,
        payload: &buf[start..end],
    })
}

/// Write a 12-byte header (no CSRC, no extension) and `payload` into `out`; returns the length.
#[inline]
pub fn write_rtp(header: &RtpHeader, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
    let len = RTP_HEADER_LEN + payload.len();
    if out.len() < len {
        return Err(RtpError::BufferTooSmall);
    }
    out[0] = 0x80;
    out[1] = (header.payload_type & 0x7F) | if header.marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&header.sequence.to_be_bytes());
    out[4..8].copy_from_slice(&header.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&header.ssrc.to_be_bytes());
    out[RTP_HEADER_LEN..len].copy_from_slice(payload);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x1234_5678,
        };
        let mut buf = [0u8; 64];
        let n = write_rtp(&h, &[1, 2, 3], &mut buf).unwrap();
        let p = parse_rtp(&buf[..n]).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.payload, &[1, 2, 3]);
        assert!(!is_rtcp(&buf[..n]));
    }

    #[test]
    fn csrc_extension_padding_are_skipped() {
        let mut b = vec![0xB1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 7, 7, 7, 7]); // extension, one word
        b.extend_from_slice(&[0xAA, 0xBB, 0, 2]); // payload + 2 bytes padding
        let p = parse_rtp(&b).unwrap();
        assert_eq!(p.payload, &[0xAA, 0xBB]);
        let n = b.len();
        b[n - 1] = 200;
        assert_eq!(parse_rtp(&b), Err(RtpError::BadPadding));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_rtp(&[0x80; 5]), Err(RtpError::TooShort));
        assert_eq!(
            parse_rtp(b"INVITE sip:x SIP/2.0"),
            Err(RtpError::BadVersion)
        );
        assert_eq!(parse_rtp(&[0x8F; 12]), Err(RtpError::TooShort));
    }

    #[test]
    fn agrees_with_webrtc_rtp_crate() {
        use webrtc_util::marshal::Unmarshal;
        let mut b = vec![0x90, 0xE0, 0x12, 0x34, 0, 0, 1, 0, 0xCA, 0xFE, 0xBA, 0xBE];
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
        b.extend_from_slice(&[5; 160]);
        let ours = parse_rtp(&b).unwrap();
        let theirs = rtp::packet::Packet::unmarshal(&mut &b[..]).unwrap();
        assert_eq!(ours.header.sequence, theirs.header.sequence_number);
        assert_eq!(ours.header.payload_type, theirs.header.payload_type);
        assert_eq!(ours.header.marker, theirs.header.marker);
        assert_eq!(ours.header.timestamp, theirs.header.timestamp);
        assert_eq!(ours.payload, &theirs.payload[..]);
    }
}
