"""Pipeline config: unknown keys, wrong types, --set overrides, tasks, cross-field checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_mtl.config import (
    PipelineConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
)
from recsys_mtl.errors import RecsysError

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- unknown keys, types


def test_unknown_key_suggests_the_close_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "[training]\nepoch = 3\n")
    with pytest.raises(RecsysError) as info:
        load_config(path)
    message = str(info.value)
    assert "unknown setting 'epoch'" in message
    assert "did you mean 'epochs'?" in message
    assert "[training]" in message  # where
    assert str(path) in message  # which file


def test_unknown_nested_key_and_unknown_section() -> None:
    with pytest.raises(RecsysError, match=r"did you mean 'n_users'\?") as info:
        config_from_dict({"source": {"synthetic": {"n_user": 10}}})
    assert "[source.synthetic]" in str(info.value)
    with pytest.raises(RecsysError, match=r"did you mean 'training'\?"):
        config_from_dict({"trainin": {"epochs": 3}})


def test_unknown_key_without_close_name_lists_known_keys() -> None:
    with pytest.raises(RecsysError, match=r"known keys: .*epochs.*batch_size"):
        config_from_dict({"training": {"zzzzzz": 1}})


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[training]\nepochs = "five"\n')
    with pytest.raises(RecsysError) as info:
        load_config(path)
    message = str(info.value)
    assert "'training.epochs' must be int" in message
    assert "'five'" in message


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"training": {"epochs": True}}, "training.epochs"),  # a bool is not an int
        ({"training": {"progress": 1}}, "training.progress"),
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
        ({"model": {"hidden_dims": 64}}, "model.hidden_dims"),
        ({"model": {"hidden_dims": [64, "x"]}}, "model.hidden_dims[1]"),
        ({"training": 3}, "training"),
    ],
)
def test_wrong_types_are_errors_naming_the_key(data: dict, key: str) -> None:
    with pytest.raises(RecsysError) as info:
        config_from_dict(data)
    assert f"'{key}'" in str(info.value)


def test_int_is_accepted_for_a_float_field() -> None:
    config = config_from_dict({"training": {"learning_rate": 1}})
    assert config.training.learning_rate == 1.0
    assert isinstance(config.training.learning_rate, float)


# ---------------------------------------------------------------------- overrides


def test_parse_override_types() -> None:
    assert parse_override("training.epochs=5") == (["training", "epochs"], 5)
    assert parse_override("training.learning_rate=0.01") == (
        ["training", "learning_rate"],
        0.01,
    )
    assert parse_override("model.hidden_dims=[8, 4]") == (["model", "hidden_dims"], [8, 4])
    assert parse_override("model.sharing=hard") == (["model", "sharing"], "hard")
    assert parse_override("retrieval.index=IVF16,Flat") == (["retrieval", "index"], "IVF16,Flat")
    assert parse_override('retrieval.index="HNSW32"') == (["retrieval", "index"], "HNSW32")
    assert parse_override("tracking.enabled=false") == (["tracking", "enabled"], False)


def test_set_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = _write(tmp_path, "[training]\nepochs = 3\n[model]\nsharing = 'other'\n")
    config = load_config(
        path,
        [
            "training.epochs=5",
            "training.learning_rate=0.01",
            "model.hidden_dims=[8, 4]",
            "model.sharing=hard",
            "source.synthetic.n_users=10",
        ],
    )
    assert config.training.epochs == 5
    assert config.training.learning_rate == 0.01
    assert config.model.hidden_dims == [8, 4]
    assert config.model.sharing == "hard"
    assert config.source.synthetic.n_users == 10
    # untouched settings keep their defaults
    assert config.source.synthetic.n_items == 500
    assert config.training.batch_size == 1024


def test_override_is_validated_like_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(RecsysError, match=r"'training\.epochs' must be int"):
        load_config(path, ["training.epochs=five"])  # bare string
    with pytest.raises(RecsysError, match="did you mean 'epochs'"):
        load_config(path, ["training.epoch=3"])
    with pytest.raises(RecsysError, match=r"training\.epochs must be positive"):
        load_config(path, ["training.epochs=0"])


def test_override_errors() -> None:
    with pytest.raises(RecsysError, match="has no '='"):
        apply_overrides({}, ["training.epochs"])
    with pytest.raises(RecsysError, match="'epochs' is not a section"):
        apply_overrides({"training": {"epochs": 3}}, ["training.epochs.x=1"])


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(RecsysError, match="not valid TOML"):
        load_config(_write(tmp_path, "[training\nepochs = 3\n"))


# ---------------------------------------------------------------------- tasks


def test_defaults() -> None:
    config = config_from_dict({})
    assert isinstance(config, PipelineConfig)
    assert list(config.tasks) == ["click", "purchase", "rating"]
    assert config.tasks["purchase"].depends_on == "click"
    assert config.tasks["click"].head == "dot"
    assert config.tasks["rating"].kind == "regression"


def test_tasks_merge_over_defaults() -> None:
    config = config_from_dict(
        {
            "tasks": {
                "rating": {"weight": 2.0},
                "watch": {"kind": "binary", "depends_on": "click"},
            }
        }
    )
    assert list(config.tasks) == ["click", "purchase", "rating", "watch"]
    rating = config.tasks["rating"]
    assert (rating.weight, rating.kind, rating.label) == (2.0, "regression", "rating")
    assert config.tasks["purchase"].depends_on == "click"  # untouched default
    watch = config.tasks["watch"]
    assert (watch.kind, watch.label, watch.depends_on, watch.head) == (
        "binary",
        "watch",  # label defaults to the task name
        "click",
        "mlp",
    )


def test_a_task_can_be_removed() -> None:
    config = config_from_dict({"tasks": {"rating": {"enabled": False}}})
    assert list(config.tasks) == ["click", "purchase"]


def test_unknown_task_setting_is_an_error() -> None:
    with pytest.raises(RecsysError, match="did you mean 'weight'") as info:
        config_from_dict({"tasks": {"rating": {"wieght": 2.0}}})
    assert "[tasks.rating]" in str(info.value)


def test_task_depending_on_unknown_task() -> None:
    with pytest.raises(RecsysError, match="task 'watch' depends on unknown task 'view'"):
        config_from_dict({"tasks": {"watch": {"depends_on": "view"}}})
    # removing click leaves purchase depending on nothing known
    with pytest.raises(RecsysError, match="depends on unknown task 'click'"):
        config_from_dict({"tasks": {"click": {"enabled": False}}})


def test_task_kind_and_dot_head_checks() -> None:
    with pytest.raises(RecsysError, match="kind 'ranking'"):
        config_from_dict({"tasks": {"rating": {"kind": "ranking"}}})
    with pytest.raises(RecsysError, match="exactly one binary task must use head = 'dot'"):
        config_from_dict({"tasks": {"purchase": {"head": "dot"}}})


# ---------------------------------------------------------------------- cross-field checks


@pytest.mark.parametrize(
    "features",
    [
        {"validation_fraction": 1.2},
        {"validation_fraction": -0.1},
        {"validation_fraction": 1.0},
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
        {"test_fraction": -0.2},
    ],
)
def test_fractions_out_of_range(features: dict) -> None:
    with pytest.raises(RecsysError, match="must lie in"):
        config_from_dict({"features": features})


def test_fractions_leaving_too_little_training_data() -> None:
    with pytest.raises(RecsysError, match="almost nothing to train on"):
        config_from_dict({"features": {"validation_fraction": 0.4, "test_fraction": 0.5}})
    config = config_from_dict({"features": {"validation_fraction": 0.0, "test_fraction": 0.3}})
    assert config.features.validation_fraction == 0.0


def test_unknown_source_kind_suggests() -> None:
    with pytest.raises(RecsysError, match="did you mean 'synthetic'"):
        config_from_dict({"source": {"kind": "synthetik"}})


@pytest.mark.parametrize(
    "data",
    [
        {"training": {"batch_size": 0}},
        {"retrieval": {"candidates": -1}},
        {"model": {"embedding_dim": 0}},
        {"evaluation": {"k": [10, 0]}},
    ],
)
def test_non_positive_sizes(data: dict) -> None:
    with pytest.raises(RecsysError, match="positive"):
        config_from_dict(data)


# ---------------------------------------------------------------------- shipped pipelines


def test_shipped_pipelines_load() -> None:
    demo = load_config(PIPELINES / "demo.toml")
    assert demo.pipeline.name == "demo"
    assert demo.source.kind == "synthetic"
    assert demo.source.synthetic.n_users == 2000
    assert demo.tasks["rating"].weight == 0.5
    assert demo.retrieval.fusion == {"click": 1.0, "purchase": 1.0, "rating": 0.0}

    movielens = load_config(PIPELINES / "movielens-100k.toml")
    assert movielens.source.kind == "movielens"
    assert movielens.source.movielens.variant == "100k"
    assert movielens.features.negatives_per_positive == 4

    smoke = load_config(PIPELINES / "smoke.toml")
    assert smoke.pipeline.seed == 7
    assert smoke.training.epochs == 3
    assert smoke.training.progress is False
    assert smoke.model.hidden_dims == [16]
    assert smoke.source.synthetic.n_items == 80


def test_flat_params_are_dotted_strings() -> None:
    params = config_from_dict({"training": {"epochs": 4}}).flat_params()
    assert params["training.epochs"] == "4"
    assert params["tasks.purchase.depends_on"] == "click"
    assert params["source.synthetic.n_users"] == "2000"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"purchase": {"depends_on": "rating"}}, "both must be binary"),
        ({"rating": {"depends_on": "click"}}, "both must be binary"),
        ({"purchase": {"depends_on": "purchase"}}, "cycle: purchase -> purchase"),
        (
            {"a": {"depends_on": "b"}, "b": {"depends_on": "a"}},
            "cycle: a -> b -> a",
        ),
    ],
)
def test_task_dependencies_that_cannot_be_trained(tasks: dict, message: str) -> None:
    """These once passed validation and crashed in training (KeyError / ValueError)."""
    with pytest.raises(RecsysError, match=message):
        config_from_dict({"tasks": tasks})


def test_chained_binary_dependencies_are_accepted() -> None:
    config = config_from_dict({"tasks": {"repeat": {"depends_on": "purchase"}}})
    assert config.tasks["repeat"].depends_on == "purchase"
