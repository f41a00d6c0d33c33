"""Tiny randomly initialised models, made with each library's own constructors and saved in its
own local format, for building through the real builder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _tiny_bert(directory: Path, minilm_source: str, max_positions: int = 128) -> None:
    from transformers import BertConfig

    BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    ).save_pretrained(directory)
    for file in TOKENIZER_FILES:
        shutil.copy(Path(minilm_source) / file, directory / file)


def tiny_sentence_transformer(
    directory: Path,
    minilm_source: str,
    pooling: str,
    dense: bool,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
):
    """A 2-layer BERT with the real MiniLM tokenizer and the given pooling (and Dense head)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf_dir = directory / "hf"
    _tiny_bert(hf_dir, minilm_source)
    BertModel(BertConfig.from_pretrained(hf_dir)).save_pretrained(hf_dir)
    modules = [
        Transformer(str(hf_dir), max_seq_length=64),
        Pooling(32, pooling_mode=pooling, include_prompt=include_prompt),
    ]
    if dense:
        modules += [Dense(modules[1].get_embedding_dimension(), 16), Normalize()]
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
    model.save(str(directory / "st"))
    return directory / "st", model


def _save_open_clip(directory: Path, model_cfg: dict, preprocess_cfg: dict, **kwargs) -> Path:
    import open_clip

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{directory}", **kwargs)
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


def tiny_clip(directory: Path, preprocess_cfg: dict | None = None) -> Path:
    """A classic CLIP (ViT image tower, BPE SimpleTokenizer) in open_clip's local-dir format."""
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "patch_size": 8,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    }
    preprocess_cfg = preprocess_cfg or {
        "mean": [0.48, 0.45, 0.40],
        "std": [0.27, 0.26, 0.28],
        "resize_mode": "longest",
        "fill_color": 128,
    }
    return _save_open_clip(directory, model_cfg, preprocess_cfg)


def tiny_custom_text_clip(directory: Path, minilm_source: str) -> Path:
    """A CustomTextCLIP: a Hugging Face BERT text tower (mean pooling, linear projection) with
    its own tokenizer, a SigLIP-style logit bias, and squash resizing."""
    directory.mkdir(parents=True, exist_ok=True)
    _tiny_bert(directory, minilm_source, max_positions=64)
    model_cfg = {
        "embed_dim": 16,
        "init_logit_bias": -10,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {
            "hf_model_name": str(directory),
            "hf_tokenizer_name": str(directory),
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": 24,
        },
    }
    preprocess_cfg = {
        "resize_mode": "squash",
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    return _save_open_clip(directory, model_cfg, preprocess_cfg, pretrained_text=False)


def tiny_timm_classifier(directory: Path, classes: int) -> Path:
    """timm's own tiny test ViT with random weights, saved as a plain checkpoint file."""
    import timm

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=classes)
    torch.save(model.state_dict(), directory / "weights.pth")
    return directory / "weights.pth"


TIMM_ARCH = "test_vit"
LABELS = ["cat", "dog", "bird", "fish", "horse"]


def put_in_hub_cache(source: Path, hf_home: Path, repo_id: str) -> None:
    """Lay a saved model out as the Hugging Face Hub cache holds a download of `repo_id`, so
    Hub-id loading code (with HF_HOME=hf_home and HF_HUB_OFFLINE=1) finds it without a hub."""
    commit = "0" * 40
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def tiny_cross_encoder(directory: Path, minilm_source: str) -> Path:
    """A one-label BertForSequenceClassification with the real MiniLM tokenizer, saved as a
    sentence-transformers CrossEncoder (64-token maximum, so long pairs are truncated)."""
    from sentence_transformers import CrossEncoder

    hf_dir = _tiny_sequence_classifier(directory / "hf", minilm_source, {0: "LABEL_0"}, 1)
    model = CrossEncoder(str(hf_dir), max_length=64, device="cpu")
    model.save(str(directory / "ce"))
    return directory / "ce"


def tiny_text_classifier(directory: Path, minilm_source: str) -> Path:
    """A 3-label BertForSequenceClassification with id2label, in the transformers format."""
    return _tiny_sequence_classifier(directory, minilm_source, dict(enumerate(TEXT_LABELS)), 1)


def _tiny_sequence_classifier(
    directory: Path, minilm_source: str, id2label: dict[int, str], seed: int
) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    _tiny_bert(directory, minilm_source, max_positions=512)
    config = BertConfig.from_pretrained(
        directory, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    model = BertForSequenceClassification(config)
    # Random heads give near-equal scores; larger weights spread them so order is meaningful.
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)
    model.save_pretrained(directory)
    return directory


TEXT_LABELS = ["negative", "neutral", "positive"]


def _splade_mlm(hf_dir: Path, minilm_source: str, seed: int):
    """A 2-layer BertForMaskedLM (random MLM head) with the real MiniLM tokenizer, as
    sentence-transformers' MLMTransformer. A negative decoder bias leaves a few hundred non-zero
    vocabulary entries per text after SPLADE's activation, as trained SPLADE models do."""
    from sentence_transformers.sparse_encoder.modules import MLMTransformer
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    _tiny_bert(hf_dir, minilm_source)
    model = BertForMaskedLM(BertConfig.from_pretrained(hf_dir))
    with torch.no_grad():
        model.cls.predictions.bias.fill_(-0.3)
    model.save_pretrained(hf_dir)
    return MLMTransformer(str(hf_dir), max_seq_length=64)


def tiny_splade(directory: Path, minilm_source: str) -> Path:
    """A SPLADE SparseEncoder: the tiny MLM (_splade_mlm), then SpladePooling (max)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    modules = [_splade_mlm(directory / "hf", minilm_source, seed=0), SpladePooling("max")]
    SparseEncoder(modules=modules, device="cpu").save(str(directory / "splade"))
    return directory / "splade"


def tiny_inference_free_splade(directory: Path, minilm_source: str) -> Path:
    """Inference-free SPLADE as sentence-transformers builds it (a Router): documents through
    the tiny MLM (_splade_mlm) and SpladePooling (max, log1p_relu), queries through a
    SparseStaticEmbedding of random weights, a third of them 0 (as IDF-like weights of unseen
    tokens are)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        Router,
        SparseStaticEmbedding,
        SpladePooling,
    )

    document = _splade_mlm(directory / "hf", minilm_source, seed=1)
    vocabulary = len(document.tokenizer.get_vocab())
    weights = torch.rand(vocabulary) * 3
    weights[torch.rand(vocabulary) < 1 / 3] = 0
    query = SparseStaticEmbedding(tokenizer=document.tokenizer, weight=weights, frozen=True)
    pooling = SpladePooling("max", activation_function="log1p_relu")
    router = Router.for_query_document([query], [document, pooling])
    encoder = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    encoder.save(str(directory / "inference-free"))
    return directory / "inference-free"
