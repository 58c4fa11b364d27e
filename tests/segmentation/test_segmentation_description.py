"""Every checkpoint ``Beit3Runner`` saves carries the segmentor backbone's description (``model_config``, added
by its ``ModelDescriptionHook`` in mmengine's ``before_save_checkpoint``): the backbone loads from ``iter_N.pth``
by path alone."""
import torch
from torch import nn

from beit3_plugins.backbones import build_backbone
from beit3_plugins.zoo import describe


def test_mmengine_checkpoint_describes_its_backbone(tmp_path):
    from mmengine.runner.checkpoint import save_checkpoint

    from beit3_plugins.segmentation import Beit3Runner
    from beit3_plugins.segmentation.runner import ModelDescriptionHook

    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.beit3 = build_backbone("beit3_tiny", img_size=32)   # the segmentor layout: backbone.beit3.*
    runner = Beit3Runner(model=model, work_dir=str(tmp_path))
    hooks = [h for h in runner.hooks if isinstance(h, ModelDescriptionHook)]
    assert len(hooks) == 1
    # what Runner.save_checkpoint does around its hooks (it also needs a built train dataloader for its meta)
    checkpoint = {"meta": {"iter": 1}, "state_dict": runner.model.state_dict()}
    runner.call_hook("before_save_checkpoint", checkpoint=checkpoint)
    save_checkpoint(checkpoint, str(tmp_path / "iter_1.pth"))
    config = describe(tmp_path / "iter_1.pth").config
    assert (config.task, config.backbone, config.image_size, config.trained_by) == ("segmentation", "beit3_tiny", 32,
                                                                                     "mmseg")
    loaded = build_backbone("beit3_tiny", pretrained=str(tmp_path / "iter_1.pth"))
    trained = model.backbone.beit3.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
