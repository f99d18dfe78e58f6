"""Helpers of the dataset-tool tests: small generated images with captions."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size=(32, 24), color=(200, 30, 30)) -> Path:
    """A solid-colour RGB PNG/JPEG of ``size = (w, h)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path)
    return path


def write_dataset(root: Path, captions: dict[str, str], ext: str = ".txt") -> dict[str, Path]:
    """One image per ``{relative stem: caption}`` (a ``None`` caption writes no caption file)."""
    out = {}
    for stem, caption in captions.items():
        img = write_image(root / f"{stem}.png")
        if caption is not None:
            img.with_suffix(ext).write_text(caption + "\n", encoding="utf-8")
        out[stem] = img
    return out


@pytest.fixture
def kit():
    """The helpers of this file, for tests: ``kit.write_image``, ``kit.write_dataset``."""
    return types.SimpleNamespace(write_image=write_image, write_dataset=write_dataset,
                                 write_tiny_tagger=write_tiny_tagger, draw_face=draw_face,
                                 write_tiny_blip=write_tiny_blip)


# The tiny tagger: (name, category, weights on the mean B, G, R in [0, 1], bias); probability = sigmoid.
TAGGER_LABELS = [
    ("general", 9, (0, 0, 0), 1.0), ("sensitive", 9, (3, 0, 0), -1.0), ("questionable", 9, (0, 0, 0), -5.0),
    ("explicit", 9, (0, 0, 0), -5.0), ("red_theme", 0, (0, 0, 8), -4.0), ("green_theme", 0, (0, 8, 0), -4.0),
    ("blue_theme", 0, (8, 0, 0), -4.0), ("simple_background", 0, (0, 0, 0), 0.0), ("^_^", 0, (0, 0, 0), 2.0),
    ("hatsune_miku_(vocaloid)", 4, (0, 0, 8), -4.0), ("samus_aran", 4, (8, 0, 0), -4.0),
]


def write_tiny_tagger(folder: Path, size: int = 16, batch: int | str = "batch") -> Path:
    """A WD14-layout ONNX tagger built with ``onnx``: input ``input`` (N, size, size, 3) float32 BGR 0-255,
    output ``output`` (N, tags) = sigmoid(mean BGR / 255 @ W + b), and its ``selected_tags.csv``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([w for _, _, w, _ in TAGGER_LABELS], np.float32).T / 255.0
    bias = np.array([b for *_, b in TAGGER_LABELS], np.float32)
    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
             helper.make_node("Add", ["logits0", "b"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["output"])]
    graph = helper.make_graph(
        nodes, "tiny_wd14", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, len(TAGGER_LABELS)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},{100 - i}" for i, (n, c, _, _) in enumerate(TAGGER_LABELS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def draw_face(img: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """Draw a frontal cartoon face (skin oval, brows, eyes with pupils, nose, mouth) that OpenCV's
    frontal-face Haar cascade finds, centred at ``centre``, about ``size`` px tall; RGB in place."""
    import cv2

    cx, cy = centre
    s = size
    cv2.ellipse(img, (cx, cy), (int(s * 0.42), int(s * 0.55)), 0, 0, 360, (225, 190, 170), -1)
    for dx in (-1, 1):
        ex, ey = cx + dx * int(s * 0.18), cy - int(s * 0.1)
        cv2.ellipse(img, (ex, ey - int(s * 0.09)), (int(s * 0.11), int(s * 0.025)), 0, 0, 360, (60, 40, 40), -1)
        cv2.ellipse(img, (ex, ey), (int(s * 0.085), int(s * 0.045)), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(img, (ex, ey), int(s * 0.04), (30, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.1)), (int(s * 0.05), int(s * 0.03)), 0, 0, 360, (180, 140, 120), -1)
    cv2.ellipse(img, (cx, cy + int(s * 0.27)), (int(s * 0.15), int(s * 0.04)), 0, 0, 360, (150, 60, 60), -1)
    return img


BLIP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "dog", "cat", "[DEC]"]


def write_tiny_blip(folder: Path, favourite: str = "dog", eos_bias: float = 0.0) -> Path:
    """A tiny random BLIP captioner saved with its processor (BERT word-piece vocabulary of 11 tokens).

    The LM head bias is 50 for ``favourite`` and ``eos_bias`` for ``[SEP]`` (0 elsewhere), so every
    decoding mode picks ``favourite`` until ``[SEP]`` wins (``eos_bias`` > 50) or a length limit ends it."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BLIP_VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    ids = {t: i for i, t in enumerate(BLIP_VOCAB)}
    config = BlipConfig(
        text_config=dict(vocab_size=len(BLIP_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, bos_token_id=ids["[DEC]"],
                         pad_token_id=0, sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"]),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16))
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.bias
        bias.zero_()
        bias[ids[favourite]] = 50.0
        bias[ids["[SEP]"]] = eos_bias
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
