"""Modality inversion: OTI (image -> text token space) and OVI (text -> ViT patch space).

After Mistretta et al., "Cross the Gap" (ICLR 2025; ``../shared/papers/cross-the-gap-oti-ovi.md``).
Both encoders stay frozen; only the pseudo-token(s) / pseudo-patch(es) are learned:

* **OTI** (Optimization-based Textual Inversion): ``n`` pseudo-tokens ``[n, w]`` are spliced into the
  token embeddings of a template ("a photo of {}") exactly where the placeholder was, the text encoder
  maps the sequence to a feature, and AdamW (lr 0.02, weight decay 0.01, 150 steps) minimises the
  cosine loss ``1 - cos(text feature, image feature)``.
* **OVI** (Optimization-based Visual Inversion): ``n`` pseudo-patches ``[n, w]`` (1-4) are repeated by
  nearest-neighbour interpolation to the ViT's patch grid, placed after the class token, and optimised
  (1000 steps) against a text feature.

Text encoders plug in through :class:`PseudoTokenTextEncoder` (``prepare`` a template once, then
``encode`` pseudo-tokens differentiably). :class:`OpenClipTextEncoder` covers any open_clip CLIP model
(built-in text transformer, ``TextTransformer`` towers of ``CustomTextCLIP`` and HF text towers);
``core.contrastive`` provides one for our MiniLM-based model. ASIF-space inversion is an *objective*
(:class:`ASIFObjective`): the loss compares relative representations instead of raw features.

Differences from the reference loop (miccunifi/Cross-the-Gap ``src/oti.py``), all output-preserving:
the template is tokenised and embedded once, not every step; for causal text towers pooled at the EOT
token the sequence is cut after the EOT token (positions after it cannot influence it); the loss that
is back-propagated is the *sum* over the batch (each item's gradient is independent of its batch mates,
so results do not depend on the batch size; the reported curve is the mean); the pseudo-token
initialisation is drawn for the whole input at once from a seeded CPU generator, so a seed gives the
same inversion for any batch size and on any device up to floating-point rounding.

Mixed precision: on CUDA the forward runs under ``torch.autocast`` (float16 with a ``GradScaler``, as
the reference does, or bfloat16 with ``amp="bf16"``); on CPU everything is float32.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.arrays import as_float32_2d

ProgressFn = Callable[[int, int], None]
LossFn = Callable[[int, float], None]

__all__ = [
    "InversionResult",
    "PreparedTemplate",
    "PseudoTokenTextEncoder",
    "OpenClipTextEncoder",
    "OpenClipVisionEncoder",
    "CosineObjective",
    "ASIFObjective",
    "oti",
    "ovi",
    "optimize_pseudo_inputs",
    "nearest_vocabulary",
    "nearest_neighbour_repeat",
    "resolve_device",
]


# --------------------------------------------------------------------------------------------------
# results and small utilities
# --------------------------------------------------------------------------------------------------
@dataclass
class InversionResult:
    """Output of :func:`oti` / :func:`ovi`.

    features: ``[B, d]`` float32, L2-normalised inverted features (complementary modality).
    pseudo: ``[B, n, w]`` float32, the learned pseudo-tokens / pseudo-patches.
    losses: ``[steps]`` float32, the mean loss over all items at each step (the loss curve).
    final_losses: ``[B]`` float32, each item's loss at the last step.
    seconds: wall time of the optimisation (excluding model loading).
    """

    features: np.ndarray
    pseudo: np.ndarray
    losses: np.ndarray
    final_losses: np.ndarray
    seconds: float
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "n": int(self.features.shape[0]),
            "dim": int(self.features.shape[1]),
            "steps": int(self.losses.shape[0]),
            "first_loss": float(self.losses[0]) if len(self.losses) else None,
            "final_loss": float(self.losses[-1]) if len(self.losses) else None,
            "seconds": round(float(self.seconds), 4),
            "ms_per_item": round(1000.0 * self.seconds / max(1, self.features.shape[0]), 3),
            **self.info,
        }


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp not in ("auto", "fp16", "bf16", "off"):
        raise ValueError(f"amp must be one of auto, fp16, bf16, off (got {amp!r}).")
    if device.type != "cuda" or amp == "off":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


@contextlib.contextmanager
def _frozen(*modules: torch.nn.Module):
    """Eval mode and requires_grad=False for the duration; restores both afterwards."""
    saved = []
    for module in modules:
        if module is None:
            continue
        saved.append((module, module.training, [(p, p.requires_grad) for p in module.parameters()]))
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for module, training, flags in saved:
            module.train(training)
            for p, flag in flags:
                p.requires_grad_(flag)


def nearest_neighbour_repeat(pseudo: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat ``[B, n, w]`` pseudo-patches to ``[B, length, w]`` by nearest-neighbour interpolation.

    Identical to ``F.interpolate(pseudo[:, None], size=(length, w), mode="nearest")[:, 0]`` (index
    ``floor(i * n / length)``), done as a gather.
    """
    n = pseudo.shape[1]
    index = torch.div(torch.arange(length, device=pseudo.device) * n, length, rounding_mode="floor")
    return pseudo.index_select(1, index)


