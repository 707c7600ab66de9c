"""`resolve_input_config`: a model's preprocessing from its checkpoint over the registry."""

import timeshift
from timeshift.models import ModelInfo, resolve_input_config
from timeshift.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, default_scale_size


def _tiny(**meta):
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=4)
    model.checkpoint_meta = dict(meta)
    return model


def test_registry_defaults_without_checkpoint_metadata():
    inputs = resolve_input_config(_tiny())
    info = ModelInfo(name="", family="", backbone="")
    assert (inputs.input_size, inputs.scale_size) == (info.input_size, 256)
    assert inputs.mean == IMAGENET_MEAN and inputs.std == IMAGENET_STD
    assert resolve_input_config(None) == inputs  # no model: the registry defaults


def test_checkpoint_metadata_wins_and_an_explicit_size_wins_over_it():
    model = _tiny(input_size=32, scale_size=36, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    inputs = resolve_input_config(model)
    assert (inputs.input_size, inputs.scale_size) == (32, 36)
    assert inputs.mean == (0.5, 0.5, 0.5) and inputs.std == (0.25, 0.25, 0.25)
    # another crop size (--size): the stored resize size belonged to the stored crop size
    bigger = resolve_input_config(model, input_size=64)
    assert (bigger.input_size, bigger.scale_size) == (64, default_scale_size(64))
    assert bigger.mean == (0.5, 0.5, 0.5)
    # older checkpoints without scale_size: the reference protocol's proportion
    assert resolve_input_config(_tiny(input_size=112)).scale_size == 128


def test_export_records_the_resolved_configuration(tmp_path):
    from timeshift.export import export_model

    model = _tiny(input_size=32, scale_size=36, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    result = export_model(model, tmp_path / "m.pt", format="torchscript")
    assert {k: result.meta[k] for k in ("input_size", "scale_size", "mean", "std")} == (
        resolve_input_config(model).as_meta()
    )
    # and what reads the export back resolves the same
    assert resolve_input_config(meta=result.meta) == resolve_input_config(model)
