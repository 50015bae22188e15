"""Which of the training guide's techniques help on a real text set: the README's table.

Every technique is one change to the same baseline run on the Home Assistant intent sentences
(`dtgcnn.textsets.load_text_set`, labelled by intent; a seeded 80/20 split of the sentences, so val
retrieval measures intents seen in training), trained for the same number of epochs with the same seeds.
Reported: the val MAP@R after the last epoch, mean over the seeds, with and without the technique.

    python examples/techniques_table.py          # a seconds-short smoke run (tiny set, 1 epoch, 1 seed)
    python examples/techniques_table.py --full   # the README's budget (minutes on 2 CPU cores)
"""

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.runs import timestamp
from dtgcnn import DTGCNNConfig
from dtgcnn.text_trainer import fit_triplets
from dtgcnn.textsets import load_text_set

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true", help="the README's budget instead of the smoke run")
parser.add_argument("--output-dir", default=f"example_outputs/techniques_table/run_{timestamp()}")
args = parser.parse_args()

if args.full:
    max_per_label, epochs, seeds, widths = 30, 8, [0, 1, 2, 3, 4], dict(hidden_dims=[256, 128], output_dim=64)
else:
    max_per_label, epochs, seeds, widths = 6, 1, [0], dict(hidden_dims=[32, 16], output_dim=16)
BASELINE = DTGCNNConfig(
    **widths,
    num_gcn_layers=2,
    batch_size=64,
    samples_per_label=4,
    learning_rate=0.001,
    num_epochs=epochs,
    warmup_epochs=1,
    mining_strategy="batch_hard",
    graph_bank_size=128,
    dynamic_graph_update_freq=4,
    train_split=0.8,
    plot_every=0,
    tsne_plot=False,
    log_interval=0,
)
half = max(1, epochs // 4)
# technique -> the baseline's changes (the same total epochs everywhere)
TECHNIQUES = {
    "progressive (3 stages)": dict(
        progressive=True, progressive_epochs=[half, half], num_epochs=max(1, epochs - 2 * half)
    ),
    "curriculum (4 stages, 1 epoch each)": dict(curriculum=True, curriculum_stages=4),
    "multi-task (class + word count heads)": dict(multitask=True),
    "ensemble of 3 (seeds s, s+1, s+2)": dict(ensemble_size=3),
    "focal loss (gamma 2)": dict(focal_gamma=2.0),
    "semi-hard mining (vs batch-hard)": dict(mining_strategy="semi_hard"),
    "adaptive margin (0.2 -> 0.5)": dict(target_margin=0.5),
}

out = Path(args.output_dir)
out.mkdir(parents=True, exist_ok=True)
sentences, labels = load_text_set("ha-intents-en", max_per_label=max_per_label)
data = out / "sentences.csv"
with open(data, "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["text", "label"])
    writer.writerows(zip(sentences, labels, strict=True))
print(f"{len(sentences)} sentences, {len(set(labels))} intents; {epochs} epochs, seeds {seeds}")


def val_metrics(name: str, changes: dict, seed: int) -> dict[str, float]:
    result = fit_triplets(replace(BASELINE, **changes, seed=seed), out / f"{name}_seed{seed}", data=data)
    return result.metrics


def verdict(differences: np.ndarray) -> str:
    """helped / hurt when the mean paired difference is beyond two standard errors, else within noise."""
    if len(differences) < 2:
        return "one seed: no verdict"
    mean = differences.mean()
    error = differences.std(ddof=1) / np.sqrt(len(differences))
    return "within noise" if abs(mean) <= 2 * error else "helped" if mean > 0 else "hurt"


started = time.perf_counter()
runs = [val_metrics("baseline", {}, s) for s in seeds]
baseline = np.array([m["val/map_at_r"] for m in runs])
encoder = float(np.mean([m["val/encoder_map_at_r"] for m in runs]))
report = {
    "data": "ha-intents-en",
    "sentences": len(sentences),
    "epochs": epochs,
    "seeds": seeds,
    "encoder_alone": encoder,
    "baseline": baseline.tolist(),
    "techniques": {},
}
print(
    "\n| technique | MAP@R without | MAP@R with | change (paired, mean ± sd over seeds) |\n|---|---|---|---|"
)
for i, (technique, changes) in enumerate(TECHNIQUES.items()):
    scores = np.array([val_metrics(f"technique{i}", changes, s)["val/map_at_r"] for s in seeds])
    diff = scores - baseline
    report["techniques"][technique] = scores.tolist()
    sd = f" ± {diff.std(ddof=1):.3f}" if len(seeds) > 1 else ""
    print(
        f"| {technique} | {baseline.mean():.3f} | {scores.mean():.3f} | {diff.mean():+.3f}{sd} ({verdict(diff)}) |"
    )
report["seconds"] = time.perf_counter() - started
(out / "techniques_table.json").write_text(json.dumps(report, indent=2))
print(f"\nhashing vectors alone: MAP@R {encoder:.3f}; {report['seconds']:.0f} s; {out}")
