from pathlib import Path

import pytest

from lookcloser.config import RunConfig
from lookcloser.models import list_models, model_options

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_real_options(path):
    cfg = RunConfig.load(path)
    assert cfg.model.method in list_models() and path.name.startswith(cfg.model.method + "_")
    assert set(cfg.model.options) <= set(model_options(cfg.model.method))


def _load(name):
    return RunConfig.load(Path(__file__).resolve().parent.parent / "recipes" / name)


def test_wsdan_paper_recipes_are_the_papers_settings():
    for name in ("wsdan_paper.yaml", "wsban_paper.yaml"):
        cfg = _load(name)
        assert cfg.model.backbone == "inception_v3.tv_in1k" and cfg.model.options["feature_stage"] == 3
        assert cfg.model.pretrained and cfg.train.head_epochs == 0  # ImageNet weights; no heads-first, as the paper
        assert cfg.data.image_size == 448 and cfg.train.lr == 0.001 and cfg.train.gamma == 0.9
        assert cfg.model.options["attention_init"] == "pretrained" and cfg.data.squash
        assert cfg.model.options["center_update"] == "official" and cfg.train.epochs == 160


def test_rra_recipes_build_with_ten_steps_and_224_patches():
    from lookcloser.models import create_model
    from tests.conftest import TINY_BACKBONE

    for name in ("rra_paper.yaml", "rra_lite0.yaml"):
        cfg = _load(name)
        options = {k: v for k, v in cfg.model.options.items() if k not in ("local_backbone", "local_stride")}
        model = create_model("rra", backbone=TINY_BACKBONE, num_classes=3, **options)
        assert model.steps == 10 and model.patch_size == 224 and model.box_size == 0.32
    paper = _load("rra_paper.yaml")
    assert paper.model.backbone == paper.model.options["local_backbone"] == "vgg19.tv_in1k"
    assert paper.data.squash and not paper.data.hflip and paper.data.batch_size == 32


def test_official_recipe_is_the_official_code_setting():
    cfg = _load("tasn_paper.yaml")
    o = cfg.model.options
    assert (o["softmax_scale"], o["square_structure"], o["distinct_channels"], o["heads"]) == (7.0, True, True, "official")
    assert (o["distill_weight"], o["detach_soft_targets"], o["attention_strides"]) == (1.0, False, "remove")
    assert (cfg.data.rotation, cfg.data.pca_lighting, cfg.data.color_jitter) == (30.0, 0.1, 0.4)
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.lr) == (0.0, 0.0, 0.1)



def test_unknown_field_in_recipe_is_named(tmp_path):
    from lookcloser.errors import LookcloserError

    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(LookcloserError, match="epocs"):
        RunConfig.load(p)


def test_cli_values_override_yaml_and_are_validated():
    from lookcloser.errors import LookcloserError

    cfg = RunConfig.load(RECIPES[0]).merged({"train": {"epochs": 2, "lr": None}})
    assert cfg.train.epochs == 2 and cfg.train.lr == RunConfig.load(RECIPES[0]).train.lr
    with pytest.raises(LookcloserError, match="label_smoothing"):
        RunConfig().merged({"train": {"label_smoothing": 1.5}})
    with pytest.raises(LookcloserError, match="must be true or false"):
        RunConfig.from_dict({"train": {"bf16": "yes"}})


def test_every_flag_a_recipe_names_exists():
    """A recipe's comments tell users what to pass: each ``--flag`` they name must be an option of train."""
    import re

    from lookcloser.cli import train

    known = {"--" + f.replace("_", "-") for _, f in train.config_fields}
    known |= {"--no-" + k[2:] for k in known} | {"--out", "--config", "--resume", "--option", "--quiet", "--data"}
    for recipe in RECIPES:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", Path(recipe).read_text()))
        assert named <= known, (recipe, named - known)
