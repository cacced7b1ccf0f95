#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/pipeline_fuzz.cpp: wire messages (docs/pipeline.md "Wire format", version 2)
and shard manifests (docs/manifest.md), each after the byte that picks the fuzz target (0 message, 1 manifest).
Usage: python3 fuzz/make_pipeline_seeds.py fuzz/corpus/pipeline
"""
import json
import os
import struct
import sys

WIRE_VERSION = 2
HELLO, INFO, FORWARD, OUTPUT, ERROR, RESET, PING, PONG, DONE = range(1, 10)


def message(mtype, request_id, body=b""):
    return struct.pack("<BBQ", WIRE_VERSION, mtype, request_id) + body


def info(stage, begin, end, layers, n_embd=64, n_vocab=512, n_ctx=512, slots=4):
    return struct.pack("<8I", stage, begin, end, layers, n_embd, n_vocab, n_ctx, slots)


def forward(segments, tokens=(), values=()):
    out = struct.pack("<I", len(segments))
    for slot, pos0, n, logits in segments:
        out += struct.pack("<IIIB", slot, pos0, n, logits)
    out += struct.pack("<Q", len(tokens)) + b"".join(struct.pack("<i", t) for t in tokens)
    out += struct.pack("<Q", len(values)) + b"".join(struct.pack("<f", v) for v in values)
    return out


def manifest(stages, front=False):
    policy = {"allowed_types": ["sim"], "allow_simulated": True}
    m = {"format": "veil-manifest/1", "model_id": "stories260K", "model_version": 3,
         "sealed_model_sha256": "ab" * 32, "n_layers": stages[-1][1],
         "stages": [{"index": i, "layer_begin": b, "layer_end": e, "weights_sha256": "%02x" % i * 32,
                     "endpoint": "127.0.0.1:%d" % (7400 + i), "policy": policy}
                    for i, (b, e) in enumerate(stages)]}
    if front:
        m["front_policy"] = policy
    return json.dumps(m).encode()


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {
        "hello_front": message(HELLO, 1, info(1, 2, 5, 5) + struct.pack("<BI", 1, 60000)),
        "info": message(INFO, 2, info(0, 0, 2, 5)),
        "forward_tokens": message(FORWARD, 3, forward([(0, 0, 3, 1), (1, 7, 1, 0)], tokens=[1, 2, 3, 4])),
        "forward_hidden": message(FORWARD, 4, forward([(2, 4, 2, 1)], values=[0.5, -1.0, 2.0, 0.25])),
        "output_logits": message(OUTPUT, 5, struct.pack("<BII", 2, 2, 3) + struct.pack("<6f", *range(6))),
        "error": message(ERROR, 6, struct.pack("<IBI", 1, 3, 14) + b"slot 3 is busy"),
        "reset": message(RESET, 7, struct.pack("<I", 2)),
        "ping": message(PING, 8),
        "done": message(DONE, 9),
    }
    for name, body in seeds.items():
        with open(os.path.join(out, "message_" + name), "wb") as f:
            f.write(b"\x00" + body)
    for name, body in {"one_stage": manifest([(0, 5)]), "two_stages": manifest([(0, 3), (3, 5)]),
                       "three_stages_front": manifest([(0, 2), (2, 4), (4, 5)], front=True)}.items():
        with open(os.path.join(out, "manifest_" + name), "wb") as f:
            f.write(b"\x01" + body)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus/pipeline")
