"""Dual-encoder retrieval evaluation whose memory does not grow with N x M (chunked scoring).

The scorer itself is the library's (``beit3_plugins.vl_tasks.metrics.recall_at_k_chunked``, which the
retrieval task's evaluation uses); this module keeps its historical name for the benchmark children.
"""
from __future__ import annotations

from beit3_plugins.vl_tasks.metrics import recall_at_k_chunked as chunked_recall_at_k

__all__ = ["chunked_recall_at_k"]
