"""Search your own images (installed as ``beit3_plugins.search``): what clip-retrieval does for CLIP, for the
BEiT-3 / VLMo dual encoders, over the pipelines layer::

    beit3-plugins embed --images photos/ --model beit3_base_itc_patch16_224 --out emb/images
    beit3-plugins embed --texts captions.txt --model beit3_base_itc_patch16_224 --out emb/texts
    beit3-plugins index emb/images emb/texts          # FAISS; reports recall@10 and memory
    beit3-plugins query --image-index emb/images --text "a dog on a sofa"
    beit3-plugins serve --images emb/images --texts emb/texts     # http://127.0.0.1:8000/

Python: :func:`run_embed`, :func:`build_index`, :class:`SearchIndex`, :class:`Searcher`, :func:`create_app`.
Needs the ``[search]`` extra (faiss-cpu, pyarrow, starlette, uvicorn, python-multipart). docs/search.md.
"""
from .embed import EmbedConfig, run_embed
from .index import IndexConfig, SearchIndex, Searcher, build_and_save, build_index
from .model import ModelSpec
from .store import EmbeddingSet

__all__ = ["EmbedConfig", "run_embed", "IndexConfig", "build_index", "build_and_save", "SearchIndex", "Searcher",
           "ModelSpec", "EmbeddingSet", "create_app", "ServeConfig"]


def __getattr__(name):  # the ASGI app imports starlette only when asked for
    if name in ("create_app", "ServeConfig"):
        from . import serve

        return getattr(serve, name)
    raise AttributeError(name)
