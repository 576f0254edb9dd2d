"""The embedded default (`make demo`): stages 1 -> 2 -> 3 of the tiny model on the synthetic corpus.

  python -m dsvl_jax.demo --config=experiments/demo.py:tiny
Hardware: 2 CPU cores, a few minutes (each phase shows a progress bar with an ETA on stderr). Writes
<out_dir>/{data,stage1,stage2,stage3,plots,showcase,result.json}; stdout gets a few held-out questions
with the model's and the expected answer, then one JSON line with the held-out accuracy and what
chance would score. A rerun of a finished demo prints the stored result.json again.
The stage configs are experiments/stage{1_aligner,2_pretrain,3_sft}.py:<size>, held here as
`stage1` / `stage2` / `stage3`, so any of their fields is overridden like any other:
--config.stage3.train.steps=900 --config.stage2.train.lr=1e-3
"""

import os

import ml_collections

from dsvl_jax.config import load_experiment

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = {"stage1": "stage1_aligner", "stage2": "stage2_pretrain", "stage3": "stage3_sft"}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.size = arg or "tiny"
    c.out_dir = "runs/demo"
    # 400 records per kind; more charts, whose questions stage 3 learns (chart generation: ~30 ms each)
    c.corpus = dict(n=400, n_chart=1200, heldout_n=100, image_size=64, seed=0, tokenizer_vocab=512)
    c.showcase = 3  # held-out questions printed with the model's and the expected answer
    for key, name in STAGES.items():
        c[key] = load_experiment(os.path.join(HERE, f"{name}.py"), c.size)
        c[key].log.progress = True  # the step bar (loss, ETA) on stderr: stage 3 runs for minutes
    return c.lock()
