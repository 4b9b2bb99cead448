"""`python -m core invert …` (OTI / OVI / ASIF-space OTI / gap experiments) and
`python -m core train-contrastive` (our LiT-style model on the Flickr8k pairs)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.cli import ProgressBar


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (OTI 150, OVI 1000)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--amp", default="auto", choices=["auto", "fp16", "bf16", "off"],
                   help="mixed precision on CUDA (auto = fp16 with a grad scaler; CPU is always fp32)")
    p.add_argument("--json", action="store_true", help="print a JSON result")


def register(subparsers: argparse._SubParsersAction) -> None:
    inv = subparsers.add_parser("invert", help="modality inversion (OTI / OVI) and the modality gap",
                                description="Invert images into a text encoder's token space (OTI), texts "
                                            "into a ViT's patch space (OVI), or images into the ASIF space.")
    sub = inv.add_subparsers(dest="invert_command", required=True)

    o = sub.add_parser("oti", help="OTI of image files through our model or an open_clip model")
    o.add_argument("images", nargs="+", metavar="IMAGE")
    o.add_argument("--model", default="lit",
                   help="'lit' (our EfficientNet-Lite0 + MiniLM model) or open_clip:<arch>:<tag|checkpoint|none>")
    o.add_argument("--template", default="a photo of {}")
    o.add_argument("--n-tokens", type=int, default=1)
    o.add_argument("--top", type=int, default=5, help="nearest words / captions to show")
    _common(o)
    o.set_defaults(run=run_oti)

    a = sub.add_parser("asif", help="OTI into the ASIF space (MiniLM token space, Flickr8k anchors)")
    a.add_argument("images", nargs="+", metavar="IMAGE")
    a.add_argument("--k", type=int, default=None, help="ASIF k (default: core.asif's)")
    a.add_argument("--p", type=float, default=None, help="ASIF p (default: core.asif's)")
    a.add_argument("--n-anchor-images", type=int, default=None, help="first N Flickr8k images as anchors")
    a.add_argument("--template", default="a photo of {}")
    a.add_argument("--top", type=int, default=5)
    _common(a)
    a.set_defaults(run=run_asif)

    v = sub.add_parser("ovi", help="OVI of texts through an open_clip ViT model")
    v.add_argument("texts", nargs="+", metavar="TEXT")
    v.add_argument("--model", default="open_clip:ViT-B-32:none",
                   help="open_clip:<arch>:<tag|checkpoint|none> with a ViT image tower")
    v.add_argument("--n-patches", type=int, default=1)
    _common(v)
    v.set_defaults(run=run_ovi)

    e = sub.add_parser("experiments", help="gap, retrieval, recovery and projection numbers for our model")
    e.add_argument("--which", default="gap,text,recovery,projection,image",
                   help="comma list of gap,text,recovery,projection,image,zeroshot,asif")
    e.add_argument("--asif-per-class", type=int, default=5, help="CIFAR-10 images per class for asif")
    e.add_argument("--per-class", type=int, default=50, help="CIFAR-10 test images per class (image, projection)")
    e.add_argument("--queries-per-class", type=int, default=10,
                   help="of those, queries per class; the rest is the gallery")
    e.add_argument("--heads", default=None, help="trained heads file (default: assets/…safetensors)")
    e.add_argument("--n-images", type=int, default=None,
                   help="Flickr8k: the first N images (gap, text: default all; recovery: default 3000)")
    e.add_argument("--steps", type=int, default=150)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=run_experiments)

    t = subparsers.add_parser("train-contrastive", help="train our LiT-style heads on the Flickr8k pairs",
                              description="Frozen EfficientNet-Lite0 image features and frozen MiniLM text "
                                          "features (from the cache); trains two linear heads + temperature.")
    t.add_argument("--n-images", type=int, default=None, help="only the first N Flickr8k images")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--embed-dim", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--out", default=None, help="where to save the heads (default assets/…safetensors)")
    t.add_argument("--no-eval", action="store_true", help="skip CIFAR-10 zero-shot (ours and ASIF's)")
    t.add_argument("--eval-per-class", type=int, default=None,
                   help="CIFAR-10 zero-shot on the first N test images per class (default: all 10,000)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=run_train)


def _print(args, payload: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(payload, indent=2, default=float))
    else:
        print("\n".join(lines))
    return 0


def _image_paths(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"{p} is not an image file.")
        out.append(str(Path(p).resolve()))
    return out


def _parse_open_clip(spec: str) -> tuple[str, str]:
    parts = spec.split(":")
    if len(parts) < 3 or parts[0] != "open_clip":
        raise ValueError("write open_clip:<arch>:<pretrained tag | checkpoint path | none>, e.g. open_clip:ViT-B-32:none")
    return parts[1], ":".join(parts[2:])


def _embed_query_images(paths: list[str], cache):
    """``[n, d_i]`` vectors of the user's image files; a clear error names an unreadable one."""
    from core import modality as M
    from core.embedded import embed

    result = embed(M.IMAGE_ENCODER, paths, cache=cache)
    if result.failed:
        raise ValueError(str(result.failed[0]))
    return result.vectors


