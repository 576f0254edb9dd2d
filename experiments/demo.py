"""The embedded default (`make demo`): stages 1 -> 2 -> 3 of the tiny model on the synthetic corpus.

  python -m dsvl_jax.demo --config=experiments/demo.py:tiny
Hardware: 2 CPU cores, a few minutes. Writes <out_dir>/{data,stage1,stage2,stage3,plots}; the last
line printed is one JSON object with the held-out accuracy and what chance would score.
Stage hyper-parameters come from experiments/stage{1_aligner,2_pretrain,3_sft}.py:<size>;
`overrides` changes them here: --config.overrides="stage3.train.steps=900,stage2.train.lr=1e-3".
"""
import ml_collections


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.size = arg or "tiny"
    c.out_dir = "runs/demo"
    # 400 records per kind; more charts, whose questions stage 3 learns (chart generation: ~30 ms each)
    c.corpus = dict(n=400, n_chart=1200, heldout_n=100, image_size=64, seed=0, tokenizer_vocab=512)
    c.overrides = ""  # "stageN.<key path>=<python literal>,..."
    c.chat_question = "What kind of chart is this?"
    return c.lock()
