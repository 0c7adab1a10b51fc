"""Notebook 2, section 10: a reward model of your own from a few comparisons. A new head on the trained reward model's
frozen trunk, or the whole model fine-tuned? Measured with the simulated labeller (the judge, 20% of its choices
flipped) on pairs of the SFT model's responses, at the label counts a class reaches.

    python benchmarks/label_head_vs_finetune.py --dataset ../shared/data/sst2    # cpu profile's models, ~10 min

Both start from notebook 2's reward model and fit the pairwise (Bradley-Terry) loss to k labelled pairs; each is
scored by its agreement with the labeller on 300 held-out pairs, over 3 draws of the k pairs. Writes --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    import torch

    import rlhf_utils as ru

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[20, 50, 200, 1000])
    parser.add_argument("--pairs", type=int, default=1600)
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument("--json", default="benchmarks/results/label_head_vs_finetune_cpu.json")
    args = parser.parse_args(argv)
    env = {"RLHF_PROFILE": args.profile, **({"RLHF_DATASET": args.dataset} if args.dataset else {})}
    cfg = ru.make_config(ru.RMConfig, env)
    out = ROOT / cfg.output_dir
    device, precision = torch.device("cpu"), ru.resolve_precision(torch.device("cpu"), "fp32")
    reward_model, tokenizer, info = ru.load_reward_model(out / "reward_model", device)
    sft = ru.load_causal_lm(str(out / "sft_model"), device).eval()
    sentences = ru.load_sst2(cfg.dataset_name)["train"].shuffle(seed=0)["sentence"]
    prompts = ru.make_prompts(sentences, tokenizer, seed=7)[: args.pairs]
    pairs = ru.response_pairs(sft, tokenizer, prompts, cfg.label_response_length, precision=precision, seed=0)
    texts = [p + a for p, a, _ in pairs] + [p + b for p, _, b in pairs]
    judge = torch.tensor(ru.SentimentJudge().scores(texts)).view(2, -1).T
    choices = ru.simulated_labels(judge.tolist(), args.flip, seed=1)
    decided = [(i, c) for i, c in enumerate(choices) if c is not None]
    test, train = decided[:300], decided[300:]
    n = len(pairs)
    ids = ru.tokenize_sentences(texts, tokenizer, cfg.max_length)

    def index(rows):  # noqa: ANN001, ANN202  (chosen, rejected) rows of the 2n texts
        return (torch.tensor([i if c == 0 else n + i for i, c in rows]),
                torch.tensor([n + i if c == 0 else i for i, c in rows]))  # fmt: skip

    def agreement(scores: torch.Tensor) -> float:
        chosen, rejected = index(test)
        return (scores[chosen] > scores[rejected]).float().mean().item()

    features = ru.last_token_features(reward_model, tokenizer, texts)

    def head_fit(rows) -> float:  # noqa: ANN001
        ru.seed_everything(0)
        head = ru.ScalarHead(features.shape[1])
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
        chosen, rejected = index(rows)
        for _ in range(300):
            scores = head(features)
            loss = ru.pairwise_reward_loss(scores[chosen], scores[rejected])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return agreement(head(features))

    def finetune(rows) -> float:  # noqa: ANN001
        ru.seed_everything(0)
        model, _, _ = ru.load_reward_model(out / "reward_model", device)
        model.train()
        optimizer = ru.make_optimizer(model, 1e-4, 0.01)
        chosen, rejected = index(rows)
        for _epoch in range(3):
            for batch in torch.randperm(len(rows)).split(32):
                rows_ = torch.cat([chosen[batch], rejected[batch]]).tolist()
                input_ids, mask = ru.pad_batch([ids[r] for r in rows_], tokenizer.pad_token_id)
                scores = model.score(input_ids, mask)
                loss = ru.pairwise_reward_loss(*scores.chunk(2))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        return agreement(ru.score_sentences(model, tokenizer, texts))

    baseline = agreement(ru.score_sentences(reward_model, tokenizer, texts))
    results = {"reward_model_as_is": baseline, "labeller_ceiling": 1 - args.flip, "counts": {}}
    for k in args.counts:
        row = {}
        for name, fit in (("head on the frozen trunk", head_fit), ("fine-tune the whole model", finetune)):
            started, scores = time.perf_counter(), []
            for draw in range(3):
                scores.append(fit(train[draw * 37 % len(train) :][:k]))
            row[name] = {"agreement": statistics.mean(scores), "range": [min(scores), max(scores)],
                         "seconds_per_fit": (time.perf_counter() - started) / 3}  # fmt: skip
        results["counts"][str(k)] = row
        print(k, json.dumps(row), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