def run_oti(args) -> int:

    from core.inversion import OpenClipTextEncoder, nearest_vocabulary, oti

    paths = _image_paths(args.images)
    bar = ProgressBar("OTI", not args.json)
    kw = dict(template=args.template, n_tokens=args.n_tokens, steps=args.steps or 150, lr=args.lr,
              weight_decay=args.weight_decay, seed=args.seed, batch_size=args.batch_size, device=args.device,
              amp=args.amp, progress=bar)
    if args.model == "lit":
        from core import modality as M
        from core.cache import default_cache

        cache = default_cache()
        heads, _ = M.get_model(progress=ProgressBar("training heads", not args.json), cache=cache)
        feats = _embed_query_images(paths, cache)
        encoder = M.lit_text_encoder(heads, cache=cache)
        result = oti(encoder, heads.encode_image_features(feats), **kw)
        pairs = M.flickr_embedded(cache=cache)
        bank = heads.encode_text_features(pairs.text_vectors)
        captions = M.nearest_texts(result.features, bank, pairs.captions, args.top)
        native = M.nearest_texts(heads.encode_image_features(feats), bank, pairs.captions, args.top)
    else:
        from core.encoders import load_image, load_open_clip

        arch, weights = _parse_open_clip(args.model)
        device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        bundle = load_open_clip(arch, weights, device)
        import torch

        with torch.no_grad():
            x = torch.stack([bundle["preprocess"](load_image(p)) for p in paths]).to(device)
            feats = bundle["model"].encode_image(x).float().cpu().numpy()
        encoder = OpenClipTextEncoder(bundle["model"], bundle["tokenizer"])
        result = oti(encoder, feats, **kw)
        captions = native = None
    bar.close()
    words = [nearest_vocabulary(encoder, p, args.top) for p in result.pseudo]
    payload = {"model": args.model, **result.to_json(), "loss_curve": result.losses.tolist(),
               "items": [{"image": p, "final_loss": float(l), "nearest_words": w,
                          **({"nearest_captions_oti": captions[i], "nearest_captions_image": native[i]}
                             if captions else {})}
                         for i, (p, l, w) in enumerate(zip(paths, result.final_losses, words))]}
    lines = [f"OTI {len(paths)} image(s), {result.losses.shape[0]} steps, {result.seconds:.2f}s "
             f"({1000 * result.seconds / len(paths):.0f} ms/image), loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}"]
    for item in payload["items"]:
        lines.append(f"- {item['image']}: loss {item['final_loss']:.3f}; words: "
                     + ", ".join(w for w, _ in item["nearest_words"][0]))
        for c, s in item.get("nearest_captions_oti", [])[:3]:
            lines.append(f"    {s:.3f}  {c}")
    return _print(args, payload, lines)


