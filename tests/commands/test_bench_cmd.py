import torch

from detforge.commands.bench import bench, main
from detforge.models.fcos import FCOS


def test_bench_times_forward_and_postprocess():
    model = FCOS("test_resnet", num_classes=3, fpn_channels=16, head_num_convs=1, extra_levels=0).eval()
    calls = []
    post = model.postprocess
    model.postprocess = lambda outputs, sizes: calls.append(sizes) or post(outputs, sizes)
    result = bench(model, torch.rand(2, 3, 64, 64), iters=2, warmup=1)
    assert result["forward_ms"] > 0 and result["postprocess_ms"] > 0
    assert len(calls) == 3 and calls[0] == [(64, 64), (64, 64)]


def test_bench_command(capsys):
    assert (
        main(["--model", "detforge_n", "--imgsz", "64", "--iters", "1", "--warmup", "0", "--device", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ms/image" in out and "BatchNorm layers folded into their convolutions" in out
    assert (
        main(["--imgsz", "64", "--iters", "1", "--warmup", "0", "--device", "cpu", "--no-fold-batchnorm"])
        == 0
    )
    assert "folded" not in capsys.readouterr().out