# --------------------------------------------------------------------------------------------------
# objectives: per-item losses of the encoded pseudo inputs
# --------------------------------------------------------------------------------------------------
class CosineObjective:
    """Per-item ``1 - cos(pred, target)`` against fixed targets ``[N, d]`` (normalised here)."""

    def __init__(self, targets: np.ndarray | torch.Tensor):
        t = torch.as_tensor(np.asarray(targets, dtype=np.float32) if not torch.is_tensor(targets) else targets)
        if t.ndim != 2 or t.shape[0] == 0:
            raise ValueError(f"Targets must be a non-empty [N, d] array (got shape {tuple(t.shape)}).")
        if not torch.isfinite(t).all():
            raise ValueError("Targets contain NaN or infinite values; re-embed the inputs.")
        self.targets = F.normalize(t.float(), dim=-1)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device) -> "CosineObjective":
        self.targets = self.targets.to(device)
        return self

    def __call__(self, pred: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pred = F.normalize(pred.float(), dim=-1)
        return 1.0 - (pred * self.targets[rows]).sum(-1)


class ASIFObjective:
    """Loss in the ASIF relative space (inversion into the space of relative representations).

    The encoded pseudo input ``t`` (e.g. a MiniLM sentence embedding) is turned into its relative
    representation over ``anchors`` ``[N, d]`` (cosine similarities, top ``k``, sign-safe power ``p``,
    L2-normalised, as ``core.asif.relative_representation``) and compared by cosine with a target
    relative representation given sparsely as ``(indices [B, k], values [B, k])`` over the *other*
    modality's anchors (same pair order). Gradients flow through the kept values; which anchors are
    kept is re-decided at every step.
    """

    def __init__(self, anchors: np.ndarray | torch.Tensor, target_indices: np.ndarray,
                 target_values: np.ndarray, k: int, p: float):
        a = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError("Anchors must be a non-empty [N, d] array.")
        if not 1 <= k <= a.shape[0]:
            raise ValueError(f"k must be between 1 and the number of anchors ({a.shape[0]}); got {k}.")
        if p < 1:
            raise ValueError(f"p must be >= 1 (got {p}).")
        idx = torch.as_tensor(np.asarray(target_indices, dtype=np.int64))
        val = torch.as_tensor(np.asarray(target_values, dtype=np.float32))
        if idx.shape != val.shape or idx.ndim != 2:
            raise ValueError("Target indices and values must both be [B, k] arrays of the same shape.")
        self.anchors = F.normalize(a, dim=-1)
        self.k, self.p = int(k), float(p)
        self.n_anchors = a.shape[0]
        self.target_indices, self.target_values = idx, val

    def __len__(self) -> int:
        return self.target_indices.shape[0]

    def to(self, device: torch.device) -> "ASIFObjective":
        self.anchors = self.anchors.to(device)
        self.target_indices = self.target_indices.to(device)
        self.target_values = self.target_values.to(device)
        return self

    def relative(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable relative representation of ``pred`` ``[B, d]``: ``(indices, values) [B, k]``."""
        sims = F.normalize(pred.float(), dim=-1) @ self.anchors.T
        values, indices = sims.topk(self.k, dim=-1)
        values = values.sign() * values.abs().clamp_min(1e-12).pow(self.p)
        return indices, F.normalize(values, dim=-1)

    def __call__(self, pred: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        indices, values = self.relative(pred)
        dense = torch.zeros(len(rows), self.n_anchors, device=pred.device, dtype=values.dtype)
        dense.scatter_(1, self.target_indices[rows], self.target_values[rows])
        return 1.0 - (values * dense.gather(1, indices)).sum(-1)


# --------------------------------------------------------------------------------------------------
# text encoders that accept pseudo-tokens
# --------------------------------------------------------------------------------------------------
@dataclass
class PreparedTemplate:
    """A template tokenised once: ``ids [1, L]``, the placeholder ``positions [n]``, the constant
    token embeddings ``base [1, L, w]`` and encoder-specific extras."""

    template: str
    n_tokens: int
    ids: torch.Tensor
    positions: torch.Tensor
    base: torch.Tensor
    extra: dict = field(default_factory=dict)

    def splice(self, pseudo: torch.Tensor) -> torch.Tensor:
        """``[B, n, w]`` pseudo-tokens -> ``[B, L, w]`` token embeddings with the pseudo-tokens placed
        exactly at the placeholder positions (all other rows are the template's own embeddings)."""
        b = pseudo.shape[0]
        x = self.base.to(pseudo.dtype).expand(b, -1, -1).clone()
        x[:, self.positions] = pseudo
        return x


class PseudoTokenTextEncoder(Protocol):
    token_dim: int

    def prepare(self, template: str, n_tokens: int, device: torch.device) -> PreparedTemplate: ...

    def encode(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor: ...

    def modules(self) -> Sequence[torch.nn.Module]: ...

    def vocabulary(self) -> tuple[torch.Tensor, Callable[[int], str]]: ...


def check_template(template: str) -> None:
    """``ValueError`` unless the prompt template holds exactly one ``{}`` (where the pseudo-token goes).

    >>> check_template("a photo of {}.")
    >>> check_template("a photo.")
    Traceback (most recent call last):
    ValueError: The template must contain exactly one '{}' placeholder (got 'a photo.').
    """
    if template.count("{}") != 1:
        raise ValueError(f"The template must contain exactly one '{{}}' placeholder (got {template!r}).")


def placeholder_positions(ids: torch.Tensor, placeholder_id: int, n_tokens: int, template: str) -> torch.Tensor:
    """Positions ``[n_tokens]`` of the placeholder token in the tokenised template ``ids [1, L]``
    (where the pseudo-token embeddings are written); ``ValueError`` when there are not exactly
    ``n_tokens`` of them."""
    positions = (ids[0] == placeholder_id).nonzero().flatten()
    if positions.numel() != n_tokens:
        raise ValueError(
            f"Could not place {n_tokens} pseudo-token(s) in {template!r}: found {positions.numel()} placeholder "
            "token(s) after tokenisation (is the template too long for the context, or does it contain the "
            "placeholder character?).")
    return positions


class OpenClipTextEncoder:
    """Pseudo-token text encoding for open_clip models (``open_clip.CLIP`` / ``CustomTextCLIP``).

    ``model``: the open_clip model; ``tokenizer``: ``open_clip.get_tokenizer(arch)``. ``fast``: cut
    causal EOT-pooled sequences right after the EOT token (exact; set False to run the library's own
    ``encode_text`` with a forward hook on the token embedding, the generic path used for any tower).
    """

    PLACEHOLDER = "£"  # a single BPE token in CLIP's vocabulary, as in the reference code

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, fast: bool = True):
        import open_clip  # local: optional dependency for users who only use our own model

        self.model = model
        self.tokenizer = tokenizer
        self.fast = fast
        if isinstance(model, open_clip.CLIP):
            self.kind = "clip"
            self.embedding = model.token_embedding
        elif hasattr(model, "text") and isinstance(model.text, open_clip.transformer.TextTransformer):
            self.kind = "text_transformer"
            self.embedding = model.text.token_embedding
        elif hasattr(model, "text") and hasattr(getattr(model.text, "transformer", None), "get_input_embeddings"):
            self.kind = "hf"
            self.embedding = model.text.transformer.get_input_embeddings()
        else:
            raise ValueError(
                f"OTI needs an open_clip model with a text tower ({type(model).__name__} has none it knows).")
        self.token_dim = int(self.embedding.weight.shape[1])
        ph = tokenizer([self.PLACEHOLDER])
        special = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None), 0}
        candidates = [int(t) for t in ph[0].tolist() if int(t) not in special]
        if len(candidates) != 1:
            raise ValueError("This tokenizer does not encode the placeholder '£' as one token; OTI cannot splice.")
        self.placeholder_id = candidates[0]

    def modules(self) -> Sequence[torch.nn.Module]:
        return [self.model]

    def _fast_ok(self) -> bool:
        if not self.fast:
            return False
        if self.kind == "clip":
            return self.model.attn_mask is not None and self.model.text_pool_type in ("argmax", "eos")
        if self.kind == "text_transformer":
            t = self.model.text
            return (t.attn_mask is not None and t.cls_emb is None and not getattr(t, "use_pad_mask", False)
                    and t.pool_type in ("argmax", "eos"))
        return False

    def prepare(self, template: str, n_tokens: int, device: torch.device) -> PreparedTemplate:
        check_template(template)
        if self.PLACEHOLDER in template:
            raise ValueError(f"The template may not contain the placeholder character {self.PLACEHOLDER!r}.")
        if n_tokens < 1:
            raise ValueError("n_tokens must be at least 1.")
        text = template.format(" ".join([self.PLACEHOLDER] * n_tokens))
        ids = self.tokenizer([text]).to(device)
        positions = placeholder_positions(ids, self.placeholder_id, n_tokens, template)
        extra: dict[str, Any] = {"full_ids": ids}
        if self._fast_ok():
            eot = int(ids.argmax(dim=-1)[0]) if self._pool_type() == "argmax" else int(
                (ids[0] == self._eos_id()).int().argmax())
            ids = ids[:, : eot + 1]
            extra["fast"] = True
        with torch.no_grad():
            base = self.embedding(ids).float()
        return PreparedTemplate(template, n_tokens, ids, positions, base, extra)

    def _pool_type(self) -> str:
        return self.model.text_pool_type if self.kind == "clip" else self.model.text.pool_type

    def _eos_id(self):
        return getattr(self.model, "text_eos_id", None) if self.kind == "clip" else getattr(self.model.text, "eos_id", None)

    def encode(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor:
        if prepared.extra.get("fast"):
            return self._encode_fast(prepared, pseudo)
        return self._encode_hooked(prepared, pseudo)

    def _encode_fast(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        tower = self.model if self.kind == "clip" else self.model.text
        cast_dtype = tower.transformer.get_cast_dtype()
        ids = prepared.ids.expand(pseudo.shape[0], -1)
        length = ids.shape[1]
        x = prepared.splice(pseudo).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x)
        pool_type = self._pool_type()
        x = text_global_pool(x, ids, pool_type, eos_token_id=self._eos_id())
        proj = tower.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x

    def _encode_hooked(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor:
        ids = prepared.extra["full_ids"].expand(pseudo.shape[0], -1)
        positions = prepared.positions

        def hook(_module, _inputs, output):
            output = output.clone()
            output[:, positions] = pseudo.to(output.dtype)
            return output

        handle = self.embedding.register_forward_hook(hook)
        try:
            return self.model.encode_text(ids)
        finally:
            handle.remove()

    def vocabulary(self) -> tuple[torch.Tensor, Callable[[int], str]]:
        decoder = getattr(self.tokenizer, "decoder", None)
        byte_decoder = getattr(self.tokenizer, "byte_decoder", None)

        def decode(i: int) -> str:
            if decoder is None:
                return str(i)
            word = decoder.get(int(i), str(i))
            if byte_decoder is not None:
                try:
                    word = bytearray(byte_decoder[c] for c in word).decode("utf-8", errors="replace")
                except KeyError:
                    pass
            return word.replace("</w>", "")

        return self.embedding.weight.detach(), decode

    def word_mask(self) -> np.ndarray:
        """``[V]`` bool: vocabulary entries that are whole alphabetic words (end-of-word BPE tokens)."""
        decoder = getattr(self.tokenizer, "decoder", None) or {}
        mask = np.zeros(self.embedding.weight.shape[0], dtype=bool)
        for i, word in decoder.items():
            if i < len(mask) and word.endswith("</w>"):
                w = word[:-4]
                mask[i] = w.isalpha() and w.isascii() and len(w) > 1
        return mask


class OpenClipVisionEncoder:
    """Pseudo-patch image encoding for open_clip ViT image towers (``model.visual`` a VisionTransformer)."""

    def __init__(self, model: torch.nn.Module):
        from open_clip.transformer import VisionTransformer

        visual = getattr(model, "visual", model)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"OVI needs a ViT image tower (open_clip VisionTransformer); {type(visual).__name__} has no patches.")
        self.model, self.visual = model, visual
        self.token_dim = int(visual.class_embedding.shape[-1])
        self.n_patch_positions = int(visual.positional_embedding.shape[0]) - 1

    def modules(self) -> Sequence[torch.nn.Module]:
        return [self.model]

    def encode(self, pseudo: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = nearest_neighbour_repeat(pseudo, self.n_patch_positions)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        x = v.ln_pre(x)
        x = v.transformer(x)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled


# --------------------------------------------------------------------------------------------------
# the optimisation loop shared by OTI and OVI
# --------------------------------------------------------------------------------------------------
def optimize_pseudo_inputs(
    encode: Callable[[torch.Tensor], torch.Tensor],
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n_items: int,
    n_pseudo: int,
    width: int,
    *,
    steps: int,
    lr: float = 0.02,
    weight_decay: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    device: Optional[str | torch.device] = None,
    amp: str = "auto",
    init_std: float = 0.02,
    progress: Optional[ProgressFn] = None,
    on_loss: Optional[LossFn] = None,
    frozen: Sequence[torch.nn.Module] = (),
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, float]:
    """Optimise ``[n_items, n_pseudo, width]`` pseudo inputs, batch by batch.

    ``encode(pseudo [b, n, w]) -> [b, d]``; ``objective(pred [b, d], rows [b]) -> per-item loss [b]``.
    Returns ``(pseudo [N, n, w], encoded [N, d], losses [steps], final_losses [N], seconds)``.
    ``progress(done_steps, total_steps)`` counts optimisation steps over all batches;
    ``on_loss(step, mean_loss_of_current_batch)`` is called after every step (for live curves).
    """
    if n_items < 1:
        raise ValueError("Nothing to invert: the input is empty.")
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    dev = resolve_device(device)
    amp_dtype = _amp_dtype(amp, dev)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    init = torch.randn(n_items, n_pseudo, width, generator=generator) * init_std
    if hasattr(objective, "to"):
        objective.to(dev)
    pseudo_out = torch.empty(n_items, n_pseudo, width)
    encoded_out: list[torch.Tensor] = []
    curve = np.zeros(steps, dtype=np.float64)
    final = np.zeros(n_items, dtype=np.float32)
    n_batches = math.ceil(n_items / batch_size)
    total, done = n_batches * steps, 0
    t0 = time.perf_counter()
    with _frozen(*frozen):
        for b in range(n_batches):
            lo, hi = b * batch_size, min(n_items, (b + 1) * batch_size)
            rows = torch.arange(lo, hi, device=dev)
            param = torch.nn.Parameter(init[lo:hi].to(dev))
            fused = dev.type == "cuda"
            optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=weight_decay,
                                          **({"fused": True} if fused else {"foreach": False}))
            scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
            batch_losses = torch.zeros(steps, device=dev)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    pred = encode(param)
                per_item = objective(pred.float(), rows)
                loss = per_item.sum()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                batch_losses[step] = per_item.detach().mean()
                if step == steps - 1:
                    final[lo:hi] = per_item.detach().float().cpu().numpy()
                done += 1
                if on_loss is not None:
                    on_loss(step, float(batch_losses[step]))
                if progress is not None:
                    progress(done, total)
            curve += batch_losses.double().cpu().numpy() * (hi - lo)
            with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32,
                                                 enabled=amp_dtype is not None):
                encoded_out.append(encode(param.detach()).float().cpu())
            pseudo_out[lo:hi] = param.detach().float().cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return pseudo_out, torch.cat(encoded_out), (curve / n_items).astype(np.float32), final, seconds


def oti(
    text_encoder: PseudoTokenTextEncoder,
    image_features: np.ndarray | torch.Tensor | None = None,
    *,
    objective: Optional[Callable] = None,
    template: str = "a photo of {}",
    n_tokens: int = 1,
    steps: int = 150,
    lr: float = 0.02,
    weight_decay: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    device: Optional[str | torch.device] = None,
    amp: str = "auto",
    progress: Optional[ProgressFn] = None,
    on_loss: Optional[LossFn] = None,
) -> InversionResult:
    """Optimization-based Textual Inversion: map image features ``[B, d]`` into the text encoder's space.

    Pass either ``image_features`` (cosine loss to each row, the paper's setting) or an ``objective``
    (e.g. :class:`ASIFObjective`). Returns an :class:`InversionResult` whose ``features`` are the text
    encoder's outputs for "template with the learned pseudo-token(s)", L2-normalised.
    """
    if objective is None:
        if image_features is None:
            raise ValueError("Give image features to invert (or an objective).")
        objective = CosineObjective(as_float32_2d("Image features", image_features))
    dev = resolve_device(device)
    for module in text_encoder.modules():
        module.to(dev)
    prepared = text_encoder.prepare(template, n_tokens, dev)
    pseudo, encoded, curve, final, seconds = optimize_pseudo_inputs(
        lambda p: text_encoder.encode(prepared, p), objective, len(objective), n_tokens,
        text_encoder.token_dim, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed,
        batch_size=batch_size, device=dev, amp=amp, progress=progress, on_loss=on_loss,
        frozen=text_encoder.modules())
    return InversionResult(
        F.normalize(encoded, dim=-1).numpy().astype(np.float32), pseudo.numpy(), curve, final, seconds,
        {"method": "oti", "template": template, "n_tokens": n_tokens, "device": dev.type,
         "amp": str(_amp_dtype(amp, dev) or "off").replace("torch.", ""), "batch_size": batch_size})


def ovi(
    vision_encoder: OpenClipVisionEncoder,
    text_features: np.ndarray | torch.Tensor,
    *,
    n_patches: int = 1,
    steps: int = 1000,
    lr: float = 0.02,
    weight_decay: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    device: Optional[str | torch.device] = None,
    amp: str = "auto",
    progress: Optional[ProgressFn] = None,
    on_loss: Optional[LossFn] = None,
) -> InversionResult:
    """Optimization-based Visual Inversion: map text features ``[B, d]`` into a ViT's image space with
    ``n_patches`` (1-4 in the paper) learned pseudo-patches. Returns normalised image-tower outputs."""
    if not 1 <= n_patches <= vision_encoder.n_patch_positions:
        raise ValueError(f"n_patches must be between 1 and {vision_encoder.n_patch_positions}.")
    objective = CosineObjective(as_float32_2d("Text features", text_features))
    dev = resolve_device(device)
    for module in vision_encoder.modules():
        module.to(dev)
    pseudo, encoded, curve, final, seconds = optimize_pseudo_inputs(
        vision_encoder.encode, objective, len(objective), n_patches, vision_encoder.token_dim,
        steps=steps, lr=lr, weight_decay=weight_decay, seed=seed, batch_size=batch_size, device=dev,
        amp=amp, progress=progress, on_loss=on_loss, frozen=vision_encoder.modules())
    return InversionResult(
        F.normalize(encoded, dim=-1).numpy().astype(np.float32), pseudo.numpy(), curve, final, seconds,
        {"method": "ovi", "n_patches": n_patches, "device": dev.type,
         "amp": str(_amp_dtype(amp, dev) or "off").replace("torch.", ""), "batch_size": batch_size})


def nearest_vocabulary(text_encoder: PseudoTokenTextEncoder, pseudo: np.ndarray | torch.Tensor,
                       k: int = 10, words_only: bool = True) -> list[list[tuple[str, float]]]:
    """For each learned pseudo-token ``[n, w]`` (or ``[w]``): the ``k`` vocabulary tokens whose input
    embeddings are closest by cosine, as ``[(word, cosine), ...]`` per pseudo-token. ``words_only``
    skips special tokens and word pieces when the encoder can tell them apart."""
    matrix, decode = text_encoder.vocabulary()
    p = torch.as_tensor(np.asarray(pseudo, dtype=np.float32)).reshape(-1, matrix.shape[1]).to(matrix.device)
    sims = F.normalize(p, dim=-1) @ F.normalize(matrix.float(), dim=-1).T
    if words_only and hasattr(text_encoder, "word_mask"):
        mask = torch.as_tensor(text_encoder.word_mask(), device=sims.device)
        sims = sims.masked_fill(~mask, float("-inf"))
    values, indices = sims.topk(min(k, matrix.shape[0]), dim=-1)
    return [[(decode(int(i)), float(v)) for i, v in zip(ir.tolist(), vr.tolist())]
            for ir, vr in zip(indices, values)]
