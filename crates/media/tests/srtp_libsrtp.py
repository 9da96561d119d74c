#!/usr/bin/env python3
"""libsrtp2 (through PyPI pylibsrtp, pinned in .ci/run) as the independent SRTP peer of
tests/srtp_libsrtp.rs.

Usage: srtp_libsrtp.py protect|unprotect PROFILE KEYHEX
  PROFILE: 80 (AES_CM_128_HMAC_SHA1_80) or 32 (AES_CM_128_HMAC_SHA1_32)
  KEYHEX:  the 30-byte SDES master key + salt, hex
stdin: one packet a line, "rtp HEX" or "rtcp HEX"; stdout: one line each, "ok HEX" (the
protected or unprotected packet) or "err MESSAGE" (libsrtp refused it).
"""
import sys

import pylibsrtp


def main() -> int:
    mode, profile, key_hex = sys.argv[1], sys.argv[2], sys.argv[3]
    profiles = {
        "80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        "32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    }
    ssrc_type = (
        pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        if mode == "protect"
        else pylibsrtp.Policy.SSRC_ANY_INBOUND
    )
    policy = pylibsrtp.Policy(
        key=bytes.fromhex(key_hex), ssrc_type=ssrc_type, srtp_profile=profiles[profile]
    )
    session = pylibsrtp.Session(policy=policy)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        kind, data = line.split(" ", 1)
        packet = bytes.fromhex(data)
        try:
            if mode == "protect":
                out = session.protect(packet) if kind == "rtp" else session.protect_rtcp(packet)
            else:
                out = (
                    session.unprotect(packet)
                    if kind == "rtp"
                    else session.unprotect_rtcp(packet)
                )
            print("ok " + out.hex())
        except pylibsrtp.Error as e:
            print("err " + str(e).replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
