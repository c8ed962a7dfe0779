import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The edge models are tiny: one intra-op thread is faster than two and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_step_checkpoint(path, model_name: str, data: str, imgsz: int = 64):
    """A one-step ``detforge train``-style checkpoint of an edge model (ObjectDetector with ``model=``)."""
    import lightning as L

    from detforge.data.datamodule import DetectionDataModule
    from detforge.models.detector import ObjectDetector

    dm = DetectionDataModule(data=data, imgsz=imgsz, batch_size=2, num_workers=0, train_size=2)
    dm.setup("fit")
    model = ObjectDetector(
        model=model_name,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        in_chans=int(dm.train_dataset[0][0].shape[0]),
        imgsz=imgsz,
        compile_model=False,
        deterministic=False,
    )
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    trainer.save_checkpoint(path, weights_only=True)
    return path


@pytest.fixture
def one_step_checkpoint():
    """``one_step_checkpoint(path, model_name, data, imgsz=64) -> path``: a tiny trained edge checkpoint."""
    return _one_step_checkpoint
