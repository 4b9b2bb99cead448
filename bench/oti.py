"""OTI speed: ``core.inversion.oti`` against a faithful re-implementation of the reference loop
(miccunifi/Cross-the-Gap ``src/oti.py`` + ``encode_with_pseudo_tokens_openclip``), same model, same
image features, same initial pseudo-tokens, same hyper-parameters; ratio and final losses in one run.

The reference loop, per step: re-tokenise the template for the whole batch, embed all 77 positions,
find the placeholder by unique/cumsum, splice, run the full-length causal transformer, mean
``CosineEmbeddingLoss`` over the batch, ``GradScaler`` + ``autocast`` (fp16) on CUDA, AdamW, and
``loss.item()`` every step. Ours: tokenise/embed once, cut after the EOT token, per-item sum loss,
fused AdamW on CUDA, no per-step host sync.

    python bench/oti.py                         # CPU: ViT-B-32 (random weights), batches 1 and 16
    python bench/oti.py --sizes 64,512,2048     # on a CUDA machine: the issue's GPU sizes
    python bench/oti.py --json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.inversion import OpenClipTextEncoder, oti  # noqa: E402


def reference_encode_with_pseudo_tokens(model, tokens, pseudo, n_tokens, placeholder_id):
    """The reference's open_clip splice and forward, re-implemented: full context length."""
    from open_clip.transformer import text_global_pool

    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).type(cast_dtype)
    rows, cols = (tokens == placeholder_id).nonzero(as_tuple=True)
    _, counts = torch.unique(rows, return_counts=True)
    first_of_row = torch.cat((torch.zeros(1, device=tokens.device, dtype=torch.long), torch.cumsum(counts, 0)[:-1]))
    first = cols[first_of_row]
    rep = torch.stack([first + i for i in range(n_tokens)])  # [n, B]
    batch = torch.arange(x.shape[0], device=x.device).repeat_interleave(n_tokens).reshape(x.shape[0], n_tokens)
    x[batch, rep.T] = pseudo.to(x.dtype)
    x = x + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def reference_oti(model, tokenizer, image_features, init, steps=150, lr=0.02, weight_decay=0.01,
                  template="a photo of {}", n_tokens=1, device="cpu"):
    dev = torch.device(device)
    use_amp = dev.type == "cuda"
    criterion = torch.nn.CosineEmbeddingLoss()
    target = torch.as_tensor([1], device=dev)
    placeholder_id = int(tokenizer(["£"])[0, 1])
    bs = len(image_features)
    pseudo = torch.nn.Parameter(init.clone().to(dev))
    optimizer = torch.optim.AdamW([pseudo], lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    image_features = image_features.to(dev)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        texts = [template.format(" £ " * n_tokens) for _ in range(bs)]
        tokens = tokenizer(texts).to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            feats = reference_encode_with_pseudo_tokens(model, tokens, pseudo, n_tokens, placeholder_id)
            loss = criterion(F.normalize(feats, dim=-1), F.normalize(image_features, dim=-1), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.detach().cpu().item())
    with torch.no_grad():
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            final = reference_encode_with_pseudo_tokens(model, tokenizer([template.format(" £ " * n_tokens)] * bs).to(dev),
                                                        pseudo, n_tokens, placeholder_id)
    return pseudo.detach(), np.array(losses), F.normalize(final.float(), dim=-1).cpu()


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run(arch="ViT-B-32", sizes=(1, 16), steps=150, device=None, seed=0, repeats=1):
    import open_clip

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(arch)
    encoder = OpenClipTextEncoder(model, tokenizer)
    dim = model.text_projection.shape[1]
    rows = []
    for bs in sizes:
        feats = torch.from_numpy(np.random.default_rng(seed).normal(size=(bs, dim)).astype(np.float32))
        gen = torch.Generator().manual_seed(seed)
        init = torch.randn(bs, 1, encoder.token_dim, generator=gen) * 0.02  # what oti() draws for this seed
        if dev.type == "cuda":  # warm-up both paths (kernels, cuBLAS handles)
            reference_oti(model, tokenizer, feats[:2], init[:2], steps=3, device=dev)
            oti(encoder, feats[:2], steps=3, batch_size=bs, device=dev, seed=seed)
        t_ref, t_ours = [], []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            _, ref_losses, ref_feats = reference_oti(model, tokenizer, feats, init, steps=steps, device=dev)
            _sync(dev)
            t_ref.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours = oti(encoder, feats, steps=steps, batch_size=bs, device=dev, seed=seed)
            _sync(dev)
            t_ours.append(time.perf_counter() - t0)
        cos = float((torch.from_numpy(ours.features) * ref_feats).sum(-1).min())
        row = {"arch": arch, "device": dev.type, "batch": bs, "steps": steps,
               "reference_ms_per_image": 1000 * min(t_ref) / bs, "ours_ms_per_image": 1000 * min(t_ours) / bs,
               "speedup": min(t_ref) / min(t_ours),
               "reference_final_loss": float(ref_losses[-1]), "ours_final_loss": float(ours.losses[-1]),
               "min_cosine_ours_vs_reference_features": cos}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--sizes", default=None, help="comma list of batch sizes (default: 1,16 on CPU; 64,512,2048 on CUDA)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([64, 512, 2048] if dev.type == "cuda" else [1, 16])
    out = run(args.arch, sizes, args.steps, str(dev), repeats=args.repeats)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'batch':>6} {'ref ms/img':>11} {'ours ms/img':>12} {'speedup':>8} {'ref loss':>9} {'our loss':>9}")
        for r in out["rows"]:
            print(f"{r['batch']:>6} {r['reference_ms_per_image']:>11.1f} {r['ours_ms_per_image']:>12.1f} "
                  f"{r['speedup']:>7.2f}x {r['reference_final_loss']:>9.4f} {r['ours_final_loss']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
