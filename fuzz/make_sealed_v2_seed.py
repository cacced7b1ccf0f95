#!/usr/bin/env python3
# Writes fuzz/corpus/sealed_header/v2_four_parts: a format-2 sealed model built only from
# docs/sealed-format.md (independent of the C++ sealer), with a real header MAC and real AES-256-GCM
# chunks under the model key bytes(range(32)). tests/sealed checks that the C++ reader authenticates and
# decrypts it with that key and with a range key set, so the spec is precise enough to reimplement.
# Needs the Python 'cryptography' package (development only; the seed is committed).
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

K = bytes(range(32))
SALT = bytes([0x5A]) * 32
MODEL_ID = "synthetic-seed"
VERSION = 3
CHUNK_SIZE = 4096
PART_REST, PART_INPUT, PART_OUTPUT = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD


def extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def expand(prk, info, n=32):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def str16(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def part_key(p):
    prk = extract(b"veil-sealed-v2 part keys", K)
    return expand(prk, b"veil-sealed-v2 part" + b"\0" + str16(MODEL_ID) + struct.pack("<QI", VERSION, p))


def chunk_key(p):
    return expand(extract(SALT, part_key(p)), b"veil-sealed-v2 chunk key")


def part_of(name):
    if name.startswith("blk."):
        return int(name.split(".")[1])
    if name.startswith(("token_embd.", "pos_embd.")):
        return PART_INPUT
    if name.startswith(("output.", "output_norm.")):
        return PART_OUTPUT
    return PART_REST


plain = bytes((i * 7 + 3) & 0xFF for i in range(11364))
tensors = [("token_embd.weight", 4096, 1000), ("blk.0.attn_q.weight", 5120, 4096),
           ("blk.1.attn_q.weight", 9216, 2000), ("output.weight", 11264, 100)]
# Chunks start at 0 and at every tensor start, at most CHUNK_SIZE each.
starts = sorted({0} | {t[1] for t in tensors}) + [len(plain)]
chunks = []
for a, b in zip(starts, starts[1:]):
    while a < b:
        n = min(CHUNK_SIZE, b - a)
        chunks.append((a, n))
        a += n


def chunk_part(off):
    best = None
    for name, o, size in tensors:
        if size > 0 and o <= off and (best is None or o > best[1]):
            best = (name, o)
    return PART_REST if best is None else part_of(best[0])


key_id = expand(extract(b"", K), b"veil-sealed-v1 key id", 16)
layers = sorted({part_of(n) for n, _, _ in tensors if n.startswith("blk.")})
body = b""
body += str16(MODEL_ID) + str16("v3")
body += struct.pack("<I", len(tensors))
tensor_hash = {}
for name, o, size in tensors:
    tensor_hash[name] = hashlib.sha256(plain[o:o + size]).digest()
    body += str16(name) + struct.pack("<QQI", o, size, part_of(name) if name.startswith("blk.") else 0xFFFFFFFF)
    body += tensor_hash[name]
body += struct.pack("<I", len(layers))
for layer in layers:
    d = b"".join(str16(n) + tensor_hash[n] for n, _, _ in tensors if n.startswith(f"blk.{layer}."))
    body += struct.pack("<I", layer) + hashlib.sha256(d).digest()
body += struct.pack("<I", len(chunks)) + b"".join(struct.pack("<I", n) for _, n in chunks)
header_size = 120 + len(body) + 32
fixed = b"VEILSMDL" + struct.pack("<HHIII", 2, 1, header_size, CHUNK_SIZE, 0)
fixed += struct.pack("<QQ", len(plain), VERSION) + SALT + hashlib.sha256(plain).digest() + key_id
assert len(fixed) == 120
header = fixed + body
header_key = expand(extract(SALT, part_key(PART_REST)), b"veil-sealed-v2 header mac")
header += hmac.new(header_key, header, hashlib.sha256).digest()
header_hash = hashlib.sha256(header).digest()
out = header
for i, (off, n) in enumerate(chunks):
    nonce = struct.pack("<Q", i) + b"\0\0\0\0"
    aad = header_hash + struct.pack("<QB", i, 1 if i + 1 == len(chunks) else 0)
    out += AESGCM(chunk_key(chunk_part(off))).encrypt(nonce, plain[off:off + n], aad)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "sealed_header", "v2_four_parts")
with open(path, "wb") as f:
    f.write(out)
print(f"wrote {path}: {len(out)} bytes, {len(chunks)} chunks")
