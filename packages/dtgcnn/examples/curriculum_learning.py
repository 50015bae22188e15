"""The guide's "Curriculum Learning": triplets ranked by difficulty (d(a,n) - d(a,p): small = hard), easy
ones first, in `num_stages` stages.

    python examples/curriculum_learning.py       # writes example_outputs/curriculum_learning/
    # training with a curriculum from the command line (stages on a schedule, or on a val/loss plateau):
    python -m dtgcnn.train --mode triplets --data triplets.json curriculum=true curriculum_stages=4 \
        curriculum_advance=plateau curriculum_difficulty=model
"""

from pathlib import Path

from common.runs import timestamp
from dtgcnn import AdvancedTrainer, CurriculumScheduler, DTGCNNConfig, TripletDataset, create_model
from dtgcnn.synthetic import generate_text

out = Path("example_outputs/curriculum_learning")
data = generate_text(out / "data", num_labels=4, per_label=16, seed=0)
dataset = TripletDataset(data / "triplets.json")

scheduler = CurriculumScheduler(dataset, num_stages=4)  # the guide's object, over the whole file
for _ in range(4):
    anchor, positive, negative = scheduler.get_stage_data()[0]
    print(f"stage {scheduler.current_stage + 1}: {len(scheduler.get_stage_data())} triplets, e.g. {anchor!r}")
    scheduler.advance_stage()

config = DTGCNNConfig(
    hidden_dims=[32, 32],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    num_epochs=4,
    warmup_epochs=0,
    curriculum=True,  # training draws each epoch from the stage's easiest share
    curriculum_stages=4,
    curriculum_epochs_per_stage=1,
    plot_every=0,
    tsne_plot=False,
)
train_loader, val_loader = dataset.create_dataloaders(batch_size=16, train_split=0.75)
result = AdvancedTrainer(create_model(config), config, output_dir=out / f"run_{timestamp()}").train(
    train_loader, val_loader
)
print(f"val MAP@R {result.metrics['val/map_at_r']:.3f} after the 4 stages")
