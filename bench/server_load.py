#!/usr/bin/env python3
"""Load client for `veil serve` (Python standard library only; used by bench/server-load.sh).

C concurrent clients, each on its own keep-alive HTTPS connection that pins the server's RA-TLS certificate, send
POST /v1/completions (greedy, a fixed ~20-token prompt, max_tokens new tokens) back to back. Aggregate tok/s =
completion tokens of every request (from each response's usage) / wall time from the first request to the last
response. Prints one JSON object per concurrency and a Markdown table with the ratio to the anchors.
"""
import argparse
import http.client
import json
import ssl
import sys
import threading
import time

PROMPT = ("Once upon a time, in a small village by the sea, there lived an old fisherman who loved to tell "
          "stories to the children")
ANCHORS = {1: 113.0, 4: 198.0, 16: 348.0}  # llama-server, ../shared/docs/anchors.md


def client(args, ctx, n_requests, out, errors, start_barrier):
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx, timeout=600)
        body = json.dumps({"model": args.model, "prompt": PROMPT, "max_tokens": args.new_tokens,
                           "temperature": 0}).encode()
        headers = {"Authorization": "Bearer " + args.key, "Content-Type": "application/json"}
        start_barrier.wait()
        for _ in range(n_requests):
            conn.request("POST", "/v1/completions", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                errors.append("status %d" % resp.status)
                return
            usage = json.loads(data)["usage"]
            out.append((usage["prompt_tokens"], usage["completion_tokens"]))
        conn.close()
    except Exception as e:  # noqa: BLE001 - reported, and the run fails
        errors.append(type(e).__name__ + ": " + str(e))


def forward_counters(args, ctx):
    """(forward passes, sequences summed over them) from /metrics."""
    conn = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line.startswith(("veil_forward_passes_total ", "veil_forward_sequences_total ")):
            name, value = line.split()
            values[name] = int(value)
    return values.get("veil_forward_passes_total", 0), values.get("veil_forward_sequences_total", 0)


def run_level(args, ctx, clients):
    n_requests = max(1, args.requests // clients) if args.requests else max(2, 32 // clients)
    out, errors = [], []
    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(args, ctx, n_requests, out, errors, barrier))
               for _ in range(clients)]
    for t in threads:
        t.start()
    passes0, seqs0 = forward_counters(args, ctx)
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    passes1, seqs1 = forward_counters(args, ctx)
    if errors:
        raise SystemExit("server-load: %d clients: %s" % (clients, errors[0]))
    tokens = sum(c for _, c in out)
    return {"clients": clients, "requests": len(out), "prompt_tokens": out[0][0], "completion_tokens": tokens,
            "wall_s": round(wall, 3), "tok_per_s": round(tokens / wall, 1),
            "mean_batch": round((seqs1 - seqs0) / max(1, passes1 - passes0), 2),
            "anchor_tok_per_s": ANCHORS.get(clients), "ratio": round(tokens / wall / ANCHORS[clients], 2)
            if clients in ANCHORS else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True, help="the server's RA-TLS certificate (PEM), pinned")
    p.add_argument("--key", required=True, help="API key")
    p.add_argument("--model", required=True)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=0, help="requests per level (default: max(2, 32/C) per client)")
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.cert)
    ctx.check_hostname = False  # the certificate itself is pinned (it is the only trust anchor)
    # Warm-up: one request (page in the weights, first TLS handshake).
    run_level(argparse.Namespace(**{**vars(args), "requests": 1}), ctx, 1)
    rows = []
    for c in (int(x) for x in args.clients.split(",")):
        r = run_level(args, ctx, c)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("\n| clients | requests | prompt tokens | sequences per forward pass | tok/s (Veil) | llama-server | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %d | %.2f | %.1f | %s | %s |" % (r["clients"], r["requests"], r["prompt_tokens"],
                                                         r["mean_batch"], r["tok_per_s"], r["anchor_tok_per_s"],
                                                         r["ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
