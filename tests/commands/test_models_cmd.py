from detforge.commands.models import describe_models, main
from detforge.models.registry import create_model, list_models


def test_models_lists_every_registered_model(capsys):
    assert main(["--names-only"]) == 0
    names = capsys.readouterr().out.split()
    assert names == list_models() and "detforge_s" in names


def test_describe_counts_parameters_like_the_model():
    rows = describe_models("detforge_s")
    assert len(rows) == 1
    model = create_model("detforge_s")
    assert rows[0]["params"] == sum(p.numel() for p in model.parameters()) / 1e6
    assert rows[0]["input_size"] == tuple(model.default_input_size)


def test_table_output(capsys):
    assert main(["detforge_*"]) == 0
    out = capsys.readouterr().out
    assert "params (M)" in out and "detforge_s" in out and "fcos_<timm name>" in out
