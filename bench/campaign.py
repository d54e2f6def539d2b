"""Fault campaigns: runs per minute on 2 workers, and what that means for a 200-seed campaign.

The campaign is `scenarios/yaml/campaign_day.yaml` (a one-minute upload cycle, ~7 device minutes per
run) under the built-in `mixed` fault profile, on the `spec` firmware, without shrinking. The baseline,
timed side by side on the same seeds, is the same campaign on 1 worker (one process, runs one after
another): the ratio is what the second worker buys. The issue asks for 200 seeds in under 10 minutes
in CI, i.e. at least 20 runs per minute; the projection is printed next to it.

    python -m bench campaign            # 30 seeds (fewer: the workers' start dominates)
    python -m bench.campaign --seeds 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import Result
from harness.campaign import Campaign, parse_seeds, run_campaign

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "yaml" / "campaign_day.yaml"
CI_SEEDS = 200
CI_MINUTES = 10.0


def _runs_per_minute(seeds: list[int], workers: int) -> float:
    campaign = Campaign(str(SCENARIO), seeds, "mixed", "spec", workers=workers, shrink=False)
    started = time.perf_counter()
    result = run_campaign(campaign, echo=lambda line: None)
    elapsed = time.perf_counter() - started
    return len(result.records) / elapsed * 60.0


def main() -> list[Result]:
    parser = argparse.ArgumentParser(prog="bench.campaign")
    parser.add_argument("--seeds", default="1..30")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    one = _runs_per_minute(seeds, 1)
    two = _runs_per_minute(seeds, 2)
    minutes = CI_SEEDS / two
    return [
        Result("campaign", "runs per minute, 2 workers (baseline: 1 worker)", two, "runs/min", baseline=one),
        Result("campaign", f"{CI_SEEDS} seeds on 2 workers (baseline: the CI budget)", minutes, "min",
               baseline=CI_MINUTES),
    ]


if __name__ == "__main__":
    for result in main():
        ratio = f" (x{result.ratio:.2f})" if result.ratio else ""
        print(f"{result.metric}: {result.value:.2f} {result.unit}{ratio}")