def run_asif(args) -> int:
    from core import modality as M
    from core.asif import DEFAULT_K, DEFAULT_P
    from core.cache import default_cache
    from core.inversion import nearest_vocabulary

    paths = _image_paths(args.images)
    cache = default_cache()
    pairs = M.flickr_embedded(args.n_anchor_images, cache=cache,
                              progress=ProgressBar("embedding anchors", not args.json))
    txt = pairs.text_vectors
    feats = _embed_query_images(paths, cache)
    k = min(args.k or DEFAULT_K, len(txt))
    p = args.p or DEFAULT_P
    bar = ProgressBar("ASIF-space OTI", not args.json)
    result = M.asif_oti(feats, pairs.pair_image_vectors, txt, k, p, template=args.template, steps=args.steps or 150,
                        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, batch_size=args.batch_size,
                        device=args.device, amp=args.amp, progress=bar, cache=cache)
    bar.close()
    enc = M.minilm_tokens(cache)
    words = [nearest_vocabulary(enc, q, args.top) for q in result.pseudo]
    caps = M.nearest_texts(result.features, txt, pairs.captions, args.top)
    payload = {"k": k, "p": p, "n_anchors": int(len(txt)), **result.to_json(), "loss_curve": result.losses.tolist(),
               "items": [{"image": path, "final_loss": float(l), "nearest_words": w, "nearest_captions": c}
                         for path, l, w, c in zip(paths, result.final_losses, words, caps)]}
    lines = [f"ASIF-space OTI (k={k}, p={p}, {len(txt)} anchors): loss {result.losses[0]:.3f} -> "
             f"{result.losses[-1]:.3f} in {result.seconds:.1f}s"]
    for item in payload["items"]:
        lines.append(f"- {item['image']}: words: " + ", ".join(w for w, _ in item["nearest_words"][0]))
        for c, s in item["nearest_captions"][:3]:
            lines.append(f"    {s:.3f}  {c}")
    return _print(args, payload, lines)


