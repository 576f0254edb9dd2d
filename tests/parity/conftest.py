"""Per-variant fixtures: a tiny random HF model, its save_pretrained folder, and our converted checkpoint."""

import pytest

import hf_oracle


@pytest.fixture(scope="session", params=sorted(hf_oracle.VARIANTS))
def converted(request, tmp_path_factory):
    """(variant, hf_model, hf_dir, ckpt_dir, cfg, params) with the checkpoint made by the converter."""
    from dsvl_jax import api
    from dsvl_jax.checkpoints import from_hf

    variant = request.param
    root = tmp_path_factory.mktemp(variant)
    model = hf_oracle.build(variant)
    hf_dir, ckpt = str(root / "hf"), str(root / "ckpt")
    model.save_pretrained(hf_dir)
    from_hf(hf_dir, ckpt)
    cfg, params = api.load(ckpt)
    return dict(
        variant=variant,
        model=model,
        hf_dir=hf_dir,
        ckpt=ckpt,
        cfg=cfg,
        params=params,
        hybrid=hf_oracle.VARIANTS[variant]["hybrid"],
        root=root,
    )
