"""Configuration: TOML files and ``--set`` overrides read into typed, validated dataclasses."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import (
    Config,
    DataConfig,
    ExportConfig,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    dump_toml,
    load_config,
)
from pipeline.errors import ConfigError

RECIPE = """\
[run]
name = "exp"
seed = 7

[data]
name = "cifar10"
workers = 1

[model]
name = "resnet32"
shortcut = "B"

[preprocess]
input_size = 24
mean = [0.5, 0.5, 0.5]

[train]
epochs = 5
lr = 0.05
sizes = [16, 24]
"""


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, sets: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, sets or [])
    return str(info.value)


# --- reading a file and applying --set -------------------------------------------------

def test_file_values_are_read_and_the_rest_are_defaults(tmp_path):
    cfg = load_config(write(tmp_path, RECIPE))

    assert cfg.run == RunConfig(name="exp", seed=7)
    assert cfg.data == DataConfig(name="cifar10", workers=1)
    assert cfg.model == ModelConfig(name="resnet32", shortcut="B")
    assert cfg.preprocess.input_size == 24
    assert cfg.preprocess.mean == (0.5, 0.5, 0.5)
    assert cfg.preprocess.std == PreprocessConfig().std
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.05
    assert cfg.train.sizes == (16, 24)
    assert cfg.train.batch_size == TrainConfig().batch_size
    assert cfg.export == ExportConfig()


def test_no_file_gives_the_defaults():
    assert load_config(None) == Config()


def test_set_overrides_take_effect_with_their_types(tmp_path):
    cfg = load_config(write(tmp_path, RECIPE), [
        "train.epochs=3",
        "preprocess.mean=[0.1,0.2,0.3]",
        "data.path=/x",
        "train.flip=true",
        "train.lr=1",
        "model.name=resnet56",
    ])

    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.preprocess.mean == (0.1, 0.2, 0.3)
    assert all(type(v) is float for v in cfg.preprocess.mean)
    assert cfg.data.path == "/x"  # not TOML syntax: taken as a bare string
    assert cfg.train.flip is True
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float  # int coerced for a float field
    assert cfg.model.name == "resnet56"
    # values the overrides did not touch still come from the file
    assert cfg.train.sizes == (16, 24)
    assert cfg.run.name == "exp"


def test_set_overrides_work_without_a_file():
    cfg = load_config(None, ["train.epochs=2", 'run.name="42"', "data.path=/a=b"])
    assert cfg.train.epochs == 2
    assert cfg.run.name == "42"  # quoted: a string, not an integer
    assert cfg.data.path == "/a=b"  # only the first '=' separates key and value


def test_later_set_wins():
    assert load_config(None, ["train.epochs=2", "train.epochs=4"]).train.epochs == 4


# --- refusing bad keys and values --------------------------------------------------------

def test_unknown_key_in_file_names_file_key_and_known_keys(tmp_path):
    path = write(tmp_path, "[train]\nepoch = 3\n")
    msg = config_error(path)
    assert str(path) in msg
    assert "train.epoch" in msg
    assert "epochs" in msg and "batch_size" in msg and "schedule" in msg


def test_unknown_section_is_refused(tmp_path):
    path = write(tmp_path, "[trian]\nepochs = 3\n")
    msg = config_error(path)
    assert str(path) in msg
    assert "trian" in msg
    assert "train" in msg.replace("trian", "")  # the known sections are listed


def test_unknown_key_from_set_is_refused():
    msg = config_error(None, ["model.widht=3"])
    assert "model.widht" in msg and "width" in msg


@pytest.mark.parametrize("line, key, expected", [
    ('epochs = "ten"', "train.epochs", "an integer"),
    ("epochs = true", "train.epochs", "an integer"),  # a bool is not an int
    ("epochs = 2.5", "train.epochs", "an integer"),
    ('flip = "yes"', "train.flip", "true or false"),
    ('lr = "fast"', "train.lr", "a number"),
    ("lr = true", "train.lr", "a number"),
    ("sizes = 16", "train.sizes", "a list"),
    ("schedule = 3", "train.schedule", "a string"),
])
def test_wrong_type_in_file_is_refused(tmp_path, line, key, expected):
    path = write(tmp_path, f"[train]\n{line}\n")
    msg = config_error(path)
    assert str(path) in msg
    assert key in msg
    assert f"expected {expected}" in msg


@pytest.mark.parametrize("item, key", [
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.lr=0", "train.lr"),
    ('train.schedule="linear"', "train.schedule"),
    ("train.schedule=linear", "train.schedule"),
    ("train.warmup_fraction=1", "train.warmup_fraction"),
    ("train.sizes=[4, 32]", "train.sizes"),
    ("preprocess.std=[0,1,1]", "preprocess.std"),
    ("preprocess.mean=[0.1,0.2]", "preprocess.mean"),
    ("preprocess.input_size=4", "preprocess.input_size"),
    ("preprocess.interpolation=lanczos", "preprocess.interpolation"),
    ("model.shortcut=C", "model.shortcut"),
    ("data.workers=0", "data.workers"),
    ("export.opset=11", "export.opset"),
    ("export.min_agreement=1.5", "export.min_agreement"),
])
def test_out_of_range_values_are_refused(item, key):
    msg = config_error(None, [item])
    assert key in msg
    assert "expected" in msg


def test_out_of_range_value_in_file_names_the_file(tmp_path):
    path = write(tmp_path, '[train]\nschedule = "linear"\n')
    msg = config_error(path)
    assert str(path) in msg and "train.schedule" in msg and "expected" in msg
    assert "onecycle" in msg and "cosine" in msg  # the allowed choices are listed


def test_schedule_choices_are_accepted():
    assert load_config(None, ["train.schedule=cosine"]).train.schedule == "cosine"


def test_section_that_is_not_a_table_is_refused(tmp_path):
    msg = config_error(write(tmp_path, "train = 3\n"))
    assert "train" in msg and "expected a table" in msg


@pytest.mark.parametrize("item", ["epochs=3", "train.epochs", "=3", "train"])
def test_bad_set_syntax_is_refused(item):
    msg = config_error(None, [item])
    assert item in msg
    assert "section.key=value" in msg


def test_set_into_a_non_section_is_refused(tmp_path):
    msg = config_error(write(tmp_path, "train = 3\n"), ["train.epochs=2"])
    assert "train.epochs=2" in msg and "not a section" in msg


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nope.toml"
    msg = config_error(path)
    assert str(path) in msg and "not found" in msg


def test_invalid_toml_is_named(tmp_path):
    path = write(tmp_path, "[train\nepochs = 3\n")
    msg = config_error(path)
    assert str(path) in msg and "not valid TOML" in msg


def test_directory_as_config_file_is_a_config_error(tmp_path):
    msg = config_error(tmp_path)
    assert str(tmp_path) in msg


def test_non_utf8_config_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("# café\n[train]\nepochs = 3\n".encode("latin-1"))
    msg = config_error(path)
    assert str(path) in msg


# --- writing the resolved configuration back ---------------------------------------------

def nondefault_config(tmp_path: Path) -> Config:
    return Config(
        run=RunConfig(name='exp "quoted" \\ back', root=str(tmp_path / "build"), seed=3),
        data=DataConfig(name="cifar10", path="/data/ümlaut dir", root="d", download=True, workers=1),
        model=ModelConfig(name="resnet18", shortcut="A", width=32, zero_init_residual=True,
                          weights="w.pth"),
        preprocess=PreprocessConfig(input_size=40, resize=48, mean=(0.1, 0.2, 0.3),
                                    std=(0.25, 0.5, 1.0), interpolation="bicubic"),
        train=TrainConfig(epochs=3, batch_size=7, lr=1e-5, weight_decay=0.0, schedule="cosine",
                          label_smoothing=0.1, flip=True, sizes=(16, 24, 40), nesterov=False,
                          precision="bf16", device="cpu", threads=2, resume=True),
        export=ExportConfig(opset=19, parity_images=5, atol=2.5e-4, min_agreement=1.0),
    )


@pytest.mark.parametrize("make", [lambda tmp: Config(), nondefault_config], ids=["defaults", "custom"])
def test_dump_toml_round_trips(tmp_path, make):
    cfg = make(tmp_path)
    path = write(tmp_path, dump_toml(cfg), "resolved.toml")
    back = load_config(path)
    assert back == cfg
    assert dump_toml(back) == dump_toml(cfg)


def test_dump_toml_lists_every_section_and_key():
    text = dump_toml(Config())
    for section in ("run", "data", "model", "preprocess", "train", "export"):
        assert f"[{section}]" in text
    assert "sizes = []" in text
    assert "flip = false" in text


def test_dump_of_a_loaded_recipe_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, RECIPE), ["train.lr=1", "data.path=/x"])
    assert load_config(write(tmp_path, dump_toml(cfg), "again.toml")) == cfg


def test_dump_toml_round_trips_a_newline_in_a_string(tmp_path):
    cfg = Config(run=RunConfig(name="two\nlines"))
    assert load_config(write(tmp_path, dump_toml(cfg), "resolved.toml")) == cfg


def test_config_dict_round_trips(tmp_path):
    cfg = nondefault_config(tmp_path)
    plain = config_to_dict(cfg)
    assert plain["train"]["sizes"] == [16, 24, 40]  # tuples become lists
    assert config_from_dict(plain) == cfg


# --- derived values ---------------------------------------------------------------------

def test_run_name_explicit_wins():
    cfg = Config(run=RunConfig(name="mine"), data=DataConfig(path="/data/flowers"))
    assert cfg.run_name == "mine"
    assert cfg.run_dir == Path("build") / "mine"


def test_run_name_from_dataset_name_and_model():
    cfg = Config(data=DataConfig(name="cifar10"), model=ModelConfig(name="resnet56"))
    assert cfg.run_name == "cifar10-resnet56"


def test_run_name_from_data_path_basename(tmp_path):
    tree = tmp_path / "flowers"
    cfg = Config(run=RunConfig(root=str(tmp_path / "b")),
                 data=DataConfig(name="cifar10", path=str(tree) + "/"))
    assert cfg.run_name == "flowers-resnet20"
    assert cfg.run_dir == tmp_path / "b" / "flowers-resnet20"


def test_model_options_only_those_set():
    assert ModelConfig().options() == {}
    assert ModelConfig(shortcut="B").options() == {"shortcut": "B"}
    assert ModelConfig(width=32, zero_init_residual=True).options() == {
        "width": 32, "zero_init_residual": True}
    assert ModelConfig(name="resnet18", weights="w.pth").options() == {}
