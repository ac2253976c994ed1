from pathlib import Path

import pytest

from lookcloser.config import RunConfig
from lookcloser.models import list_models, model_options

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_real_options(path):
    cfg = RunConfig.load(path)
    assert cfg.model.method in list_models()
    assert set(cfg.model.options) <= set(model_options(cfg.model.method))


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
