"""Faster decoding for `AdapterModel`: a compiled decode step with a static KV cache and one LoRA slot adapters are
swapped into (`CompiledDecode`), and a cache of the previous turn's prompt so a follow-up question only prefills
its new tokens (`TurnCache`)."""

from __future__ import annotations

from typing import Any, Sequence

from trainer.train.model import ModelError


COMPILED_SLOT = "_compiled_slot"
"""The LoRA slot the compiled decode step runs: each adapter's weights are copied into it when it is activated (no
user-facing adapter name can start with `_`)."""


class CompiledDecode:
    """Streamed answers decoded with a static KV cache and a `torch.compile`d decode step, every adapter served
    through one LoRA slot, so switching adapters never recompiles.

    Op by op, an unmerged adapter adds two small matmuls per targeted projection to every decode step (448 for
    Mistral-7B), bound by kernel launches: on the H200, 26 tokens/s for the 4-bit base against 9.4 with one adapter.
    Compiled (with CUDA graphs on a GPU: mode `reduce-overhead`), a decode step is one graph. The graph runs the slot
    `COMPILED_SLOT`, whose ranks are padded to the largest loaded rank and whose scalings are tensors (PEFT's
    `prepare_model_for_compiled_hotswap`); activating an adapter copies its weights into the slot (PEFT's
    `hotswap_adapter_from_state_dict`), so only tensor values change and the graph is reused. The base alone (adapters
    disabled) is a second graph. Prefill stays eager (transformers compiles the decode step only). A conversation
    longer than `cache_tokens` (prompt plus answer) decodes eagerly instead of growing the cache, which would
    recompile. transformers declines to compile bitsandbytes 4-bit models; bitsandbytes registers its ops for
    `torch.compile`, so for these calls only that check is answered here, on a CUDA GPU only: on a CPU the compiled
    4-bit step was measured slower than eager, with logits up to 0.75 apart (AdapterModel refuses it there), and
    `bench/adapter_decode.py` compares the two modes' answers token for token on the GPU."""

    def __init__(self, owner: Any, cache_tokens: int):  # owner: the AdapterModel (its module imports this one)
        if cache_tokens < 16:
            raise ModelError(f"decode cache: cache_tokens must be at least 16, got {cache_tokens}")
        self.owner, self.cache_tokens = owner, cache_tokens
        self.ready = False
        self.rank = 0
        self.holds: str | None = None
        self._sources: dict[str, tuple[list, list] | None] = {}
        self._compile_config = None

    def check(self, name: str) -> None:
        """Refuse an adapter the slot cannot hold; when the slot exists already, pad it to a larger rank."""
        configs = self.owner.model.peft_config
        first = next(n for n in configs if n != COMPILED_SLOT)
        new, old = configs[name], configs[first]
        if getattr(new, "use_dora", False) or new.rank_pattern or new.alpha_pattern:
            raise ModelError(f"adapter {name!r}: decode: compiled serves plain LoRA adapters (no DoRA, no per-module "
                             "rank or alpha); serve it with decode: eager")
        if set(new.target_modules) != set(old.target_modules):
            raise ModelError(f"adapter {name!r} targets {sorted(new.target_modules)}, but {first!r} targets "
                             f"{sorted(old.target_modules)}: decode: compiled swaps adapters into one slot, which "
                             "needs the same target modules; serve them with decode: eager")
        if self.ready and COMPILED_SLOT not in configs:
            self.ready = False  # the base was compiled alone; the slot is made at the next compiled answer
        elif self.ready and new.r > self.rank:
            self._pad(new.r)  # the tensors grow: the next compiled answer recompiles once
            print(f"[engine] adapter {name!r} has rank {new.r}: the compiled slot was padded to it "
                  "(one recompile)", flush=True)

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether a conversation fits the static cache (else it decodes eagerly)."""
        return prompt_tokens + max_new_tokens <= self.cache_tokens

    def generate_kwargs(self) -> dict[str, Any]:
        """The `generate` arguments of a compiled answer (making the slot on first use)."""
        if not self.ready:
            self._prepare()
        return {"cache_implementation": "static", "max_cache_len": self.cache_tokens,
                "compile_config": self._compile_config}

    def swap_in(self, name: str) -> None:
        """Copy `name`'s weights and scaling into the slot (nothing to do if it holds them already).

        PEFT's `hotswap_adapter_from_state_dict` does this from a state dict, but it calls `model.state_dict()` and
        resolves every key on each swap: 38 ms per switch for the demo model on a CPU. Once `_pad` has padded every
        adapter to the slot's rank the tensors line up one to one, so the pairs are collected once per adapter and
        a swap is one batched copy; an adapter whose tensors do not line up goes through PEFT's function."""
        import torch

        if name == self.holds:
            return
        if name not in self._sources:  # None (tensors that do not line up) is remembered too
            self._sources[name] = self._pairs(name)
        pairs = self._sources[name]
        self.holds = None  # a swap that fails half-way leaves the slot holding nobody's weights
        if pairs:
            with torch.no_grad():
                torch._foreach_copy_(pairs[0], pairs[1])
        else:
            from peft.utils.hotswap import hotswap_adapter_from_state_dict

            model = self.owner.model
            state = {key.replace(f".{name}.", f".{COMPILED_SLOT}."): param for key, param in model.named_parameters()
                     if (".lora_A." in key or ".lora_B." in key) and f".{name}." in key}
            hotswap_adapter_from_state_dict(model, state, adapter_name=COMPILED_SLOT, config=model.peft_config[name])
        self.holds = name

    def _pairs(self, name: str) -> tuple[list, list] | None:
        """(slot tensors, `name`'s tensors): LoRA A, LoRA B and scaling of every layer, or None when any pair differs
        in shape or kind (then PEFT's hot-swap handles it)."""
        import torch
        from peft.tuners.lora import LoraLayer

        slots, sources = [], []
        for layer in self.owner.model.modules():
            if not isinstance(layer, LoraLayer) or COMPILED_SLOT not in layer.lora_A:
                continue
            if name not in layer.lora_A:
                return None
            for table in (layer.lora_A, layer.lora_B):
                slots.append(table[COMPILED_SLOT].weight)
                sources.append(table[name].weight)
            slots.append(layer.scaling[COMPILED_SLOT])
            sources.append(layer.scaling[name])
        ok = all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                 and a.dtype == b.dtype and a.device == b.device for a, b in zip(slots, sources))
        return (slots, sources) if ok and slots else None

    def _prepare(self) -> None:
        """Make the slot (once adapters exist), pad ranks, and let transformers compile this model's decode step."""
        import copy
        import types

        import torch
        from transformers import CompileConfig

        owner = self.owner
        names = owner.adapter_names
        if names and COMPILED_SLOT not in owner.model.peft_config:
            configs = owner.model.peft_config
            owner.model.add_adapter(COMPILED_SLOT, copy.deepcopy(configs[names[0]]))
            owner.model.eval()
            self._pad(max(configs[n].r for n in names))
        cuda = next(owner.model.parameters()).device.type == "cuda"
        config = CompileConfig(fullgraph=False, mode="reduce-overhead" if cuda else "default")
        if not cuda:
            config._compile_all_devices = True  # transformers' switch for compiling on other devices
        self._compile_config = config
        inner = owner.model.get_base_model() if names else owner.model
        stock = inner._valid_auto_compile_criteria

        def compile_criteria(model, model_kwargs, generation_config):
            if generation_config.compile_config == config:
                cache = model_kwargs.get("cache")
                return cache is not None and cache.is_compileable
            return stock(model_kwargs, generation_config)

        inner._valid_auto_compile_criteria = types.MethodType(compile_criteria, inner)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)
        owner._active, owner._tuner_layers = None, None  # the slot's layers exist now: collect them again
        self.ready = True

    def _pad(self, rank: int) -> None:
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        model = self.owner.model
        prepare_model_for_compiled_hotswap(model, target_rank=rank, config=model.peft_config[COMPILED_SLOT],
                                           check_compiled="ignore")
        self.rank, self.holds, self._sources = rank, None, {}
        self.owner._active = None


