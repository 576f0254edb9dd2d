"""How a model was trained to talk, recorded with its checkpoints: chat template, system prompt and
the tokenizer (copied, file or HF folder).

A model answers well only with the prompt format it was trained on: a model trained without a
system prompt babbles when chat prepends DeepSeek's 40-token one. So training writes `talk.json`
(+ the tokenizer) into `RUN/talk/` at start-up (every step checkpoint of the run reads it) and into
`final/`; `open_model` hands the recorded values to chat, evaluate, the HF export's chat template
and `infer.Engine`, which use them unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from dsvl_jax import jsonfile
from dsvl_jax.data.template import system_prompt
from dsvl_jax.data.tokenizer import HF_SIDE_FILES
from dsvl_jax.errors import CheckpointError

TALK_FILE = "talk.json"
TALK_DIR = "talk"  # under a run dir
TEMPLATE = "deepseek"  # data/template.py: the one chat format dsvl_jax trains with


@dataclasses.dataclass(frozen=True)
class Talk:
    template: str
    system_prompt: str  # the text itself ("" = no system block)
    tokenizer: str | None  # absolute path of the copied tokenizer (file or folder), if any


def write_talk(folder: str, system_setting: str | None, tokenizer: str | None) -> Talk:
    """Record the template, the resolved system prompt and a copy of the tokenizer in `folder`."""
    os.makedirs(folder, exist_ok=True)
    name = None
    if tokenizer and os.path.exists(tokenizer):
        name = os.path.basename(os.path.normpath(tokenizer))
        dst = os.path.join(folder, name)
        if os.path.abspath(tokenizer) != os.path.abspath(dst):
            if os.path.isdir(tokenizer):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(tokenizer, dst)
            else:
                shutil.copy(tokenizer, dst)
                if name == "tokenizer.json":  # its special-token settings live beside it
                    for side in HF_SIDE_FILES:
                        f = os.path.join(os.path.dirname(tokenizer), side)
                        if os.path.isfile(f):
                            shutil.copy(f, os.path.join(folder, side))
    text = system_prompt(system_setting)
    with open(os.path.join(folder, TALK_FILE), "w", encoding="utf-8") as f:
        json.dump(
            {"template": TEMPLATE, "system_prompt": text, "tokenizer": name},
            f,
            indent=1,
            ensure_ascii=False,
        )
    return Talk(TEMPLATE, text, os.path.join(folder, name) if name else None)


def read_talk(folder: str) -> Talk | None:
    """The record in `folder` (None when the checkpoint predates it or was not made by training)."""
    path = os.path.join(folder, TALK_FILE)
    if not os.path.isfile(path):
        return None
    d = jsonfile.read(path, CheckpointError, dict)
    tok = d.get("tokenizer")
    tok = os.path.join(folder, tok) if tok and os.path.exists(os.path.join(folder, tok)) else None
    return Talk(d.get("template", TEMPLATE), d.get("system_prompt", ""), tok)
