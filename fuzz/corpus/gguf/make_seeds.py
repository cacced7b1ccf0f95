#!/usr/bin/env python3
# Writes the seed corpus for veil_fuzz_gguf: small GGUF v3 files generated here (never copied from elsewhere).
import random
import struct

def s(x):
    b = x.encode()
    return struct.pack('<Q', len(b)) + b

def kv(key, t, payload):
    return s(key) + struct.pack('<I', t) + payload

def u32(key, v): return kv(key, 4, struct.pack('<I', v))
def f32(key, v): return kv(key, 6, struct.pack('<f', v))
def string(key, v): return kv(key, 8, s(v))
def arr(key, et, items, fmt=None):
    body = b''.join(s(i) if et == 8 else struct.pack(fmt, i) for i in items)
    return kv(key, 9, struct.pack('<IQ', et, len(items)) + body)

def gguf(kvs, tensors):
    out = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kvs)) + b''.join(kvs)
    off, data = 0, b''
    for name, dims, t, payload in tensors:
        out += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', d) for d in dims)
        out += struct.pack('<IQ', t, off)
        pad = (-len(payload)) % 32
        data += payload + b'\0' * pad
        off += len(payload) + pad
    out += b'\0' * ((-len(out)) % 32)
    return out + data

rng = random.Random(7)
def f32s(n, scale=0.5, base=0.0): return struct.pack('<%df' % n, *[base + rng.uniform(-scale, scale) for _ in range(n)])

# 1. a tiny llama model the engine can load and run: d=8, 1 layer, 2 heads, 1 kv head, ff 16, vocab 4.
d, ff, V = 8, 16, 4
toks = ['<unk>', '<s>', '</s>', '\u2581a']
kvs = [string('general.architecture', 'llama'), u32('llama.embedding_length', d), u32('llama.block_count', 1),
       u32('llama.attention.head_count', 2), u32('llama.attention.head_count_kv', 1),
       u32('llama.feed_forward_length', ff), u32('llama.context_length', 16),
       f32('llama.attention.layer_norm_rms_epsilon', 1e-5), string('tokenizer.ggml.model', 'llama'),
       arr('tokenizer.ggml.tokens', 8, toks), arr('tokenizer.ggml.scores', 6, [0.0] * V, '<f'),
       arr('tokenizer.ggml.token_type', 5, [2, 3, 3, 1], '<i'), u32('tokenizer.ggml.bos_token_id', 1)]
ts = [('token_embd.weight', [d, V], 0, f32s(d * V)), ('output_norm.weight', [d], 0, f32s(d, 0.1, 1.0)),
      ('blk.0.attn_norm.weight', [d], 0, f32s(d, 0.1, 1.0)), ('blk.0.ffn_norm.weight', [d], 0, f32s(d, 0.1, 1.0)),
      ('blk.0.attn_q.weight', [d, d], 0, f32s(d * d)), ('blk.0.attn_k.weight', [d, 4], 0, f32s(d * 4)),
      ('blk.0.attn_v.weight', [d, 4], 0, f32s(d * 4)), ('blk.0.attn_output.weight', [d, d], 0, f32s(d * d)),
      ('blk.0.ffn_gate.weight', [d, ff], 0, f32s(d * ff)), ('blk.0.ffn_up.weight', [d, ff], 0, f32s(d * ff)),
      ('blk.0.ffn_down.weight', [ff, d], 0, f32s(ff * d))]
open('tiny_llama.gguf', 'wb').write(gguf(kvs, ts))

# 2. vocabulary only (0 tensors), every scalar value type.
kvs = [string('tokenizer.ggml.model', 'gpt2'), arr('tokenizer.ggml.tokens', 8, ['a', 'b', 'ab']),
       arr('tokenizer.ggml.merges', 8, ['a b']), kv('x.u8', 0, b'\x05'), kv('x.i8', 1, b'\xfb'),
       kv('x.u16', 2, struct.pack('<H', 7)), kv('x.i16', 3, struct.pack('<h', -7)), kv('x.bool', 7, b'\x01'),
       kv('x.u64', 10, struct.pack('<Q', 1 << 40)), kv('x.i64', 11, struct.pack('<q', -5)),
       kv('x.f64', 12, struct.pack('<d', 0.25)), arr('x.nested', 9, [], None)]
open('vocab_only.gguf', 'wb').write(gguf(kvs, []))

# 3. quantised tensors of several block types, custom alignment.
kvs = [u32('general.alignment', 64), string('general.architecture', 'gpt2')]
ts = [('q4_0', [32, 2], 2, bytes(rng.randrange(256) for _ in range(36))),
      ('q8_0', [64], 8, bytes(rng.randrange(256) for _ in range(68))),
      ('q6_k', [256], 14, bytes(rng.randrange(256) for _ in range(210))),
      ('f16', [3, 2], 1, bytes(rng.randrange(256) for _ in range(12)))]
out = b'GGUF' + struct.pack('<IQQ', 3, len(ts), len(kvs)) + b''.join(kvs)
off, data = 0, b''
for name, dims, t, payload in ts:
    out += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', x) for x in dims) + struct.pack('<IQ', t, off)
    pad = (-len(payload)) % 64
    data += payload + b'\0' * pad
    off += len(payload) + pad
out += b'\0' * ((-len(out)) % 64)
open('quantised_align64.gguf', 'wb').write(out + data)
