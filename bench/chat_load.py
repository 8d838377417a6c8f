"""Load test of the chat app: concurrent gradio_client chats against tiny models on loopback.

    python bench/chat_load.py [--clients 20] [--seconds 60] [--max-new-tokens 32] [--concurrency-limit 2]

Builds tiny random models in a temporary folder (base; tuned = base + a LoRA adapter trained for 2 steps
by kit.sft; student = a smaller random model), launches kit.chat on 127.0.0.1 on a free port and starts
N threads, each with its own gradio_client Client, each sending `/compare` requests back to back (every
request is answered by all three models) until the time is up. The run is bounded: no request starts after
the deadline and every request must finish within a grace period after it, or it counts as an error.

Prints requests, errors, throughput and p50 / p95 / max latency (seconds, client side, so queue waiting is
included). Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_run(folder: Path, max_new_tokens: int, concurrency_limit: int):
    import yaml

    from kit import sft
    from kit.recipe import load_recipe
    from tests.conftest import build_tiny_model, write_qa_csv

    model = build_tiny_model(folder / "model")
    tree = {
        "name": "load",
        "output_dir": str(folder / "runs"),
        "model": {"name": str(model)},
        "data": {"sources": [{"path": str(write_qa_csv(folder / "qa.csv"))}], "validation_fraction": 0.2,
                 "test_fraction": 0.2},
        "sft": {"max_steps": 2, "batch_size": 4, "max_length": 128},
        "eval": {"enabled": False},
        "chat": {"port": 0, "max_new_tokens": max_new_tokens, "concurrency_limit": concurrency_limit},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(tree))
    recipe = load_recipe(folder / "recipe.yaml")
    sft.run(recipe)
    student = recipe.run_dir / "student"
    build_tiny_model(student, seed=7, num_layers=1)
    (student / "manifest.json").write_text("{}")
    return recipe


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]  # nearest rank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency-limit", type=int, default=2, help="chat.concurrency_limit for the app")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds a request may still take after the deadline")
    args = parser.parse_args()

    from gradio_client import Client

    from kit import chat
    from tests.conftest import QA_ROWS

    with tempfile.TemporaryDirectory(prefix="kit-chat-load-") as scratch:
        recipe = build_run(Path(scratch), args.max_new_tokens, args.concurrency_limit)
        app = chat.run(recipe, block=False)
        assert app.server_name == "127.0.0.1"
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = time.perf_counter()
        deadline = start + args.seconds

        def client_loop(index: int) -> None:
            try:
                client = Client(app.local_url, verbose=False)
            except Exception as exc:
                with lock:
                    errors.append(f"client {index}: connect: {exc!r}")
                return
            turn = index
            while time.perf_counter() < deadline:
                question = QA_ROWS[turn % len(QA_ROWS)][0]
                turn += 1
                sent = time.perf_counter()
                try:
                    job = client.submit(question, api_name="/compare")
                    answers = job.result(timeout=max(1.0, deadline + args.grace - sent))
                    if set(answers) != {"base", "tuned", "student"}:
                        raise ValueError(f"answered by {sorted(answers)}")
                except Exception as exc:
                    with lock:
                        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - sent)

        threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline + args.grace + 5 - time.perf_counter()))
        stuck = sum(thread.is_alive() for thread in threads)
        wall = time.perf_counter() - start
        app.close()

    print(f"clients {args.clients}, {args.seconds:.0f} s, /compare answered by base + tuned + student, "
          f"max_new_tokens {args.max_new_tokens}, concurrency_limit {args.concurrency_limit}")
    print(f"requests ok {len(latencies)}, errors {len(errors)}, stuck clients {stuck}, wall {wall:.1f} s, "
          f"throughput {len(latencies) / wall:.2f} requests/s")
    if latencies:
        print(f"latency s: p50 {percentile(latencies, 50):.2f}, p95 {percentile(latencies, 95):.2f}, "
              f"max {max(latencies):.2f}, mean {statistics.mean(latencies):.2f}")
    for line in errors[:10]:
        print("error:", line)
    return 1 if errors or stuck or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
