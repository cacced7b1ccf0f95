#!/usr/bin/env python3
"""The quickstart's client: verifies a `veil serve` node before it trusts it, then asks for a story.

Python standard library plus Debian's python3-cryptography; the checks are the independent verifier's
(tests/server/verify_signatures.py, which shares no code with Veil). Steps, as docs/api.md "How a client verifies":
  1. TLS to 127.0.0.1:PORT, pinned to the server's RA-TLS certificate (--cert).
  2. GET /v1/attestation?nonce=<fresh random>: the evidence must be signed by the (simulated) platform key and its
     report_data must bind this nonce, the pinned certificate's public key and the two response-signing keys.
  3. Only then POST /v1/completions (greedy) and print the text.
  4. GET /v1/signature/{id}: both signatures must verify with the attested keys, over the exact request and
     response bodies.
Exit status 0 when every check passes; 1 with the failed check (or the malformed answer) on stdout otherwise.
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import ssl
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "server"))
import verify_signatures as verifier  # noqa: E402  (the independent implementation)


CMW_OID = "1.3.6.1.5.5.7.1.35"  # id-pe-cmw (RFC 9999): the certificate's evidence extension
CMW_TYPE = "application/vnd.veil.attestation+json"


def certificate_evidence(pem):
    """(SubjectPublicKeyInfo DER, attestation JSON) of the server's RA-TLS certificate, read with `cryptography`'s
    X.509 parser: the evidence extension is a CMW record (docs/api.md), a DER UTF8String holding
    [type, base64url(attestation JSON), indicator]."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(CMW_OID)).value.value
    except x509.ExtensionNotFound:
        verifier.fail("the certificate has no evidence extension (id-pe-cmw)")
    if len(value) < 2 or value[0] != 0x0C:
        verifier.fail("the evidence extension is not a DER UTF8String")
    n, start = value[1], 2
    if n & 0x80:
        k = n & 0x7F
        n, start = int.from_bytes(value[2:2 + k], "big"), 2 + k
    if start + n != len(value):
        verifier.fail("the evidence extension's length does not match its content")
    record = json.loads(value[start:].decode("utf-8"))
    if not isinstance(record, list) or len(record) not in (2, 3) or record[0] != CMW_TYPE:
        verifier.fail("the evidence extension is not a Veil CMW record")
    if len(record) == 3 and not (isinstance(record[2], int) and record[2] & 4):
        verifier.fail("the CMW record does not say it carries Evidence")
    body = record[1]
    return spki, json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def request(conn, method, path, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read().decode("utf-8")
    if resp.status != 200:
        verifier.fail("%s %s: HTTP %d: %s" % (method, path, resp.status, data[:200]))
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="the server's certificate (veil serve --cert-out)")
    ap.add_argument("--key-file", required=True, help="file holding the API key (veil keys add); not on the command line")
    ap.add_argument("--model", required=True)
    ap.add_argument("--collateral", required=True,
                    help="collateral JSON naming the simulated TEE's platform key (veil attest quote --collateral-out)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args()

    with open(args.key_file, "r", encoding="ascii") as f:
        api_key = f.read().strip()
    with open(args.collateral, "r", encoding="utf-8") as f:
        platform_public_key = base64.b64decode(json.load(f)["sim_platform_public_key"]).hex()
    with open(args.cert, "r", encoding="ascii") as f:
        spki, cert_att = certificate_evidence(f.read())
    # The certificate's own evidence (empty nonce) must bind its key: a certificate made outside the TEE cannot.
    if cert_att["tls_spki_sha256"] != hashlib.sha256(spki).hexdigest():
        verifier.fail("the certificate's evidence binds another TLS key")
    verifier.verify_attestation(cert_att, "", platform_public_key, {})
    print("certificate: its evidence extension (CMW, id-pe-cmw) binds its TLS key and the signing keys: OK")
    ctx = ssl.create_default_context(cafile=args.cert)
    conn = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx, timeout=120)

    nonce = os.urandom(16).hex()
    att = json.loads(request(conn, "GET", "/v1/attestation?nonce=" + nonce))
    if att["tls_spki_sha256"] != hashlib.sha256(spki).hexdigest():
        verifier.fail("the attested TLS key is not the pinned certificate's")
    verifier.verify_attestation(att, nonce, platform_public_key, {})
    claims = json.loads(base64.b64decode(att["evidence"]["data"])[12:-64])
    print("attestation: %s evidence%s, measurement %s..., binds a fresh nonce, the TLS key and the signing keys: OK"
          % (att["evidence"]["type"], " (SIMULATED TEE: development only)" if claims.get("simulated") else "",
             claims.get("measurement", "?")[:16]))

    body = json.dumps({"model": args.model, "prompt": args.prompt, "max_tokens": args.max_tokens,
                       "temperature": 0})
    raw = request(conn, "POST", "/v1/completions", body, api_key)
    completion = json.loads(raw)
    print()
    print(args.prompt + completion["choices"][0]["text"])
    print()

    sig = json.loads(request(conn, "GET", "/v1/signature/" + completion["id"], key=api_key))
    fields = verifier.parse_signed_text(sig["text"])
    if fields["request_sha256"] != hashlib.sha256(body.encode("utf-8")).hexdigest():
        verifier.fail("the signature covers another request")
    if fields["response_sha256"] != hashlib.sha256(raw.encode("utf-8")).hexdigest():
        verifier.fail("the signature covers another response")
    attested = {"ed25519": att["signing_keys"]["ed25519"], "ecdsa-secp256k1-sha256": att["signing_keys"]["secp256k1"]}
    for entry in sig["signatures"]:
        pub = verifier.verify_signature_entry(entry, sig["text"])
        if pub.hex() != attested.get(entry["algorithm"]):
            verifier.fail(entry["algorithm"] + " signing key is not the attested one")
    if {e["algorithm"] for e in sig["signatures"]} != set(attested):
        verifier.fail("expected an ed25519 and a secp256k1 signature")
    print("signatures: ed25519 and ecdsa-secp256k1 over this request and response, by the attested keys: OK")
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError, IndexError, TypeError, http.client.HTTPException, ssl.SSLError) as e:
        # A server that answers something else than docs/api.md says (or none at all): one line, no trace.
        verifier.fail("%s: %s" % (type(e).__name__, e))
