#!/usr/bin/env python3
"""Write a pcap of an RTP stream carrying a G.711 µ-law (PCMU, payload type 0) sine tone.

Made for sipp's play_pcap_audio, which keeps the packets' timing and payload but rewrites the
addresses and ports, so the ones written here are placeholders. Each packet is one 20 ms
frame: Ethernet / IPv4 / UDP / RTP (12-byte header) / 160 µ-law bytes; the timestamps of the
pcap records advance by 20 ms, the RTP timestamp by 160, the sequence number by 1; the first
packet carries the marker bit.

    make_tone_pcap.py OUT.pcap [--seconds 5] [--freq 1000] [--level 0.3]

Only the Python standard library is used.
"""

import argparse
import math
import struct
import sys

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
PAYLOAD_TYPE = 0  # PCMU
LINKTYPE_ETHERNET = 1

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
SRC_IP = bytes([10, 0, 0, 1])
DST_IP = bytes([10, 0, 0, 2])
SRC_PORT = 6000
DST_PORT = 7000
SSRC = 0x1D0E5A17


def ulaw_encode(sample):
    """One signed 16-bit linear sample to a G.711 µ-law byte: the 14-bit magnitude (the two
    low bits dropped, clipped at 8159) plus the bias 33 gives a segment (its highest set bit)
    and four mantissa bits below it; the code is sent inverted."""
    value = sample >> 2
    sign = 0
    if value < 0:
        value, sign = -value, 0x80
    value = min(value, 8159) + 33
    segment = max(0, value.bit_length() - 6)
    code = 0x7F if segment > 7 else (segment << 4) | ((value >> (segment + 1)) & 0x0F)
    return ~(sign | code) & 0xFF


def ipv4_checksum(header):
    total = sum(struct.unpack("!10H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame_packet(seq, timestamp, payload, marker):
    rtp = struct.pack(
        "!BBHII",
        0x80,  # version 2, no padding, no extension, no CSRC
        (0x80 if marker else 0) | PAYLOAD_TYPE,
        seq & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        SSRC,
    ) + payload
    udp = struct.pack("!HHHH", SRC_PORT, DST_PORT, 8 + len(rtp), 0) + rtp
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,  # IPv4, 5-word header
            0,
            20 + len(udp),
            seq & 0xFFFF,  # identification
            0x4000,  # don't fragment
            64,  # TTL
            17,  # UDP
            0,  # checksum, filled below
            SRC_IP,
            DST_IP,
        )
    )
    struct.pack_into("!H", ip, 10, ipv4_checksum(bytes(ip)))
    return DST_MAC + SRC_MAC + b"\x08\x00" + bytes(ip) + udp


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="pcap file to write")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration (default 5)")
    parser.add_argument("--freq", type=float, default=1000.0, help="tone in Hz (default 1000)")
    parser.add_argument(
        "--level", type=float, default=0.3, help="peak amplitude, 0..1 of full scale (default 0.3)"
    )
    args = parser.parse_args()
    if args.seconds <= 0 or not 0 < args.level <= 1 or not 0 < args.freq < SAMPLE_RATE / 2:
        parser.error("need seconds > 0, 0 < level <= 1 and 0 < freq < 4000")

    frames = max(1, int(round(args.seconds * SAMPLE_RATE / FRAME_SAMPLES)))
    step = 2 * math.pi * args.freq / SAMPLE_RATE
    peak = args.level * 32767
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
    start_us = 1_700_000_000 * 1_000_000
    for i in range(frames):
        first = i * FRAME_SAMPLES
        payload = bytes(
            ulaw_encode(int(round(peak * math.sin(step * n))))
            for n in range(first, first + FRAME_SAMPLES)
        )
        packet = frame_packet(i, first, payload, marker=(i == 0))
        ts = start_us + i * 20_000
        out += struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(packet), len(packet))
        out += packet
    with open(args.out, "wb") as f:
        f.write(out)
    print(f"{args.out}: {frames} packets, {frames * 20 / 1000:.2f} s of {args.freq:g} Hz PCMU",
          file=sys.stderr)


if __name__ == "__main__":
    main()
