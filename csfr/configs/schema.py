"""The one schema every config is checked against: each field's type and range.

A value of the wrong type or out of range (`--set train.lr=abc`, `train.iters=0`) is refused
with one line naming the key, the value and what is expected, before anything is built. The
open sections (`model.options`, `data.options`, `data.val_options`, `notes`) are only checked
to be objects: their keys belong to `csfr.models.build` and `csfr.data.build_dataset`, which
check them. Scalars are strict (`true` is not an integer, `"3"` is not a number); an integer is
accepted where a number is expected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from csfr.ops.dispatch import USER_NAMES as BACKENDS


def _int(low: int, what: str):
    return Annotated[int, Field(strict=True, ge=low, description=what)]


def _ascending(pair: list[float]) -> list[float]:
    if pair[0] > pair[1]:
        raise ValueError("the pair must be ascending")
    return pair


PositiveInt = _int(1, "an integer >= 1")
NonNegativeInt = _int(0, "an integer >= 0")
Name = Annotated[str, Field(strict=True, min_length=1, description="a non-empty string")]
Path = Annotated[str | None, Field(strict=True, description="a path (string) or null")]
Flag = Annotated[bool, Field(strict=True, description="true or false")]
Section = Annotated[dict[str, Any], Field(description="an object of key: value pairs")]
Pair = Annotated[list[PositiveInt], Field(min_length=2, max_length=2, description="a pair [h, w] of integers >= 1")]
Size = Annotated[PositiveInt | Pair, Field(description="an integer >= 1 or a pair [a, b] of integers >= 1")]
Ratios = Annotated[list[Annotated[float, Field(strict=True, gt=0)]], Field(min_length=2, max_length=2),
                   AfterValidator(_ascending), Field(description="an ascending pair [low, high] of numbers > 0")]


AMP_MODES = ("none", "bfloat16", "float16")  # train.amp; csfr.engine.precision applies them
COMPILE_MODES = ("none", "default", "reduce-overhead")  # train.compile: torch.compile's mode, or none
SCALES = (0.125, 4.0)  # test scales outside this make no sense and, large, exhaust memory


def _number(what: str, **bounds):
    return Annotated[float, Field(strict=True, description=what, **bounds)]


def _choice(*values: str):
    return Annotated[Literal[values], Field(description="one of " + ", ".join(map(repr, values)))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    name: Name
    pretrained: Path
    options: Section


class DataConfig(_Strict):
    dataset: Name
    root: Path
    train_split: Name
    val_split: Name
    options: Section
    base_size: Size
    crop_size: Size
    ratio_range: Ratios
    cat_max_ratio: _number("a number in (0, 1]", gt=0, le=1)
    flip: Flag
    photometric: Flag
    workers: NonNegativeInt
    val_options: Section


class TrainConfig(_Strict):
    iters: PositiveInt
    batch_size: PositiveInt
    accum_steps: PositiveInt
    lr: _number("a number > 0", gt=0)
    min_lr: _number("a number >= 0", ge=0)
    momentum: _number("a number in [0, 1)", ge=0, lt=1)
    weight_decay: _number("a number >= 0", ge=0)
    poly_power: _number("a number >= 0", ge=0)
    head_lr_mult: _number("a number > 0", gt=0)
    warmup_iters: NonNegativeInt
    warmup_ratio: _number("a number in (0, 1]", gt=0, le=1)
    amp: _choice(*AMP_MODES)
    # a default: configs saved before the field existed (in checkpoints) stay valid
    compile: _choice(*COMPILE_MODES) = "none"
    sync_bn: Flag
    seed: NonNegativeInt
    device: _choice("auto", "cpu", "cuda")
    backend: _choice("auto", *BACKENDS)
    log_interval: PositiveInt
    val_interval: Annotated[int, Field(strict=True, ge=0, description="an integer >= 0 (0: only at the end)")]
    ckpt_interval: PositiveInt
    keep_checkpoints: Annotated[int, Field(strict=True, ge=0, description="an integer >= 0 (0: keep all)")]


class EvalConfig(_Strict):
    mode: _choice("whole", "slide")
    crop_size: Pair
    stride: Pair
    base_size: Annotated[Size | None, Field(description="null, an integer >= 1 or a pair [a, b] of integers >= 1")]
    scales: Annotated[list[_number(f"a number in [{SCALES[0]}, {SCALES[1]}]", ge=SCALES[0], le=SCALES[1])],
                      Field(min_length=1, description=f"a non-empty list of numbers in [{SCALES[0]}, {SCALES[1]}]")]
    flip: Flag
    save_predictions: NonNegativeInt


class Config(_Strict):
    notes: Section = {}
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig


def _field(loc: tuple) -> tuple[list[str], Any]:
    """The config keys of an error location (pydantic adds union members and list indices after
    the field's name) and the schema entry of the last one."""
    model, keys, info = Config, [], None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        keys.append(part)
        info = fields[part]
        model = info.annotation
    return keys, info


def _lookup(config: dict, keys: list[str]) -> Any:
    for key in keys:
        config = config[key]
    return config


def validate(config: dict) -> None:
    """Raise ValueError, in one line, for the first field whose type or range is wrong
    (the key, the value, what is expected); a valid config passes unchanged."""
    try:
        Config.model_validate(config)
    except ValidationError as e:
        error = e.errors()[0]
        keys, info = _field(error["loc"])
        where = ".".join(keys) or "the top level"
        if error["type"] == "extra_forbidden":
            name = error["loc"][len(keys)]
            valid = ", ".join(sorted((info.annotation if keys else Config).model_fields))
            raise ValueError(f"config: unknown key {name!r} in {where}; valid keys: {valid}") from None
        if error["type"] == "missing":
            raise ValueError(f"config: {where} is missing") from None
        value = _lookup(config, keys)
        expected = info.description if info is not None and info.description else error["msg"]
        raise ValueError(f"config: {where} must be {expected}, got {value!r}") from None
