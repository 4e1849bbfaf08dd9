import pytest
import torch
from torch import nn

from splitnn import ModelSpec, SplitError, build_model, cut_shapes, model_names, register_model
from splitnn.model_registry import is_model_name, model_entry
from splitnn.models import architecture_fingerprint, fingerprint_module, num_blocks


def test_the_built_ins_are_registered() -> None:
    assert {"vgg5", "small_cnn", "tiny"} <= set(model_names())


def test_a_users_model_registers_without_editing_ours() -> None:
    def two_layers(spec: ModelSpec) -> list[nn.Module]:
        return [
            nn.Flatten(),
            nn.Linear(spec.input_shape[0] * spec.input_shape[1], spec.num_classes),
        ]

    register_model("two_layers_test", two_layers, input_rank=2)
    register_model("two_layers_test", two_layers, input_rank=2)  # importing twice is harmless
    assert "two_layers_test" in model_names()
    spec = ModelSpec("two_layers_test", (3, 5), 4)
    assert cut_shapes(spec) == [(15,), (4,)]
    with pytest.raises(SplitError, match="rank 2"):
        build_model(ModelSpec("two_layers_test", (3, 5, 5), 4))
    with pytest.raises(SplitError, match="already registered"):
        register_model("two_layers_test", lambda spec: [nn.Identity()])


def test_module_callable_models_are_imported_and_called_with_what_they_declare() -> None:
    spec = ModelSpec("tests.user_models:pixel_net", (3, 8, 8), 5)
    assert num_blocks(spec) == 4
    assert cut_shapes(spec)[-1] == (5,)
    assert build_model(spec)(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    fixed = ModelSpec("tests.user_models:no_arguments", (1, 8, 8), 10)
    assert num_blocks(fixed) == 2


def test_the_fingerprint_tells_architectures_apart_but_not_weights() -> None:
    one = ModelSpec("tests.user_models:pixel_net", (3, 8, 8), 5)
    other = ModelSpec("tests.user_models:wider_pixel_net", (3, 8, 8), 5)
    assert architecture_fingerprint(one) != architecture_fingerprint(other)
    torch.manual_seed(1)
    first = build_model(one)
    torch.manual_seed(2)
    second = build_model(one)
    assert not torch.equal(first.state_dict()["0.0.weight"], second.state_dict()["0.0.weight"])
    assert fingerprint_module(first) == fingerprint_module(second) == architecture_fingerprint(one)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("resnet", "unknown model"),
        ("tests.no_such_module:make", "cannot import"),
        ("tests.user_models:missing", "no callable"),
        ("tests.user_models:not_a_chain", "must return an nn.Sequential"),
        ("tests.user_models:broken", "out of coffee"),
    ],
)
def test_bad_model_names_are_one_clear_error(name: str, problem: str) -> None:
    with pytest.raises(SplitError, match=problem):
        build_model(ModelSpec(name, (3, 8, 8), 5)) if ":" in name else ModelSpec(name, (3, 8, 8), 5)


def test_a_model_whose_output_is_not_the_class_scores_is_refused() -> None:
    spec = ModelSpec("tests.user_models:pixel_net", (3, 6, 8), 5)  # 6x8: Linear sized for 6x8
    assert cut_shapes(spec)[-1] == (5,)
    with pytest.raises(SplitError, match="fails on the output"):
        cut_shapes(ModelSpec("tests.user_models:no_arguments", (1, 6, 6), 10))


def test_name_forms_are_recognised_without_importing() -> None:
    assert is_model_name("vgg5")
    assert is_model_name("some.package:factory")
    assert not is_model_name("not a model")
    assert model_entry("vgg5").input_rank == 3


def test_a_model_module_in_the_working_directory_is_found(tmp_path, monkeypatch) -> None:
    """As ``python -m`` would: the ``ares`` script itself does not put the directory on the path."""
    (tmp_path / "cwd_nets_for_test.py").write_text(
        "from torch import nn\n\n\ndef make(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    assert num_blocks(ModelSpec("cwd_nets_for_test:make", (3, 2, 2), 4)) == 2
