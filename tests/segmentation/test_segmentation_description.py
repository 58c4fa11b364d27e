"""Every checkpoint ``Beit3Runner`` saves carries the segmentor backbone's description (``model_config``,
added by ``ModelDescriptionHook``): the backbone loads from ``iter_N.pth`` by path alone."""
import torch
from torch import nn

from beit3_plugins.backbones import build_backbone
from beit3_plugins.zoo import describe


def test_mmengine_checkpoint_describes_its_backbone(tmp_path):
    from beit3_plugins.segmentation import Beit3Runner

    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.beit3 = build_backbone("beit3_tiny", img_size=32)   # the segmentor layout: backbone.beit3.*
    runner = Beit3Runner(model=model, work_dir=str(tmp_path))
    runner.save_checkpoint(str(tmp_path), "iter_1.pth", save_optimizer=False, save_param_scheduler=False)
    config = describe(tmp_path / "iter_1.pth").config
    assert (config.task, config.backbone, config.image_size, config.trained_by) == ("segmentation", "beit3_tiny", 32,
                                                                                     "mmseg")
    loaded = build_backbone("beit3_tiny", pretrained=str(tmp_path / "iter_1.pth"))
    trained = model.backbone.beit3.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
