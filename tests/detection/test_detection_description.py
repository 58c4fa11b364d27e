"""A detectron2 checkpoint of our detector carries its backbone's description (``model_config``): the
backbone loads from it by path alone, with the resolution it was trained at."""
import torch
from torch import nn

from beit3_plugins.backbones import build_backbone
from beit3_plugins.detection.backbone import Beit3ViTDetSpec, build_beit3_net
from beit3_plugins.detection.engine import SafeDetectionCheckpointer
from beit3_plugins.zoo import describe


def test_detectron2_checkpoint_describes_its_backbone(tmp_path):
    torch.manual_seed(0)
    net = build_beit3_net(Beit3ViTDetSpec(name="beit3_tiny", img_size=64, drop_path_rate=0.0, window_size=4))
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = net          # the detector's key layout: backbone.net.beit3.*
    SafeDetectionCheckpointer(model, str(tmp_path)).save("model_final", iteration=1)
    config = describe(tmp_path / "model_final.pth").config
    assert (config.task, config.backbone, config.image_size, config.trained_by) == ("detection", "beit3_tiny", 64,
                                                                                     "detectron2")
    backbone = build_backbone("beit3_tiny", pretrained=str(tmp_path / "model_final.pth"), strict=False)
    assert backbone.cfg.img_size == 64
    trained = net.beit3.state_dict()  # the vision part (the detector prunes the text experts)
    assert len(backbone.load_report.loaded) == len(trained)
    assert all(torch.equal(v, trained[k]) for k, v in backbone.state_dict().items() if k in trained)
