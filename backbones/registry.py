"""The backbones layer's child of the root ``BACKBONES`` registry (mmengine's parent/scope/locations).

Registering here lands under scope ``backbones``; a lookup on the root finds these names in a fresh
process because ``setup.py`` lists this module under the ``beit3_plugins`` entry-point group.
"""
from beit3_plugins.registry import BACKBONES as ROOT_BACKBONES
from beit3_plugins.registry import Registry

BACKBONES = Registry("backbone", parent=ROOT_BACKBONES, scope="backbones",
                     locations=["beit3_plugins.backbones.variants"])

__all__ = ["BACKBONES"]
