"""Load test of kit.serve on loopback: N concurrent openai clients for S seconds, errors and latency percentiles.

    python bench/serve_load.py recipes/quickstart.yaml [--clients 20] [--seconds 60] [--max-tokens 16]

Starts `python -m kit.serve RECIPE` on 127.0.0.1 with a random free port and a random API key (the run needs a
GGUF export: `python -m kit.export RECIPE --format gguf`), waits for `/v1/models`, then runs `--clients` threads,
each with its own `openai.OpenAI` client, sending chat completions (every other one streamed) built from the
held-out test split, until `--seconds` have passed; in-flight requests finish, then the server is stopped.
Prints requests, errors, throughput, and p50/p95/max latency (streamed: also time to first token). Only
loopback traffic; bounded in time and in clients.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def main() -> None:
    import openai

    from kit import data
    from kit.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.seconds <= 600:
        parser.error("--clients 1-64 and --seconds 1-600: a bounded load test")
    recipe = load_recipe(args.recipe, args.overrides)
    questions = [[m for m in c["messages"] if m["role"] != "system"][:1] for c in data.load_split(recipe, "test")]
    questions = [q for q in questions if q and q[0]["role"] == "user"] or [[{"role": "user", "content": "Where is my order?"}]]

    port, key = free_port(), secrets.token_urlsafe(16)
    env = {**os.environ, "KIT_API_KEY": key, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "kit.serve", args.recipe, "--set", f"serve.port={port}", "--set", "serve.host=127.0.0.1",
               *[item for override in args.overrides for item in ("--set", override)]]
    server = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        probe = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=5)
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                sys.exit(f"kit.serve exited: {server.stdout.read().strip()}")
            try:
                model = probe.models.list().data[0].id
                break
            except openai.APIConnectionError:
                if time.time() > deadline:
                    sys.exit("kit.serve did not answer within 120 s")
                time.sleep(0.5)
        print(f"kit.serve: {model} on {base_url}; {args.clients} clients for {args.seconds:.0f} s, "
              f"max_tokens {args.max_tokens}", flush=True)

        latencies, first_tokens, errors, lock = [], [], [], threading.Lock()
        streamed = []  # per streamed request: characters received
        stop_at = time.time() + args.seconds

        def client(index: int) -> None:
            api = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
            turn = index
            while time.time() < stop_at:
                messages = questions[turn % len(questions)]
                stream = turn % 2 == 1
                turn += args.clients
                started = time.perf_counter()
                try:
                    if stream:
                        first, received = None, 0
                        for chunk in api.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                                                 temperature=0, stream=True):
                            if chunk.choices and chunk.choices[0].delta.content:
                                received += len(chunk.choices[0].delta.content)
                                if first is None:
                                    first = time.perf_counter() - started
                    else:
                        reply = api.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                                            temperature=0)
                        assert reply.choices[0].message.content is not None
                    elapsed = time.perf_counter() - started
                    if stream and not received:  # a stream cut short before any text is a failure too
                        raise RuntimeError("streamed answer ended without text")
                    with lock:
                        latencies.append(elapsed)
                        if stream:
                            streamed.append(received)
                            if first is not None:
                                first_tokens.append(first)
                except Exception as exc:  # every failure counts, whatever its kind
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        started = time.time()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.time() - started
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"requests {len(latencies) + len(errors)}, errors {len(errors)}, {len(latencies) / wall:.2f} requests/s over {wall:.0f} s")
    if latencies:
        print(f"latency p50 {statistics.median(latencies):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
              f"max {max(latencies):.2f} s")
    print(f"streamed requests {len(streamed)}, with content {sum(1 for n in streamed if n)}")
    if first_tokens:
        print(f"streamed, time to first token p50 {statistics.median(first_tokens):.2f} s, p95 {percentile(first_tokens, 0.95):.2f} s")
    for error in errors[:5]:
        print(f"error: {error}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
