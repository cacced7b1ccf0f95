#!/usr/bin/python3
"""Independent verifier for Veil completion signatures and attestation bindings (docs/api.md).

Uses only the Python standard library and the Debian python3-cryptography package: nothing from Veil.
Input: a JSON file (argv[1]) with
  signature:      the body of GET /v1/signature/{id}
  request_body:   the exact request body sent
  response_body:  the exact response body (response_kind "json"), or
  events:         the exact SSE events received, "data: ...\\n\\n" each, without the final [DONE]
  attestation:    (optional) the body of GET /v1/attestation?nonce=...
  nonce:          (optional) hex nonce the attestation must bind
  platform_public_key: (optional) hex P-256 key (65-byte uncompressed point) of the simulated TEE platform
Prints OK and exits 0 when every check passes; prints the first failure and exits 1 otherwise.
"""
import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def parse_signed_text(text):
    lines = text.split("\n")
    if lines[-1] != "" or lines[0] != "veil-completion-signature-v1":
        fail("signed text does not start with the v1 header or lacks the final newline")
    fields = {}
    for line in lines[1:-1]:
        key, sep, value = line.partition(": ")
        if not sep:
            fail("malformed line in signed text")
        fields[key] = value
    for key in ("id", "model", "created", "request_sha256", "response_kind", "response_sha256"):
        if key not in fields:
            fail("signed text lacks " + key)
    return fields


def sse_chain(events):
    h = bytes(32)
    for ev in events:
        h = hashlib.sha256(h + hashlib.sha256(ev.encode("utf-8")).digest()).digest()
    return h


def verify_signature_entry(entry, text):
    alg = entry["algorithm"]
    pub = bytes.fromhex(entry["public_key"])
    sig = bytes.fromhex(entry["signature"])
    try:
        if alg == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(pub).verify(sig, text.encode("utf-8"))
        elif alg == "ecdsa-secp256k1-sha256":
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub)
            if len(sig) != 64:
                fail("secp256k1 signature is not r||s")
            r = int.from_bytes(sig[:32], "big")
            s = int.from_bytes(sig[32:], "big")
            n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
            if s > n // 2:
                fail("secp256k1 signature is not low-S")
            key.verify(encode_dss_signature(r, s), text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
        else:
            fail("unknown algorithm " + alg)
    except InvalidSignature:
        fail(alg + " signature does not verify")
    return pub


def report_data_binding(nonce, spki_sha256, ed_pub, k1_pub):
    msg = b"veil-report-data-v1" + struct.pack(">I", len(nonce)) + nonce + spki_sha256 + ed_pub + k1_pub
    return hashlib.sha512(msg).digest()


def verify_attestation(att, nonce_hex, platform_pub_hex, keys):
    if att.get("binding") != "veil-report-data-v1":
        fail("unknown attestation binding")
    nonce = bytes.fromhex(nonce_hex or "")
    if att["nonce"] != (nonce_hex or "").lower():
        fail("attestation echoes a different nonce")
    ed_pub = bytes.fromhex(att["signing_keys"]["ed25519"])
    k1_pub = bytes.fromhex(att["signing_keys"]["secp256k1"])
    for alg, pub in keys.items():
        expected = ed_pub if alg == "ed25519" else k1_pub
        if pub != expected:
            fail(alg + " signing key is not the attested one")
    rd = report_data_binding(nonce, bytes.fromhex(att["tls_spki_sha256"]), ed_pub, k1_pub)
    if att["report_data"] != rd.hex():
        fail("report_data does not match the binding")
    ev = att["evidence"]
    if ev["type"] != "sim":
        return
    data = base64.b64decode(ev["data"])
    if data[:8] != b"VEILSIM2":
        fail("sim evidence magic")
    (body_len,) = struct.unpack("<I", data[8:12])
    body = data[12:12 + body_len]
    sig = data[12 + body_len:]
    if len(sig) != 64:
        fail("sim evidence signature length")
    claims = json.loads(body)
    if claims["report_data"] != rd.hex():
        fail("the evidence does not carry the expected report_data")
    if platform_pub_hex:
        try:
            platform = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(platform_pub_hex))
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            platform.verify(der, b"veil-sim-evidence-v2" + data[:12 + body_len], ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            fail("sim evidence signature does not verify")


def main():
    with open(sys.argv[1], "r", encoding="utf-8") as f:
        inp = json.load(f)
    sig = inp["signature"]
    text = sig["text"]
    fields = parse_signed_text(text)
    if fields["id"] != sig["id"]:
        fail("signature id mismatch")
    if fields["request_sha256"] != hashlib.sha256(inp["request_body"].encode("utf-8")).hexdigest():
        fail("request hash mismatch")
    if fields["response_kind"] == "json":
        got = hashlib.sha256(inp["response_body"].encode("utf-8")).hexdigest()
    elif fields["response_kind"] == "sse-chain":
        got = sse_chain(inp["events"]).hex()
    else:
        fail("unknown response kind")
    if fields["response_sha256"] != got:
        fail("response hash mismatch")
    algs = {}
    for entry in sig["signatures"]:
        algs[entry["algorithm"]] = verify_signature_entry(entry, text)
    if set(algs) != {"ed25519", "ecdsa-secp256k1-sha256"}:
        fail("expected both ed25519 and ecdsa-secp256k1-sha256 signatures")
    if "attestation" in inp:
        verify_attestation(inp["attestation"], inp.get("nonce"), inp.get("platform_public_key"), algs)
    print("OK")


if __name__ == "__main__":
    main()