def run_ovi(args) -> int:
    import torch

    from core.encoders import load_open_clip
    from core.inversion import OpenClipVisionEncoder, ovi

    arch, weights = _parse_open_clip(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_open_clip(arch, weights, device)
    with torch.no_grad():
        feats = bundle["model"].encode_text(bundle["tokenizer"](args.texts).to(device)).float().cpu().numpy()
    bar = ProgressBar("OVI", not args.json)
    result = ovi(OpenClipVisionEncoder(bundle["model"]), feats, n_patches=args.n_patches, steps=args.steps or 1000,
                 lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, batch_size=args.batch_size,
                 device=device, amp=args.amp, progress=bar)
    bar.close()
    payload = {"model": args.model, **result.to_json(), "loss_curve": result.losses.tolist(),
               "final_losses": result.final_losses.tolist()}
    return _print(args, payload, [f"OVI {len(args.texts)} text(s): loss {result.losses[0]:.3f} -> "
                                  f"{result.losses[-1]:.3f} in {result.seconds:.1f}s"])


def run_experiments(args) -> int:
    from core import modality as M
    from core.cache import default_cache
    from core.contrastive import DEFAULT_HEADS

    cache = default_cache()
    heads, meta = M.get_model(args.heads or DEFAULT_HEADS, progress=ProgressBar("training heads", not args.json),
                              cache=cache)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    out: dict = {"model": meta.get("training", {})}
    lines = []
    timings = {}
    for w in which:
        t0 = time.perf_counter()
        if w == "gap":
            out["gap"] = M.gap_report(heads, args.n_images, cache=cache)
            lines.append(f"gap {out['gap']['gap']:.3f} (centroid cosine {out['gap']['centroid_cosine']:.3f}, "
                         f"matched cosine {out['gap']['matched_cosine']:.3f})")
        elif w == "text":
            out["text_retrieval"] = M.text_retrieval_experiment(heads, args.n_images, cache=cache)
            lines.append(f"text->text mAP: ours {out['text_retrieval']['lit_mAP']:.2f}, MiniLM "
                         f"{out['text_retrieval']['minilm_mAP']:.2f}")
        elif w == "recovery":
            out["recovery"] = M.recovery_experiment(heads, args.n_images or 3000, ranks=(None, 64, 32),
                                                    cache=cache)
            lines += [f"recovery rank {r['rank']}: {r['message']}" for r in out["recovery"]]
        elif w == "projection":
            out["projection"] = M.projection_experiment(heads, per_class=args.per_class,
                                                        queries_per_class=args.queries_per_class,
                                                        cache=cache)
            lines += [f"projection {r}" for r in out["projection"]]
        elif w == "image":
            bar = ProgressBar("OTI queries", not args.json)
            r = M.image_retrieval_experiment(heads, args.per_class, args.queries_per_class, steps=args.steps,
                                             seed=args.seed, batch_size=args.batch_size, progress=bar,
                                             cache=cache)
            bar.close()
            r.pop("oti_features")
            out["image_retrieval"] = r
            lines.append(f"image->image mAP: native {r['native_mAP']:.2f}, OTI {r['oti_mAP']:.2f}, "
                         f"native+OTI {r['native_plus_oti_mAP']:.2f}")
        elif w == "asif":
            bar = ProgressBar("ASIF-space OTI", not args.json)
            out["asif_oti"] = M.asif_oti_experiment(args.n_images, per_class=args.asif_per_class, steps=args.steps,
                                                    seed=args.seed, batch_size=args.batch_size, progress=bar,
                                                    cache=cache)
            bar.close()
            r = out["asif_oti"]
            lines.append(f"ASIF-space OTI on {r['n_images']} CIFAR images: pseudo-sentence accuracy "
                         f"{r['pseudo_sentence_accuracy']:.3f} (ASIF {r['asif_accuracy']:.3f})")
            lines += [f"  {e['class']}: {', '.join(e['words'])}" for e in r["examples"][:10]]
        elif w == "zeroshot":
            n_img = meta.get("training", {}).get("n_images")
            out["zeroshot"] = {"ours": M.cifar_zero_shot(heads, per_class=args.per_class, cache=cache),
                               "asif": M.asif_zero_shot(n_img, per_class=args.per_class, cache=cache)}
            lines.append(f"CIFAR-10 zero-shot: ours {out['zeroshot']['ours']['accuracy']:.4f}, "
                         f"ASIF {out['zeroshot']['asif']['accuracy']:.4f}")
        else:
            raise ValueError(f"unknown experiment {w!r}; choose from gap,text,recovery,projection,image,zeroshot,asif")
        timings[w] = round(time.perf_counter() - t0, 2)
    out["seconds"] = timings
    return _print(args, out, lines)


def run_train(args) -> int:
    from dataclasses import replace

    from core import modality as M
    from core.cache import default_cache
    from core.contrastive import DEFAULT_HEADS, ContrastiveConfig, load_heads, save_heads

    cfg = ContrastiveConfig()
    for name in ("epochs", "batch_size", "embed_dim", "lr", "seed"):
        value = getattr(args, name)
        if value is not None:
            cfg = replace(cfg, **{name: value})
    bar = ProgressBar("training", not args.json)
    cache = default_cache()
    result = M.train_on_flickr(args.n_images, cfg, progress=bar, cache=cache)
    bar.close()
    summary = result.summary()
    out_path = Path(args.out) if args.out else DEFAULT_HEADS
    meta = {}
    if not args.no_eval:
        ours = M.cifar_zero_shot(result.heads, per_class=args.eval_per_class, cache=cache)
        asif = M.asif_zero_shot(args.n_images, per_class=args.eval_per_class, cache=cache)
        meta["cifar10_zero_shot"] = {"ours": ours, "asif_same_pairs_and_encoders": asif}
    save_heads(result, out_path, meta)
    _, saved = load_heads(out_path)
    payload = {"path": str(out_path), "bytes": out_path.stat().st_size, **saved}
    lines = [f"trained {summary['steps']} steps on {summary['n_pairs']} pairs in {summary['seconds']:.1f}s; "
             f"loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}; saved {out_path}"]
    if "cifar10_zero_shot" in meta:
        z = meta["cifar10_zero_shot"]
        lines.append(f"CIFAR-10 zero-shot: ours {z['ours']['accuracy']:.4f}, ASIF "
                     f"{z['asif_same_pairs_and_encoders']['accuracy']:.4f} (n={z['ours']['n_test']})")
    return _print(args, payload, lines)
