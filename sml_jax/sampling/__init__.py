"""Prefill + decode with a KV cache, multi-turn, batched, sharded.

    from sml_jax.sampling import Sampler, TurnOutput, ChatState
"""

from sml_jax.sampling.forward import KVCache
from sml_jax.sampling.sampler import ChatState, Sampler, TurnOutput

__all__ = ["ChatState", "KVCache", "Sampler", "TurnOutput"]
