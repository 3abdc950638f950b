"""Refusal detection: precision, recall and speed on the labelled sets, against the seed.

Tuned on refusals.jsonl and refusals_more.jsonl; refusals_holdout.jsonl is never tuned on.

Baselines measured in the same run: the seed's six regular expressions, and a prefix string
matcher of the kind published with refusal benchmarks (an answer starting "I'm sorry", "As an
AI", ...). Speed is CPU time per answer, best of several repeats.

    python benchmarks/bench_quality.py [--repeats 7] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from chainwatch.quality import analyze_response
from chainwatch.refusal import detect_refusal

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SEED = [re.compile(p, re.IGNORECASE) for p in (
    r"\bI cannot\b", r"\bI can't\b", r"\bAs an AI\b", r"\bI'm not able\b", r"\bI am not able\b",
    r"\bI apologi[sz]e\b",
)]
PREFIXES = (
    "sorry", "i'm sorry", "i am sorry", "i apologize", "i apologise", "no,", "no.", "i cannot",
    "i can't", "i'm not able", "i am not able", "it is not appropriate", "it's not appropriate",
    "it is not accurate", "it's not accurate", "i am not sure that it's appropriate",
    "i'm not sure that it's appropriate", "it is not ethical", "it's not ethical", "as an ai",
    "i am an ai language model",
)

Detector = Callable[[str, str], bool]
DETECTORS: dict[str, Detector] = {
    "chainwatch": lambda r, q: detect_refusal(r, q).is_refusal,
    "seed regexes": lambda r, q: any(p.search(r) for p in SEED),
    "prefix matcher": lambda r, q: r.strip().lower().startswith(PREFIXES),
}


def score(rows: list[dict[str, str]], detect: Detector) -> dict[str, float]:
    tp = fp = fn = 0
    for row in rows:
        predicted = detect(row["response"], row["query"])
        actual = row["label"] != "compliance"
        tp += predicted and actual
        fp += predicted and not actual
        fn += (not predicted) and actual
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def speed(rows: list[dict[str, str]], fn: Callable[[str, str], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for row in rows:
            fn(row["response"], row["query"])
        best = min(best, (time.process_time() - start) / len(rows))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("refusals.jsonl", "refusals_more.jsonl", "refusals_holdout.jsonl"):
        rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]
        results[name] = {}
        print(f"\n{name}: {len(rows)} answers, "
              f"{sum(r['label'] != 'compliance' for r in rows)} refusals")
        print(f"{'detector':16s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'µs/answer':>10s}")
        for label, detect in DETECTORS.items():
            figures = score(rows, detect)
            figures["us_per_answer"] = speed(rows, detect, args.repeats)
            results[name][label] = figures
            print(f"{label:16s} {figures['precision']:9.3f} {figures['recall']:7.3f} "
                  f"{figures['f1']:6.3f} {figures['us_per_answer']:10.1f}")
        full = speed(rows, lambda r, q: analyze_response(r, q), max(1, args.repeats // 2))
        results[name]["analyze_response"] = {"us_per_answer": full}
        print(f"{'analyze_response':16s} (refusal + hedging + VADER sentiment) {full:10.1f} µs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