def left_pad(prompts: Sequence[Sequence[int]], pad: int, device):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


class TurnCache:
    """The KV cache of a batch of conversations that a local model continues turn by turn.

    A conversation's prompt only grows: the next turn's prompt is the last one plus the answer and a new question.
    So the cache keeps every row's tokens and their keys and values, and a turn computes only the tokens after the
    longest prefix the cache already holds. Rows stay aligned in one batch: a turn's new tokens are left-padded to a
    common width, and positions that no longer belong to a row's prompt (padding, tokens after an early end of
    answer, cached tokens the re-rendered prompt does not repeat) are masked out, so each row attends to exactly
    its own prompt, at the positions an uncached run would give it."""

    def __init__(self):
        self.keys: list[Any] | None = None
        """The conversation each row belongs to, in row order; None before the first turn."""
        self.cache = None
        self.ids = None
        """Token ids per row and position (padding id where masked); as long as the cache."""
        self.mask = None

    def select(self, keys: Sequence[Any]) -> None:
        """Keep only the rows of `keys` (finished conversations leave the batch), in that order."""
        if self.keys is None or list(keys) == self.keys:
            return
        rows = [self.keys.index(k) for k in keys]
        import torch

        index = torch.tensor(rows, device=self.ids.device)
        self.cache.batch_select_indices(index)
        self.ids, self.mask, self.keys = self.ids[index], self.mask[index], list(keys)

    def extend(self, prompts: list[list[int]], pad: int):
        """The cached rows plus each prompt's tokens after what the cache holds, left-padded to one width."""
        import torch

        ids, mask = self.ids.clone(), self.mask.clone()
        suffixes = []
        for i, prompt in enumerate(prompts):
            held = mask[i].nonzero().squeeze(1)
            have = ids[i, held].tolist()
            keep = min(_common_prefix(have, prompt), len(prompt) - 1)  # at least one token to compute
            ids[i, held[keep:]], mask[i, held[keep:]] = pad, 0
            suffixes.append(prompt[keep:])
        block, block_mask = left_pad(suffixes, pad, ids.device)
        return torch.cat([ids, block], 1), torch.cat([mask, block_mask], 1)

    def keep(self, keys: list[Any], kv, sequences, mask, width: int, pad: int, eos: set[int]) -> None:
        """Remember what the cache now holds: every position but the last token sampled, which it never saw.
        Positions after a row's end of answer (the batch went on for other rows) are masked out."""
        import torch

        held = kv.get_seq_length()
        new = sequences[:, width:]
        stops = torch.tensor([pad, *sorted(eos)], device=new.device)
        ended = torch.isin(new, stops).int().cumsum(1) > 0
        after_end = torch.cat([torch.zeros_like(ended[:, :1]), ended[:, :-1]], 1)  # the end token itself stays
        ids = torch.where(after_end, torch.full_like(new, pad), new)
        self.ids = torch.cat([sequences[:, :width], ids], 1)[:, :held]
        self.mask = torch.cat([mask, (~after_end).long()], 1)[:, :held]
        self.cache, self.keys = kv, list(keys)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def growing_kv_cache(config):
    """A DynamicCache whose layers write into buffers with room to spare. DynamicLayer concatenates the whole cache
    with each new token: at batch 8 and ~1,800 cached tokens that copy is as much memory traffic as reading the
    weights, and decoding measured ~30% faster without it. Models with sliding-window layers keep DynamicCache."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self.held, self.key_buffer, self.value_buffer = 0, None, None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.held + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[-2]:
                size = (*key_states.shape[:2], max(end + 256, end * 3 // 2), key_states.shape[-1])
                keys, values = key_states.new_empty(size), value_states.new_empty(size)
                if self.held:
                    keys[..., :self.held, :] = self.keys
                    values[..., :self.held, :] = self.values
                self.key_buffer, self.value_buffer = keys, values
            self.key_buffer[..., self.held:end, :] = key_states
            self.value_buffer[..., self.held:end, :] = value_states
            self.held = end
            self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.get_seq_length() > 0:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys = self.key_buffer[..., :self.held, :]
                self.values = self.value_buffer[..., :self.held, :]

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("a turn cache only grows")

    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache
