#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/channel_handshake_fuzz.cpp (protocol version 2, docs/protocol.md).

The first byte of each seed picks the fuzz target (see LLVMFuzzerTestOneInput). Evidence and MACs are placeholders,
so a "drive" seed is refused at the first check bound to the fresh keys, as any fuzz input must be.
Usage: python3 fuzz/make_channel_handshake_seeds.py fuzz/corpus/channel_handshake
"""
import os
import struct
import sys

VERSION = 2
(CLIENT_HELLO, SERVER_HELLO, CLIENT_FINISH_ONEWAY, CLIENT_FINISH_MUTUAL, EVIDENCE, SERVER_EVIDENCE,
 SERVER_FINISHED, DRIVE) = range(8)


def hello(suite, mode):
    return struct.pack(">HHB3x", VERSION, suite, mode) + bytes(range(1, 33)) + bytes(range(33, 65))


def evidence(data, tee=1):
    return struct.pack(">HI", tee, len(data)) + data


def frame(ftype, body):
    return struct.pack(">IB", len(body), ftype) + body


def main(out):
    os.makedirs(out, exist_ok=True)
    mac = b"\x11" * 32
    echo = evidence(b"r" * 64)  # the fuzz attester's evidence is 64 bytes of report_data
    seeds = {
        "client_hello": bytes([CLIENT_HELLO]) + hello(1, 1),
        "client_hello_chacha_mutual": bytes([CLIENT_HELLO]) + hello(2, 2),
        "server_hello": bytes([SERVER_HELLO]) + hello(1, 1),
        "client_finish_oneway": bytes([CLIENT_FINISH_ONEWAY]) + mac,
        "client_finish_mutual": bytes([CLIENT_FINISH_MUTUAL]) + echo + mac,
        "evidence": bytes([EVIDENCE]) + evidence(b"quote", tee=7),
        "server_evidence": bytes([SERVER_EVIDENCE]) + echo,
        "server_finished": bytes([SERVER_FINISHED]) + mac,
        # drive: byte 1 bit 0 = play the server, bit 1 = mutual; then the peer's byte stream.
        "drive_client_oneway": bytes([DRIVE, 0]) + frame(2, hello(1, 1)) + frame(4, echo) + frame(5, mac),
        "drive_client_mutual": bytes([DRIVE, 2]) + frame(2, hello(1, 2)) + frame(4, echo) + frame(5, mac),
        "drive_server_oneway": bytes([DRIVE, 1]) + frame(1, hello(1, 1)) + frame(3, mac),
        "drive_server_mutual": bytes([DRIVE, 3]) + frame(1, hello(1, 2)) + frame(3, echo + mac),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/channel_handshake")
